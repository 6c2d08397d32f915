"""``segcompass train-sae``: cache a model's hidden states over a dataset and train a Sparse Autoencoder on them.

Options are :class:`TrainSAEArguments` (what to train on, the SAE's shape) and
:class:`segcompass.sae.training.SAETrainingArguments` (hyper-parameters, ``output_dir``). ``--planted`` runs the
built-in demo instead: activations from a planted sparse dictionary (:class:`segcompass.sae.planted.PlantedDemo`,
whose learning rate, α and d_sae replace the general defaults), then what the numbers mean and which planted atoms
the features found. A small SAE trains on one CPU thread (:func:`segcompass.utils.runtime.threads_for`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ._args import CommandError, command

__all__ = ["TrainSAEArguments", "train_sae_command"]


@dataclass
class TrainSAEArguments:
    """What to train on and the SAE's shape (training hyper-parameters are in SAETrainingArguments)."""

    activations: str | None = field(default=None, metadata={"help": "An activation cache directory to train on."})
    model: str | None = field(default=None, metadata={"help": "A transformers model to cache activations from."})
    dataset: str | None = field(
        default=None,
        metadata={"help": "Dataset for caching: a save_to_disk directory or a .json/.jsonl/.csv/.parquet file."},
    )
    text_column: str = field(default="text", metadata={"help": "Text column of the dataset."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (image-text models)."})
    hook_layer: int | None = field(default=None, metadata={"help": "hidden_states index to cache (0 = embeddings)."})
    max_length: int = field(default=512, metadata={"help": "Token limit per cached sequence."})
    planted: bool = field(
        default=False, metadata={"help": "Built-in demo: train on activations from a planted sparse dictionary (64 "
                                         "atoms, 3 active per sample) and report how many atoms the SAE recovered. "
                                         "Its own defaults (learning rate 3e-3, l1_coefficient 0.5, d_sae 128) "
                                         "replace the general ones you leave unchanged."}
    )
    d_sae: int | None = field(
        default=None, metadata={"help": "Dictionary size (default: 8 x d_in; --planted: 128)."}
    )
    activation: str = field(default="relu", metadata={"help": "relu | topk"})
    k: int | None = field(default=None, metadata={"help": "Active features per token for topk."})
    l1_coefficient: float = field(
        default=5.0, metadata={"help": "alpha in ||z - z_hat||^2 + alpha ||h||_1 (--planted: 0.5)."}
    )


def _arguments():
    from ..sae.training import SAETrainingArguments

    return TrainSAEArguments, SAETrainingArguments


def _load_dataset(path: str):
    import datasets

    source = Path(path)
    if source.is_dir():
        return datasets.load_from_disk(str(source))
    formats = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
    if source.suffix not in formats:
        raise CommandError(f"--dataset {path}: expected a save_to_disk directory or one of {sorted(formats)}.")
    return datasets.load_dataset(formats[source.suffix], data_files=str(source), split="train")


def _default(dataclass_type, name: str):
    return next(f.default for f in dataclasses.fields(dataclass_type) if f.name == name)


def _planted_demo(cli: TrainSAEArguments, train_args) -> None:
    """Train on a planted dictionary, say what the held-out numbers mean and which planted atoms the features found."""
    import torch

    from ..sae import SparseAutoencoder, SparseAutoencoderConfig
    from ..sae.activations import ActivationStore
    from ..sae.planted import PlantedDemo, atom_recovery
    from ..sae.training import SAETrainer, SAETrainingArguments, evaluate_sae
    from ..utils.runtime import threads_for, torch_threads

    demo = PlantedDemo()
    # the demo's own settings replace the general defaults the user left unchanged (not values they gave)
    if train_args.learning_rate == _default(SAETrainingArguments, "learning_rate"):
        train_args = dataclasses.replace(train_args, learning_rate=demo.learning_rate)
    l1 = demo.l1_coefficient if cli.l1_coefficient == _default(TrainSAEArguments, "l1_coefficient") \
        else cli.l1_coefficient
    data, held = demo.data()
    config = SparseAutoencoderConfig(d_in=demo.d_in, d_sae=cli.d_sae or demo.d_sae, activation=cli.activation,
                                     k=cli.k, l1_coefficient=l1)
    torch.manual_seed(train_args.seed)
    sae = SparseAutoencoder(config)
    with torch_threads(threads_for(sae.num_parameters())):
        SAETrainer(sae, train_args, ActivationStore.from_tensor(data.activations)).train()
    metrics = evaluate_sae(sae, [held.activations])
    recovery = atom_recovery(sae.W_dec.detach(), data.dictionary, min_cosine=demo.min_cosine)
    print(f"planted dictionary: {demo.num_atoms} unit-norm atoms in {demo.d_in} dimensions, {demo.sparsity} active "
          f"per sample ({demo.num_samples} training samples, {demo.num_held_out} held out)")
    print(f"SAE: d_sae={config.d_sae} {config.activation}, l1_coefficient {l1:g}, learning rate "
          f"{train_args.learning_rate:g}, {train_args.num_epochs} epoch{'s' if train_args.num_epochs != 1 else ''} of "
          f"{train_args.batch_size} samples a step")
    print("held-out results:")
    print(f"  atoms recovered {recovery:7.1%}  planted directions matched by a decoder row with cosine >= "
          f"{demo.min_cosine} (of {demo.num_atoms})")
    print(f"  L0              {metrics['l0']:7.2f}  mean active SAE features per sample (the data has "
          f"{demo.sparsity} active atoms per sample)")
    print(f"  FVE             {metrics['fve']:7.3f}  fraction of the held-out variance the reconstruction explains "
          "(1 = all)")
    print(f"  dead            {metrics['dead_fraction']:7.1%}  SAE features that never fire on the held-out samples "
          f"({config.d_sae} features for {demo.num_atoms} atoms: spare ones may stay dead)")
    if recovery < 0.9:
        print(f"  (under 90% recovered: the demo recovers every atom with --learning_rate {demo.learning_rate:g} "
              f"--l1_coefficient {demo.l1_coefficient:g} --num_epochs 10)")
    cos = (sae.W_dec.detach() / sae.W_dec.detach().norm(dim=-1, keepdim=True)) @ data.dictionary.T  # (d_sae, atoms)
    print("3 held-out samples: planted atoms | top SAE features as f<feature>=<activation>-><best-matching "
          "atom>(<cosine>)")
    with torch.no_grad():
        for i in range(3):
            planted = held.codes[i].nonzero().squeeze(-1).tolist()
            sparse = sae.encode_sparse(held.activations[i : i + 1], threshold=0.1)
            idx, val = sparse.token(0)
            order = val.argsort(descending=True)[:5]
            feats = ", ".join(
                f"f{int(idx[j])}={float(val[j]):.2f}->atom{int(cos[idx[j]].argmax())}({float(cos[idx[j]].max()):.2f})"
                for j in order
            )
            print(f"  sample {i}: atoms {planted} | {feats}")


def _cache(cli: TrainSAEArguments, output_dir: str) -> str:
    """Cache ``hidden_states[hook_layer]`` of ``--model`` over ``--dataset`` into OUTPUT_DIR/activations."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    from ..sae.activations import cache_activations

    if cli.image_column:
        model, processor = AutoModelForImageTextToText.from_pretrained(cli.model), AutoProcessor.from_pretrained(cli.model)
    else:
        model, processor = AutoModelForCausalLM.from_pretrained(cli.model), AutoTokenizer.from_pretrained(cli.model)
    cache_dir = str(Path(output_dir) / "activations")
    cache_activations(model, processor, _load_dataset(cli.dataset), cache_dir, hook_layer=cli.hook_layer,
                      text_column=cli.text_column, image_column=cli.image_column, max_length=cli.max_length)
    return cache_dir


@command("train-sae", _arguments, model_is_checkpoint=False)  # --model: any transformers model
def train_sae_command(cli: TrainSAEArguments, train_args) -> int:
    from ..utils.runtime import quiet_progress_bars

    with quiet_progress_bars("Writing model shards"):  # one per epoch checkpoint, under the training bar
        return _train_sae(cli, train_args)


def _train_sae(cli: TrainSAEArguments, train_args) -> int:
    if cli.planted:
        _planted_demo(cli, train_args)
        print(f"SAE saved to {train_args.output_dir}")
        return 0
    import torch

    from ..sae import SparseAutoencoder, SparseAutoencoderConfig
    from ..sae.activations import ActivationStore, read_manifest
    from ..sae.training import SAETrainer
    from ..utils.runtime import threads_for, torch_threads

    cache_dir = cli.activations
    if cache_dir is None:
        if not (cli.model and cli.dataset and cli.hook_layer is not None):
            raise CommandError("give --activations DIR, or --model, --dataset and --hook_layer to cache, or --planted.")
        cache_dir = _cache(cli, train_args.output_dir)
    store = ActivationStore.from_cache(cache_dir)
    hook_layer = read_manifest(cache_dir)["hook_layer"]
    config = SparseAutoencoderConfig(d_in=store.d_in, d_sae=cli.d_sae or 8 * store.d_in, activation=cli.activation,
                                     k=cli.k, l1_coefficient=cli.l1_coefficient, hook_layer=hook_layer,
                                     backbone_name_or_path=cli.model)
    torch.manual_seed(train_args.seed)
    sae = SparseAutoencoder(config)
    with torch_threads(threads_for(sae.num_parameters())):
        metrics = SAETrainer(sae, train_args, store).train()
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    print(f"SAE saved to {train_args.output_dir}")
    return 0
