"""Segment an image from an instruction with pipeline("reasoning-segmentation") and print why.

    python examples/segment.py examples/images/shapes.png "every red shape" [--model PATH] [--output overlay.png]

Without --model the embedded default checkpoint is used (when the installation ships one).
"""

import argparse

from transformers import pipeline

import segcompass  # noqa: F401  (registers the task, AutoModel and AutoProcessor)
from segcompass.image_utils import load_image
from segcompass.visualize import overlay_instances


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image")
    parser.add_argument("instruction")
    parser.add_argument("--model", default=None)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    seg = pipeline("reasoning-segmentation", model=args.model)
    image = load_image(args.image)
    out = seg(image, args.instruction)
    print("reasoning:", out["reasoning"])
    for inst in out["instances"]:
        top = ", ".join(f"f{c['feature']}" for c in inst["concepts"])
        print(f"slot {inst['slot']} score {inst['score']:.2f} box {inst['box']} concepts {top}")
    if args.output:
        overlay_instances(image, out["instances"]).save(args.output)


if __name__ == "__main__":
    main()
