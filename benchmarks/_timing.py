"""Shared by the benchmark scripts (run as ``python benchmarks/bench_x.py``, so this directory is on sys.path)."""

import time


def timed(fn, repeats: int) -> float:
    """Mean wall time of ``fn()`` in seconds over ``repeats`` calls, after one warm-up call."""
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats
