"""Warm ``pipeline("reasoning-segmentation")`` latency on the embedded model: one CPU thread vs two, same run.

The pipeline runs a model under 50 M parameters on one thread by default (``segcompass.utils.runtime.threads_for``);
this measures why. Each setting gets one warm-up call, then ``--repeats`` timed calls, interleaved in rounds so a
change in machine load hits both alike.

    python benchmarks/pipeline_latency.py [--model DIR] [--repeats 3] [--rounds 2] [--max-new-tokens 256]
"""

import argparse
import statistics
import time

import torch
from transformers import pipeline

import segcompass  # noqa: F401  (registers the task)
from segcompass.image_utils import load_image

IMAGE = "examples/images/scene.png"
INSTRUCTION = "the shape with the same kind as the green shape"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Checkpoint directory (default: the embedded model).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed calls per setting and round.")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds alternating the settings.")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="Reasoning length limit.")
    args = parser.parse_args()
    pipe = pipeline("reasoning-segmentation", model=args.model)
    image = load_image(IMAGE)
    params = sum(p.numel() for p in pipe.model.parameters())

    def call(threads: int | None):
        return pipe(image, INSTRUCTION, num_threads=threads, max_new_tokens=args.max_new_tokens)

    settings = {"1 thread": 1, "2 threads": 2}
    times: dict[str, list[float]] = {name: [] for name in settings}
    for threads in settings.values():
        call(threads)  # warm-up
    for _ in range(args.rounds):
        for name, threads in settings.items():
            for _ in range(args.repeats):
                start = time.perf_counter()
                call(threads)
                times[name].append(time.perf_counter() - start)
    print(f"model: {pipe.model.name_or_path} ({params / 1e6:.1f} M parameters); pipeline default threads: "
          f"{pipe.num_threads or torch.get_num_threads()}; torch.get_num_threads() = {torch.get_num_threads()}")
    for name, values in times.items():
        print(f"{name:>9}: median {statistics.median(values):.3f} s  (min {min(values):.3f}, max {max(values):.3f}, "
              f"{len(values)} warm calls)")
    one, two = statistics.median(times["1 thread"]), statistics.median(times["2 threads"])
    print(f"ratio 2 threads / 1 thread: {two / one:.2f}x")


if __name__ == "__main__":
    main()
