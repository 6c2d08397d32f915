"""``segcompass demo``: run a model on synthetic scenes and write a static HTML gallery: ground truth and prediction
side by side with their IoU and a right / wrong mark, the reasoning, every slot's heatmap over the image and the SAE
concepts behind it (:mod:`segcompass.demo`). ``segcompass app`` is the interactive version.

Without ``--model`` the embedded default checkpoint is used; prints where ``index.html`` was written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._args import command, require_segcompass_checkpoint, resolve_model

__all__ = ["DemoArguments", "demo_command"]


@dataclass
class DemoArguments:
    """Options of ``segcompass demo``."""

    model: str | None = field(default=None, metadata={"help": "Checkpoint directory (default: the embedded model)."})
    output_dir: str = field(default="segcompass-demo", metadata={"help": "Where index.html and images go."})
    num_examples: int = field(default=6, metadata={"help": "Synthetic scenes in the gallery."})
    seed: int = field(default=0, metadata={"help": "Seed of the synthetic scenes."})


@command("demo", (DemoArguments,), description="Write a static HTML gallery of the model on synthetic scenes: ground "
         "truth vs prediction with IoU, reasoning, slot heatmaps and concepts.")
def demo_command(args: DemoArguments) -> int:
    from ..demo import build_demo

    model = require_segcompass_checkpoint(resolve_model(args.model))
    index = build_demo(args.output_dir, model=model, num_examples=args.num_examples, seed=args.seed)
    print(f"demo written to {index}")
    return 0
