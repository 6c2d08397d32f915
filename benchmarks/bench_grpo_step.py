"""GRPO step on the embedded tiny model: one backbone forward per completion (``shared_policy_forward=True``, ours) vs
a separate segmentation forward (``False``, the reference: what the trainer did before), measured in the same run.

Each setting trains its own copy of the model for ``--steps`` GRPO steps after one warm-up step, on the same synthetic
prompts and seed (so the same completions). Reported per micro-batch:

* loss forward + backward time (TRL's policy loss + the segmentation losses and their backward: what the change cuts),
* whole step time (generation, rollout mask decoding, rewards, loss, backward, optimizer),
* activation memory held for the backward (bytes of the distinct tensors autograd saves during the loss forward; on
  a GPU also the peak allocated memory of the step).

    python benchmarks/bench_grpo_step.py [--steps 3 --batch 8 --generations 4 --max-completion-length 100]
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import tempfile
import time

import torch
from _timing import format_result  # benchmarks/_timing.py


def _measure(model, processor, dataset, args, shared: bool, output_dir: str) -> dict:
    from segcompass.testing import tiny_grpo_config
    from segcompass.training.grpo_trainer import SegCompassGRPOTrainer

    config = tiny_grpo_config(
        output_dir, per_device_train_batch_size=args.batch, num_generations=args.generations,
        max_completion_length=args.max_completion_length, max_steps=args.steps + 1, shared_policy_forward=shared,
        logging_steps=1, disable_tqdm=True,
    )
    trainer = SegCompassGRPOTrainer(copy.deepcopy(model), args=config, train_dataset=dataset,
                                    processing_class=processor)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    record = {"loss": [], "step": [], "saved": [], "peak": []}
    compute_loss, backward, training_step = trainer._compute_loss, trainer.accelerator.backward, trainer.training_step
    clock: dict = {}

    def timed_compute_loss(model, inputs):
        storages: dict = {}

        def pack(tensor):
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        clock["loss"] = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = compute_loss(model, inputs)
        record["saved"].append(sum(storages.values()))
        return loss

    def timed_backward(loss, **kwargs):
        backward(loss, **kwargs)
        record["loss"].append(time.perf_counter() - clock["loss"])

    def timed_training_step(*a, **kw):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = training_step(*a, **kw)
        record["step"].append(time.perf_counter() - start)
        if torch.cuda.is_available():
            record["peak"].append(torch.cuda.max_memory_allocated())
        return out

    trainer._compute_loss, trainer.accelerator.backward = timed_compute_loss, timed_backward
    trainer.training_step = timed_training_step
    trainer.train()
    return {key: values[1:] for key, values in record.items()}  # drop the warm-up step


def _wider_backbone(model, hidden_size: int | None, layers: int | None):
    """The embedded model's config (tokenizer, SAM, heads) with a wider / deeper random text backbone (and an SAE of
    matching width): where the backbone, not the heads, dominates the step, as it does at 7B."""
    from segcompass import SegCompassForReasoningSegmentation

    config = copy.deepcopy(model.config)
    text = config.backbone_config.text_config
    if hidden_size:
        head_dim = text.hidden_size // text.num_attention_heads  # kept: M-RoPE's sections fit this head size
        text.hidden_size, text.intermediate_size = hidden_size, 3 * hidden_size
        text.num_attention_heads = hidden_size // head_dim
        text.num_key_value_heads = max(1, text.num_attention_heads // 2)
        config.backbone_config.vision_config.out_hidden_size = hidden_size
        config.sae_config.d_in, config.sae_config.d_sae = hidden_size, 8 * hidden_size
    if layers:
        text.num_hidden_layers = layers
        text.layer_types = ["full_attention"] * layers
        config.sae_config.hook_layer = layers // 2
    torch.manual_seed(0)
    return SegCompassForReasoningSegmentation(config)


def run(args) -> list[dict]:
    """Both settings, then one result per comparison: ``{"name", "ours", "reference", "ratio", "unit"}``."""
    import segcompass  # noqa: F401
    from segcompass import SegCompassForReasoningSegmentation, SegCompassProcessor
    from segcompass.data.synthetic import SyntheticConfig, build_synthetic_dataset
    from segcompass.presets import default_model_dir
    from segcompass.training.grpo_data import prepare_grpo_dataset

    torch.manual_seed(0)
    directory = default_model_dir()
    model = SegCompassForReasoningSegmentation.from_pretrained(directory)
    processor = SegCompassProcessor.from_pretrained(directory)
    label = "tiny model"
    if args.text_hidden_size or args.text_layers:
        model = _wider_backbone(model, args.text_hidden_size, args.text_layers)
        label = f"random {args.text_layers or 4} x {args.text_hidden_size or 128} text backbone"
    size = model.config.sam_config.vision_config.image_size
    rows = build_synthetic_dataset("train", args.batch * (args.steps + 1), config=SyntheticConfig(image_size=size))
    dataset = prepare_grpo_dataset(rows, processor)
    measured = {}
    with tempfile.TemporaryDirectory() as scratch:
        for shared in (True, False):
            measured[shared] = _measure(model, processor, dataset, args, shared, f"{scratch}/{shared}")
    ours, reference = measured[True], measured[False]
    results = []

    def add(name, key, unit, reduce=statistics.median, scale=1.0):
        if ours[key] and reference[key]:
            a, b = reduce(ours[key]) * scale, reduce(reference[key]) * scale
            results.append({"name": name, "ours": a, "reference": b, "ratio": a / b, "unit": unit})

    device = "GPU" if torch.cuda.is_available() else "CPU"
    add(f"GRPO loss forward + backward per micro-batch ({label}, {device})", "loss", "s")
    add(f"GRPO step incl. generation ({label}, {device})", "step", "s")
    add(f"GRPO activations held for the backward ({label})", "saved", "MB", scale=1e-6)
    add("GRPO peak GPU memory per step", "peak", "MB", max, 1e-6)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=3, help="Timed GRPO steps per setting (after one warm-up).")
    parser.add_argument("--batch", type=int, default=8, help="Completions per micro-batch.")
    parser.add_argument("--generations", type=int, default=4, help="Rollouts per prompt G.")
    parser.add_argument("--max-completion-length", type=int, default=100)
    parser.add_argument("--text-hidden-size", type=int, default=None,
                        help="Replace the embedded model's text backbone by a random one this wide (e.g. 512).")
    parser.add_argument("--text-layers", type=int, default=None, help="... and this deep (e.g. 8).")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args()
    logging.getLogger("segcompass").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    for result in run(args):
        print(format_result(result))


if __name__ == "__main__":
    main()
