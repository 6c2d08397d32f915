"""The ``segcompass`` command line. Library code logs; this module prints results.

Each sub-command's arguments are dataclasses parsed by ``transformers.HfArgumentParser``, so every option is
also accepted from a YAML file with ``--config FILE`` (command-line flags override the file).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

COMMANDS = {}


def command(name: str, help_text: str):
    def register(fn):
        COMMANDS[name] = (fn, help_text)
        return fn

    return register


def _yaml_to_argv(path: str) -> list[str]:
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise SystemExit(f"error: cannot read --config {path}: {err}") from err
    if not isinstance(values, dict):
        raise SystemExit(f"error: --config {path} must hold a mapping of option names to values.")
    argv: list[str] = []
    for key, value in values.items():
        flag = f"--{key}"
        if isinstance(value, list):
            argv += [flag, *map(str, value)]
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]  # dict-typed options (e.g. generation_kwargs) parse JSON
        else:
            argv += [flag, str(value)]
    return argv


def parse(dataclass_types, argv: list[str], prog: str):
    """Parse ``argv`` (with optional ``--config FILE``) into instances of ``dataclass_types``."""
    from transformers import HfArgumentParser

    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise SystemExit("error: --config needs a YAML file path.")
        argv = _yaml_to_argv(argv[at + 1]) + argv[:at] + argv[at + 2 :]
    parser = HfArgumentParser(dataclass_types, prog=f"segcompass {prog}")
    parser.add_argument("--config", help="YAML file with option values (flags override it).")
    outputs = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    return list(outputs)[: len(dataclass_types)]  # a trailing namespace holds the consumed --config


# ------------------------------------------------------------------------------------------------ train-sae
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
        default=False, metadata={"help": "Built-in demo: activations from a planted sparse dictionary."}
    )
    d_sae: int | None = field(default=None, metadata={"help": "Dictionary size (default: 8 x d_in)."})
    activation: str = field(default="relu", metadata={"help": "relu | topk"})
    k: int | None = field(default=None, metadata={"help": "Active features per token for topk."})
    l1_coefficient: float = field(default=5.0, metadata={"help": "alpha in ||z - z_hat||^2 + alpha ||h||_1."})


def _load_dataset(path: str):
    import datasets

    source = Path(path)
    if source.is_dir():
        return datasets.load_from_disk(str(source))
    formats = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
    if source.suffix not in formats:
        raise SystemExit(f"error: --dataset {path}: expected a save_to_disk directory or one of {sorted(formats)}.")
    return datasets.load_dataset(formats[source.suffix], data_files=str(source), split="train")


def _planted_demo(cli: TrainSAEArguments, train_args):
    """Train on a planted dictionary and show which planted atoms the learned features found."""
    import torch

    from .sae import SparseAutoencoder, SparseAutoencoderConfig
    from .sae.activations import ActivationStore
    from .sae.planted import atom_recovery, make_planted_dictionary
    from .sae.training import SAETrainer, evaluate_sae

    data = make_planted_dictionary(8000, d_in=64, num_atoms=64, sparsity=3, magnitude_range=(1.0, 3.0), seed=0)
    held = make_planted_dictionary(2000, seed=1, dictionary=data.dictionary, magnitude_range=(1.0, 3.0))
    config = SparseAutoencoderConfig(d_in=64, d_sae=cli.d_sae or 128, activation=cli.activation, k=cli.k,
                                     l1_coefficient=cli.l1_coefficient)
    sae = SparseAutoencoder(config)
    SAETrainer(sae, train_args, ActivationStore.from_tensor(data.activations)).train()
    metrics = evaluate_sae(sae, [held.activations])
    recovery = atom_recovery(sae.W_dec.detach(), data.dictionary)
    print(f"planted dictionary: 64 atoms, 3 active per sample; SAE d_sae={config.d_sae}, {config.activation}")
    print(f"held-out: FVE {metrics['fve']:.3f}  L0 {metrics['l0']:.2f} (planted 3)  "
          f"dead {metrics['dead_fraction']:.1%}  atoms recovered (cos>=0.9) {recovery:.1%}")
    cos = (sae.W_dec.detach() / sae.W_dec.detach().norm(dim=-1, keepdim=True)) @ data.dictionary.T  # (d_sae, atoms)
    print("inspect 3 held-out samples: planted atoms -> top SAE features (activation, best-matching atom, cosine)")
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


@command("train-sae", "Cache hidden states and train a Sparse Autoencoder (or run the --planted demo).")
def train_sae(argv: list[str]) -> int:
    from .sae.training import SAETrainingArguments

    cli, train_args = parse((TrainSAEArguments, SAETrainingArguments), argv, "train-sae")
    if cli.planted:
        _planted_demo(cli, train_args)
        print(f"SAE saved to {train_args.output_dir}")
        return 0
    import torch

    from .sae import SparseAutoencoder, SparseAutoencoderConfig
    from .sae.activations import ActivationStore, cache_activations
    from .sae.training import SAETrainer

    cache_dir = cli.activations
    if cache_dir is None:
        if not (cli.model and cli.dataset and cli.hook_layer is not None):
            raise SystemExit("error: give --activations DIR, or --model, --dataset and --hook_layer to cache, or --planted.")
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        if cli.image_column:
            model, processor = AutoModelForImageTextToText.from_pretrained(cli.model), AutoProcessor.from_pretrained(cli.model)
        else:
            model, processor = AutoModelForCausalLM.from_pretrained(cli.model), AutoTokenizer.from_pretrained(cli.model)
        cache_dir = str(Path(train_args.output_dir) / "activations")
        cache_activations(model, processor, _load_dataset(cli.dataset), cache_dir, hook_layer=cli.hook_layer,
                          text_column=cli.text_column, image_column=cli.image_column, max_length=cli.max_length)
    store = ActivationStore.from_cache(cache_dir)
    from .sae.activations import read_manifest

    hook_layer = read_manifest(cache_dir)["hook_layer"]
    config = SparseAutoencoderConfig(d_in=store.d_in, d_sae=cli.d_sae or 8 * store.d_in, activation=cli.activation,
                                     k=cli.k, l1_coefficient=cli.l1_coefficient, hook_layer=hook_layer,
                                     backbone_name_or_path=cli.model)
    torch.manual_seed(train_args.seed)
    metrics = SAETrainer(SparseAutoencoder(config), train_args, store).train()
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    print(f"SAE saved to {train_args.output_dir}")
    return 0


# ------------------------------------------------------------------------------------------------ segment
def _segment_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="segcompass segment",
                                     description="Segment what an instruction refers to and explain why.")
    parser.add_argument("image", help="Image file.")
    parser.add_argument("instruction", help="What to segment, in words.")
    parser.add_argument("--model", default=None, help="SegCompass checkpoint directory (default: the embedded model).")
    parser.add_argument("--output", default=None, help="Write an overlay PNG here.")
    parser.add_argument("--threshold", type=float, default=None, help="Confidence to keep a slot.")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="Reasoning length limit.")
    parser.add_argument("--top_concepts", type=int, default=5, help="SAE concepts listed per instance.")
    return parser


def default_model_path() -> str:
    """The embedded default checkpoint shipped inside the package."""
    from .pipelines import default_model_path as embedded

    path = embedded()
    if path is None:
        raise SystemExit("error: no embedded default model in this installation; pass --model PATH.")
    return path


@command("segment", "Segment an image from an instruction; print the reasoning, instances and concepts.")
def segment(argv: list[str]) -> int:
    args = _segment_parser().parse_args(argv)
    from transformers import pipeline

    from .image_utils import load_image
    from .visualize import overlay_instances

    image = load_image(args.image)
    pipe = pipeline("reasoning-segmentation", model=args.model or default_model_path())
    result = pipe(image, args.instruction, threshold=args.threshold, max_new_tokens=args.max_new_tokens,
                  top_concepts=args.top_concepts)
    print(f"instruction: {args.instruction}")
    print(f"reasoning:   {result['reasoning'] or '(none)'}")
    if result["malformed"]:
        print("note: the answer had no <REF_POS>; one was appended to score it.")
    if not result["instances"]:
        print("instances:   none (no target passed the confidence threshold)")
    for instance in result["instances"]:
        x, y, w, h = instance["box"]
        print(f"instance slot {instance['slot']}: score {instance['score']:.3f}  box [{x:.0f}, {y:.0f}, {w:.0f}, "
              f"{h:.0f}]  area {int(instance['mask'].sum())} px")
        for concept in instance["concepts"]:
            print(f"    concept f{concept['feature']}: activation {concept['activation']:.3f}  "
                  f"weight {concept['weight']:.3f}")
    if args.output:
        overlay_instances(image, result["instances"]).save(args.output)
        print(f"overlay written to {args.output}")
    return 0


# ------------------------------------------------------------------------------------------------ train
@command("train", "Supervised warm-up + GRPO training of a SegCompass model (options or --config YAML).")
def train(argv: list[str]) -> int:
    from .training.cli_train import train_command

    return train_command(argv)


# ------------------------------------------------------------------------------------------------ train-tiny
@command("train-tiny", "Train the tiny synthetic-domain SegCompass end to end (the shipped default; --smoke for CI).")
def train_tiny(argv: list[str]) -> int:
    from .recipes.tiny import train_tiny_command

    return train_tiny_command(argv)


# ------------------------------------------------------------------------------------------------ evaluate
@command("evaluate", "Evaluate a checkpoint on a benchmark split: predictions.jsonl + report.json (--rescore: no model).")
def evaluate(argv: list[str]) -> int:
    from .evaluation import evaluate_command

    return evaluate_command(argv)


# ------------------------------------------------------------------------------------------------ demo
@command("demo", "Run a model on synthetic scenes and write an HTML gallery (overlays, heatmaps, concepts).")
def demo(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="segcompass demo")
    parser.add_argument("--model", default=None, help="Checkpoint directory (default: the embedded model).")
    parser.add_argument("--output_dir", default="segcompass-demo", help="Where index.html and images go.")
    parser.add_argument("--num_examples", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from .demo import build_demo

    model = args.model or default_model_path()
    index = build_demo(args.output_dir, model=model, num_examples=args.num_examples, seed=args.seed)
    print(f"demo written to {index}")
    return 0


# ------------------------------------------------------------------------------------------------ entry point
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: segcompass <command> [options]   (segcompass <command> --help for its options)\n")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<12} {text}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {sorted(COMMANDS)}.", file=sys.stderr)
        return 2
    return COMMANDS[name][0](rest)


if __name__ == "__main__":
    raise SystemExit(main())
