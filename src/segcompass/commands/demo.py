"""``segcompass demo``: run a model on synthetic scenes and write an HTML gallery (overlays, heatmaps, concepts).

Without ``--model`` the embedded default checkpoint is used; prints where ``index.html`` was written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._args import command, default_model_path

__all__ = ["DemoArguments", "demo_command"]


@dataclass
class DemoArguments:
    """Options of ``segcompass demo``."""

    model: str | None = field(default=None, metadata={"help": "Checkpoint directory (default: the embedded model)."})
    output_dir: str = field(default="segcompass-demo", metadata={"help": "Where index.html and images go."})
    num_examples: int = field(default=6, metadata={"help": "Synthetic scenes in the gallery."})
    seed: int = field(default=0, metadata={"help": "Seed of the synthetic scenes."})


@command("demo", (DemoArguments,))
def demo_command(args: DemoArguments) -> int:
    from ..demo import build_demo

    model = args.model or default_model_path()
    index = build_demo(args.output_dir, model=model, num_examples=args.num_examples, seed=args.seed)
    print(f"demo written to {index}")
    return 0
