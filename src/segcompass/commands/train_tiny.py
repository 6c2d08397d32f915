"""``segcompass train-tiny OUTPUT_DIR``: train the tiny synthetic-domain SegCompass end to end.

Calls :func:`segcompass.recipes.tiny.train_tiny` (the recipe that made the embedded default model; ``--smoke`` for
CI) or, with ``--evaluate-only``, :func:`segcompass.recipes.tiny.main.reevaluate` on a finished run, and prints the
test cIoU / gIoU / N-acc / T-acc. ``--set FIELD=VALUE`` (repeatable) overrides a ``TinyRecipeConfig`` field (with
``--evaluate-only``: an evaluation field such as ``num_validation`` or ``thresholds``; ``--retune-threshold`` tunes the
confidence threshold again).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from ._args import CommandError, command

__all__ = ["TrainTinyArguments", "recipe_overrides", "train_tiny_command"]


@dataclass
class TrainTinyArguments:
    """Options of ``segcompass train-tiny``."""

    output_dir: str = field(
        metadata={"positional": True, "help": "where the checkpoint, metrics.json and README.md are written"}
    )
    smoke: bool = field(default=False, metadata={"help": "tiny sizes and a few steps (CI, < 3 min)"})
    evaluate_only: bool = field(
        default=False, metadata={"help": "re-run the evaluation stages of a finished run in OUTPUT_DIR with this code "
                                         "and rewrite its metrics.json and model card (no training)"}
    )
    retune_threshold: bool = field(
        default=False, metadata={"help": "with --evaluate-only: tune the confidence threshold again on validation and "
                                         "save it into the checkpoint's config"}
    )
    continue_from: str | None = field(
        default=None, metadata={"help": "a finished train-tiny run: take its saved model (with stages 0-4's metrics "
                                        "and timings, and its own concept stage if it ran one) and run the reasoning "
                                        "and concept stages and the stages after them on top, with today's settings "
                                        "for them"}
    )
    restart_at: str = field(
        default="concept", metadata={"help": "with --continue-from: 'concept' (default; the earlier model's stages 0-4 "
                                             "carried over) or 'lm_warmup' (its vision pretraining carried over, its "
                                             "backbone trained lm_warmup_steps more, every later stage run again on new "
                                             "heads)", "choices": ["concept", "lm_warmup"]}
    )
    seed: int = field(default=0, metadata={"help": "seeds initialisation, batch order and the random-SAE ablation"})
    processes: int = field(
        default=1, metadata={"help": "data-parallel training processes, one thread each (2 on a 2-core machine)"}
    )
    threads: int = field(
        default=1, metadata={"help": "torch intra-op threads (default 1: these tiny ops are dispatch-bound, and on a "
                                     "shared machine one thread was ~10x faster per step than two)"}
    )
    set: list[str] = field(
        default_factory=list, metadata={"help": "override a TinyRecipeConfig field, e.g. --set joint_steps=200",
                                        "metavar": "FIELD=VALUE", "action": "append"}
    )


def recipe_overrides(items: list[str]) -> dict:
    """``--set FIELD=VALUE`` items as ``TinyRecipeConfig`` field values (raises :class:`CommandError`)."""
    from dataclasses import fields

    from ..recipes.tiny.config import TinyRecipeConfig

    overrides = {}
    types = {f.name: f.type for f in fields(TinyRecipeConfig)}
    for item in items:
        name, _, value = item.partition("=")
        if name not in types or not value:
            raise CommandError(f"--set {item!r}: use FIELD=VALUE with a TinyRecipeConfig field ({sorted(types)}).")
        default = getattr(TinyRecipeConfig(), name)
        try:
            if isinstance(default, tuple):
                overrides[name] = tuple(float(v) for v in value.split(","))
            elif value.lower() == "none" and (default is None or "None" in str(types[name])):  # optional fields
                overrides[name] = None
            elif default is None:  # optional numbers (concept_window: int, lm_learning_rate: float)
                overrides[name] = float(value) if "float" in str(types[name]) else int(value)
            elif isinstance(default, bool):  # bool("false") is True: read the word
                words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
                if value.lower() not in words:
                    raise ValueError(value)
                overrides[name] = words[value.lower()]
            else:
                overrides[name] = type(default)(value)
        except ValueError:
            raise CommandError(
                f"--set {item!r}: {value!r} is not a valid {type(default).__name__} for {name}.") from None
    return overrides


@command("train-tiny", (TrainTinyArguments,),
         description="Build, train, evaluate and save the tiny synthetic-domain SegCompass model.")
def train_tiny_command(args: TrainTinyArguments) -> int:
    import logging

    import torch

    from ..recipes.tiny.card import format_metric
    from ..recipes.tiny.main import reevaluate, train_tiny

    overrides = recipe_overrides(args.set)
    if args.retune_threshold and not args.evaluate_only:
        raise CommandError("--retune-threshold re-tunes a finished run: add --evaluate-only (training always tunes "
                           "the threshold).")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("segcompass").setLevel(logging.INFO)
    torch.set_num_threads(max(1, args.threads))
    if args.evaluate_only:
        metrics = reevaluate(args.output_dir, retune_threshold=args.retune_threshold, **overrides)
    else:
        if args.restart_at != "concept" and not args.continue_from:
            raise CommandError("--restart-at restarts a finished run: add --continue-from RUN.")
        metrics = train_tiny(args.output_dir, smoke=args.smoke, seed=args.seed, processes=args.processes,
                             continue_from=args.continue_from, restart_at=args.restart_at, **overrides)
    full = metrics["test"]["generated/full"]
    print(f"wrote {args.output_dir}: test cIoU {format_metric(full['ciou'])}, gIoU {format_metric(full['giou'])}, "
          f"N-acc {format_metric(full['n_acc'])}, T-acc {format_metric(full['t_acc'])} "
          f"({metrics['timings_s']['total'] / 60:.1f} min)", file=sys.stdout)
    return 0
