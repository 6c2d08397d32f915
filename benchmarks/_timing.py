"""Shared by the benchmark scripts (run as ``python benchmarks/bench_x.py``, so this directory is on sys.path)."""

import time


def timed(fn, repeats: int) -> float:
    """Mean wall time of ``fn()`` in seconds over ``repeats`` calls, after one warm-up call."""
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def timed_interleaved(fns: dict, repeats: int) -> dict:
    """Median wall time of each ``fns[name]()`` in seconds: one warm-up call each, then ``repeats`` rounds calling
    every function once per round, so a change in machine load hits all of them alike."""
    import statistics

    for fn in fns.values():
        fn()  # warm-up
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def format_result(result: dict) -> str:
    """One comparison as every benchmark prints it: ``name: ours X unit, reference Y unit, ratio Z``."""
    unit = result.get("unit", "s")
    return (f"{result['name']}: ours {result['ours']:.3f} {unit}, reference {result['reference']:.3f} {unit}, "
            f"ratio {result['ratio']:.2f}")
