"""Every benchmark comparison in one run: each prints ``name: ours X, reference Y, ratio Z`` with both sides measured
in this process (ratio < 1: ours is faster / smaller).

* GRPO step (``bench_grpo_step``): one backbone forward per completion vs a separate segmentation forward - loss
  forward + backward time, whole step time, activations held for the backward - on the embedded tiny model and on a
  random 8 x 512 text backbone (where, as at 7B, the backbone dominates the step).
* Concept path (``bench_concept_floor``): ``pooled_concepts`` + the concept interface, and the SAE encode alone, vs
  the plain SAE encode matmul ``x @ W_enc`` (the floor), at the paper's sizes (T 2048, d_in 3584, d_sae 65536).
* Pipeline (``bench_pipeline_batch``): batched vs looped calls - 4 instructions on one image, and B images.

    python benchmarks/run.py                 # everything, full sizes (~10 min on 2 CPU cores)
    python benchmarks/run.py --quick         # small sizes: checks that every comparison runs (~1 min)
    python benchmarks/run.py --only concepts --json results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench_* modules beside this file

from _timing import format_result  # noqa: E402  (benchmarks/_timing.py, on the path just set)

GROUPS = ("grpo", "concepts", "pipeline")


def _grpo(quick: bool) -> list[dict]:
    import bench_grpo_step

    parser = argparse.ArgumentParser()
    bench_grpo_step.add_arguments(parser)
    if quick:
        runs = [["--steps", "1", "--batch", "4", "--generations", "2", "--max-completion-length", "16"]]
    else:
        runs = [[], ["--text-hidden-size", "512", "--text-layers", "8", "--max-completion-length", "64",
                     "--steps", "2"]]
    return [result for argv in runs for result in bench_grpo_step.run(parser.parse_args(argv))]


def _concepts(quick: bool) -> list[dict]:
    import bench_concept_floor

    argv = ["--tokens", "256", "--d-in", "256", "--d-sae", "4096", "--d-c", "64", "--top-n", "32",
            "--ffn-dim", "128", "--repeats", "1"] if quick else []
    return bench_concept_floor.run(bench_concept_floor.build_parser().parse_args(argv))


def _pipeline(quick: bool) -> list[dict]:
    import bench_pipeline_batch

    argv = ["--images", "2", "--max-new-tokens", "16"] if quick else []
    return bench_pipeline_batch.run(bench_pipeline_batch.parse_args(argv))


RUNNERS = {"grpo": _grpo, "concepts": _concepts, "pipeline": _pipeline}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Small sizes: a smoke run of every comparison.")
    parser.add_argument("--only", default=",".join(GROUPS), help=f"Comma-separated subset of {', '.join(GROUPS)}.")
    parser.add_argument("--json", default=None, help="Also write the results to this JSON file.")
    args = parser.parse_args(argv)
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"--only: unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    logging.getLogger("segcompass").setLevel(logging.WARNING)
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}", flush=True)
    results = []
    for group in groups:
        start = time.perf_counter()
        for result in RUNNERS[group](args.quick):
            print(format_result(result), flush=True)
            results.append(result | {"group": group})
        print(f"[{group}: {time.perf_counter() - start:.0f} s]", flush=True)
    if args.json:
        from segcompass.utils.io import write_text_atomic

        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
