"""``segcompass segment IMAGE INSTRUCTION``: segment what an instruction refers to and explain why.

Prints the model's reasoning, each kept instance (slot, score, box, area) with the SAE concepts behind it, and
optionally writes an overlay PNG (``--output``). Without ``--model`` the embedded default checkpoint is used.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from ._args import command, require_segcompass_checkpoint, resolve_model

__all__ = ["SegmentArguments", "segment_command"]


@dataclass
class SegmentArguments:
    """Options of ``segcompass segment``."""

    image: str = field(metadata={"positional": True, "help": "Image file."})
    instruction: str = field(metadata={"positional": True, "help": "What to segment, in words."})
    model: str | None = field(
        default=None, metadata={"help": "SegCompass checkpoint directory (default: the embedded model)."}
    )
    output: str | None = field(
        default=None, metadata={"help": "Write an overlay PNG here (in an existing directory; never the input image)."}
    )
    threshold: float | None = field(default=None, metadata={"help": "Confidence to keep a slot."})
    max_new_tokens: int = field(default=256, metadata={"help": "Reasoning length limit."})
    top_concepts: int = field(default=5, metadata={"help": "SAE concepts listed per instance."})


@command("segment", (SegmentArguments,), description="Segment what an instruction refers to and explain why.")
def segment_command(args: SegmentArguments) -> int:
    from transformers import pipeline

    from ..image_utils import load_image
    from ..visualize import render_overlay, save_image_atomic

    if args.output:
        _check_output(args.image, args.output)
    image = load_image(args.image, exif_transpose=True)  # masks in the orientation the user sees
    pipe = pipeline("reasoning-segmentation", model=require_segcompass_checkpoint(resolve_model(args.model)))
    result = pipe(image, args.instruction, threshold=args.threshold, max_new_tokens=args.max_new_tokens,
                  top_concepts=args.top_concepts)
    print(f"instruction: {args.instruction}")
    print(f"reasoning:   {result['reasoning'] or '(none)'}")
    for warning in result["warnings"]:  # unknown words, empty or malformed reasoning: outside what the model knows
        print(f"warning: {warning}", file=sys.stderr)
    if not result["instances"]:
        print("instances:   none (no target passed the confidence threshold)")
    for instance in result["instances"]:
        x, y, w, h = instance["box"]
        print(f"instance slot {instance['slot']}: score {instance['score']:.3f}  box [{x:.0f}, {y:.0f}, {w:.0f}, "
              f"{h:.0f}]  area {int(instance['mask'].sum())} px")
        for concept in instance["concepts"]:
            label = f" ({concept['label']})" if concept.get("label") else ""
            print(f"    concept f{concept['feature']}{label}: activation {concept['activation']:.3f}  "
                  f"weight {concept['weight']:.3f}")
    if args.output:
        threshold = pipe.model.config.confidence_threshold if args.threshold is None else args.threshold
        overlay = render_overlay(image, result["instances"], args.instruction,
                                 no_target_note=f"no target: no slot reached the confidence threshold {threshold:.2f}")
        save_image_atomic(overlay, args.output)
        print(f"overlay written to {args.output}")
    return 0


def _check_output(image: str, output: str) -> None:
    """Refuse an ``--output`` that is the input image itself (it would be overwritten) or that lies in a directory
    which does not exist (refused rather than created, so a typo in the path does not scatter directories)."""
    import os
    from pathlib import Path

    out = Path(output).expanduser()
    if out.exists() and Path(image).expanduser().exists() and os.path.samefile(out, Path(image).expanduser()):
        raise ValueError(f"--output {output!r} is the input image; it would be overwritten. Choose another file "
                         "name, e.g. overlay.png.")
    if out.is_dir():
        raise ValueError(f"--output {output!r} is a directory; give a file name such as {str(out / 'overlay.png')!r}.")
    if not out.parent.expanduser().is_dir():
        raise ValueError(f"--output {output!r}: directory {str(out.parent)!r} does not exist; create it first or "
                         "choose an existing directory.")
