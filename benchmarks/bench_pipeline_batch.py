"""``pipeline("reasoning-segmentation")`` batching: one batched call (``batch_size`` = the number of pairs: one
processor call, one generation, one scoring forward, one SAM embedding per distinct image) vs the loop of single
calls (reference), on the embedded default model, one CPU thread, warm (``_timing.timed_interleaved``: one warm-up
call each, then the median of ``--repeats`` alternating calls), measured in the same run. The two must give the same reasoning (checked).

    python benchmarks/bench_pipeline_batch.py [--repeats 1] [--images 4] [--max-new-tokens 128]

``run(args)`` (``args`` an ``argparse.Namespace`` from :func:`parse_args`, or ``None`` for the defaults) returns one
dict per comparison: ``name``, ``ours`` and ``reference`` (seconds per batch of pairs), ``ratio`` (ours / reference: below 1
is faster) and ``unit``. The defaults take well under a minute on the embedded model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _timing import format_result, timed_interleaved  # benchmarks/_timing.py
from transformers import pipeline

import segcompass  # noqa: F401  (registers the task)
from segcompass.data.synthetic.generator import generate_sample
from segcompass.image_utils import load_image
from segcompass.presets import default_model_dir

IMAGE = Path(__file__).resolve().parents[1] / "examples" / "images" / "scene.png"
INSTRUCTIONS = ["the shape with the same kind as the green shape", "every purple shape", "every red shape",
                "the largest circle"]
TEST_SEED = 2 * 10**9  # synthetic test-split seeds: 2e9 + index


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="Timed rounds (one call per setting each, alternating), after one warm-up call each.")
    parser.add_argument("--images", "-B", type=int, default=4, help="B: the images of the second comparison.")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="Reasoning length limit of every call.")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.images < 1 or args.max_new_tokens < 1:
        parser.error("--repeats, --images and --max-new-tokens must be >= 1")
    return args


def _compare(name: str, pipe, images: list, texts: list[str], args) -> dict:
    kwargs = {"max_new_tokens": args.max_new_tokens, "num_threads": 1}
    last = {}

    def batched():
        last["ours"] = pipe(images, texts, batch_size=len(texts), **kwargs)

    def looped():
        last["reference"] = [pipe(image, text, batch_size=1, **kwargs) for image, text in zip(images, texts)]

    times = timed_interleaved({"reference": looped, "ours": batched}, args.repeats)
    reference, ours = times["reference"], times["ours"]
    got = [out["reasoning"] for out in last["ours"]]
    want = [out["reasoning"] for out in last["reference"]]
    if got != want:
        raise RuntimeError(f"{name}: the batched reasoning differs from the single calls': {got} vs {want}")
    return {"name": name, "ours": ours, "reference": reference, "ratio": ours / reference, "unit": "s"}


def run(args: argparse.Namespace | None = None) -> list[dict]:
    args = args if args is not None else parse_args([])
    pipe = pipeline("reasoning-segmentation", model=str(default_model_dir()))
    scene = load_image(IMAGE)
    samples = [generate_sample(TEST_SEED + i) for i in range(args.images)]
    return [
        _compare("pipeline, 4 instructions on one image: batched vs looped", pipe, [scene] * len(INSTRUCTIONS),
                 INSTRUCTIONS, args),
        _compare(f"pipeline, {args.images} images: batched vs looped", pipe, [s["image"] for s in samples],
                 [s["instruction"] for s in samples], args),
    ]


def main(argv: list[str] | None = None) -> None:
    for row in run(parse_args(argv)):
        print(format_result(row))


if __name__ == "__main__":
    main()
