"""``segcompass evaluate``: evaluate a checkpoint on a benchmark split, or ``--rescore`` saved predictions.

Runs :func:`segcompass.evaluation.evaluate_model` (greedy decoding, every row scored; writes ``run.json``,
``predictions.jsonl`` and ``report.json`` into ``--output-dir``) or :func:`segcompass.evaluation.rescore` (no
model), then prints the paper-style table row and where the report is (``--verbose``: the report as JSON too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._args import CommandError, command, resolve_model

__all__ = ["EvaluateArguments", "evaluate_command", "format_report"]

_DESCRIPTION = ("Evaluate a SegCompass checkpoint on a benchmark split (greedy decoding, every row scored) and write "
                "predictions.jsonl + report.json; --rescore scores saved predictions again without the model.")


def _dataset_help() -> str:
    from ..evaluation import available_datasets

    return f"Registered dataset name ({', '.join(available_datasets())})."


def _protocols():
    from ..metrics import PROTOCOLS

    return PROTOCOLS


def _empty_policies():
    from ..metrics import EMPTY_POLICIES

    return EMPTY_POLICIES


def _ablations():
    from ..interpret.ablations import ABLATIONS

    return ABLATIONS


@dataclass
class EvaluateArguments:
    """Options of ``segcompass evaluate``."""

    output_dir: str = field(metadata={"help": "Receives run.json, predictions.jsonl and report.json."})
    model: str | None = field(
        default=None, metadata={"help": "Checkpoint directory (saved with save_pretrained) or Hub id (default: the "
                                        "embedded segcompass-tiny-synthetic model)."}
    )
    dataset: str | None = field(default=None, metadata={"help": _dataset_help})
    split: str | None = field(default=None, metadata={"help": "Split name (default: val; test for synthetic)."})
    data_dir: str | None = field(default=None, metadata={"help": "Benchmark root directory."})
    batch_size: int = field(default=4, metadata={"help": "Rows per generation batch."})
    max_new_tokens: int = field(default=256, metadata={"help": "Reasoning length limit."})
    threshold: float | None = field(
        default=None, metadata={"help": "Slot confidence to keep a slot (default: the model's confidence_threshold)."}
    )
    num_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first N rows."})
    rescore: bool = field(default=False, metadata={"help": "Score the saved predictions again; no model needed."})
    resume: bool = field(
        default=True, metadata={"help": "Skip rows already in predictions.jsonl (--no-resume: move the old run "
                                        "into previous-<timestamp>/ and predict every row again)."}
    )
    protocol: str | None = field(default=None, metadata={"help": "Metric protocol (default lisa).",
                                                          "choices": _protocols})
    empty_policy: str | None = field(
        default=None, metadata={"help": "IoU of a sample whose union is empty (default one).",
                                "choices": _empty_policies}
    )
    eval_size: list[int] | None = field(
        default=None, metadata={"help": "Score at a fixed size (H [W]) instead of the original resolution."}
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda when available)."})
    dtype: str | None = field(default=None, metadata={"help": "Model dtype, e.g. bfloat16 (default: the checkpoint's)."})
    ablation: str | None = field(
        default=None, metadata={"help": "Measure the interpretable path: zero the concept representations, or swap "
                                        "the SAE for a random one.", "choices": _ablations}
    )
    loader_option: list[str] = field(
        default_factory=list, metadata={"help": "Extra loader keyword (repeatable), e.g. image_size=64.",
                                        "metavar": "KEY=VALUE", "action": "append"}
    )
    verbose: bool = field(
        default=False, metadata={"help": "Also print the whole report as JSON (it is always written to "
                                         "OUTPUT_DIR/report.json)."}
    )


def _loader_options(items: list[str]) -> dict[str, Any]:
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--loader-option {item!r} must look like KEY=VALUE, e.g. image_size=64.")
        options[key] = yaml.safe_load(value)
    return options


def format_report(report: dict[str, Any], verbose: bool = True) -> str:
    """The printed form of a report: the table row, one line of its cells, then (``verbose``) the report as JSON."""
    row = report["table_row"]
    cells = [f"{k} {v:.1f}" if isinstance(v, float) else f"{k} n/a" for k, v in row.items()
             if k not in ("table", "paper_table", "split")]
    where = f" ({row['paper_table']})" if row.get("paper_table") else ""
    title = (f"{row['table']}{where} {row['split']}: {report['num_samples']} samples "
             f"({report['num_no_target']} no-target, {report.get('num_malformed', 0)} malformed answers)")
    return "\n".join([title, "  " + "  ".join(cells)] + ([json.dumps(report, indent=2)] if verbose else []))


@command("evaluate", (EvaluateArguments,), description=_DESCRIPTION)
def evaluate_command(args: EvaluateArguments) -> int:
    from ..evaluation import REPORT_FILE, available_datasets, evaluate_model, rescore

    metric_options = {k: getattr(args, k) for k in ("protocol", "empty_policy") if getattr(args, k) is not None}
    if args.eval_size is not None:
        if len(args.eval_size) not in (1, 2):
            raise CommandError(f"--eval-size takes H or H W, got {args.eval_size}.")
        metric_options["eval_size"] = args.eval_size[0] if len(args.eval_size) == 1 else args.eval_size
    loader_kwargs = _loader_options(args.loader_option)
    if args.rescore:
        report = rescore(args.output_dir, args.dataset, split=args.split, data_dir=args.data_dir,
                         threshold=args.threshold, **metric_options)
    else:
        model = resolve_model(args.model, (
            "--model is required (a checkpoint directory): this installation has no embedded default model; use "
            "--rescore to score saved predictions without a model."))
        if not args.dataset:
            raise CommandError(f"--dataset is required; choose one of {available_datasets()}.")
        split = args.split or ("test" if args.dataset == "synthetic" else "val")
        report = evaluate_model(
            model, args.dataset, split, args.data_dir, output_dir=args.output_dir,
            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, threshold=args.threshold,
            num_samples=args.num_samples, resume=args.resume, metric_options=metric_options,
            device=args.device, dtype=args.dtype, ablation=args.ablation, **loader_kwargs,
        )
    print(format_report(report, verbose=args.verbose))
    if not args.verbose:
        print(f"report: {Path(args.output_dir) / REPORT_FILE} (--verbose prints it)")
    return 0
