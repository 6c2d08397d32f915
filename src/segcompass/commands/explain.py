"""``segcompass explain``: the paper's interpretability analyses (Figs. 4, 5, 8 and 9-style panels) on a model and a
dataset split, as ``explain.json`` + PNG figures.

Runs :func:`segcompass.interpret.explain.explain` on the first ``--num-samples`` rows read by
:func:`segcompass.evaluation.datasets.load_evaluation_dataset` (synthetic scenes at the model's SAM input size, as
``segcompass evaluate`` draws them) and prints where the files went and the headline numbers. Needs matplotlib
(``pip install 'segcompass[interpret]'``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._args import CommandError, command, resolve_model

__all__ = ["ExplainArguments", "explain_command", "summary_lines"]

_DESCRIPTION = ("Run the paper's interpretability analyses (active SAE features per token type, instance coverage of "
                "the most activated image tokens, SAE / heatmap vs mask correlations, per-sample panels) on a model "
                "and write explain.json + PNG figures (needs matplotlib: pip install 'segcompass[interpret]').")


@dataclass
class ExplainArguments:
    """Options of ``segcompass explain``."""

    model: str | None = field(
        default=None, metadata={"help": "Checkpoint directory (default: the embedded segcompass-tiny-synthetic "
                                        "model)."}
    )
    dataset: str = field(default="synthetic", metadata={"help": "Registered dataset name (default synthetic)."})
    split: str = field(default="test", metadata={"help": "Split name (default test)."})
    data_dir: str | None = field(default=None, metadata={"help": "Benchmark root directory (not for synthetic)."})
    num_samples: int = field(default=32, metadata={"help": "Analyse the first N rows of the split."})
    num_panels: int = field(default=8, metadata={"help": "Draw per-sample panels of the first N samples (0: none)."})
    output_dir: str = field(default="explain", metadata={"help": "Receives explain.json, the figures and panels/."})
    threshold: float | None = field(
        default=None, metadata={"help": "Slot confidence to keep a slot (default: the model's confidence_threshold)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the random-token baseline (Fig. 5)."})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda when "
                                                                "available)."})


def _require_matplotlib() -> None:
    """A :class:`CommandError` (one line naming the fix) when matplotlib cannot be imported."""
    from ..interpret.figures import require_matplotlib

    try:
        require_matplotlib()
    except ImportError as err:
        raise CommandError(str(err)) from err


def summary_lines(result: dict) -> list[str]:
    """The headline numbers of an ``explain`` result, one line per figure."""
    patterns = result["activation_patterns"]
    at_zero = {name: means[0] for name, means in patterns["mean_active_features"].items() if means is not None}
    coverage, agreement = result["instance_coverage"], result["heatmap_mask_agreement"]
    reconstruction = result["reconstruction_mask_loss"]

    def number(value) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    lines = ["Fig. 4 mean active features per token at τ=0: "
             + ", ".join(f"{name} {value:.1f}" for name, value in at_zero.items())]
    if coverage["top_k_coverage"] is not None:
        lines.append("Fig. 5 coverage at K = " + ", ".join(
            f"{100 * k:g}%: top {number(t)} vs random {number(r)}"
            for k, t, r in zip(coverage["fractions"], coverage["top_k_coverage"], coverage["random_coverage"])))
    lines.append(f"Fig. 8 left  r(SAE MSE, mask dice loss) = {number(reconstruction['pearson_r'])} "
                 f"over {reconstruction['num_points']} samples with a target")
    lines.append(f"Fig. 8 right r(heatmap IoU, mask IoU) = {number(agreement['pearson_r'])} over "
                 f"{agreement['num_samples']} samples ({number(agreement['targets_only']['pearson_r'])} without "
                 "no-target samples)")
    return lines


@command("explain", (ExplainArguments,), description=_DESCRIPTION)
def explain_command(args: ExplainArguments) -> int:
    _require_matplotlib()
    import torch
    from transformers import AutoModel, AutoProcessor

    from ..evaluation.datasets import load_evaluation_dataset
    from ..interpret.explain import FILES, explain

    if args.num_samples < 1:
        raise CommandError(f"--num-samples must be >= 1, got {args.num_samples}.")
    path = resolve_model(args.model)
    try:
        model = AutoModel.from_pretrained(path)
        processor = AutoProcessor.from_pretrained(path)
    except OSError as err:
        raise CommandError(f"cannot load a model from {path!r}: {err}. Pass --model with a checkpoint directory "
                           "written by save_pretrained.") from err
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    loader_kwargs = {}
    if args.dataset == "synthetic":  # scenes at the model's SAM input size, as segcompass evaluate draws them
        loader_kwargs["image_size"] = int(model.config.sam_config.vision_config.image_size)
    dataset = load_evaluation_dataset(args.dataset, args.data_dir, args.split, args.num_samples, loader_kwargs)
    result = explain(model, processor, dataset, args.output_dir, num_samples=args.num_samples,
                     num_panels=args.num_panels, seed=args.seed, confidence_threshold=args.threshold,
                     metadata={"dataset": args.dataset, "split": args.split, "data_dir": args.data_dir,
                               "loader_kwargs": loader_kwargs})
    print(f"explain: {result['num_samples']} samples of {args.dataset}/{args.split} -> {args.output_dir}/ "
          f"({FILES['json']}, {FILES['fig4']}, {FILES['fig5']}, {FILES['fig8']}, "
          f"{len(result['panels'])} panels in {FILES['panels']}/)")
    print("\n".join(summary_lines(result)))
    return 0
