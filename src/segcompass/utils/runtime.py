"""Run-time settings scoped to a block: CPU threads for a model's size, and quiet transformers progress bars.

Used by the pipeline, the CLI, the SAE trainer's command and the examples; each helper restores what it changed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["SMALL_MODEL_PARAMETERS", "quiet_progress_bars", "threads_for", "torch_threads"]


SMALL_MODEL_PARAMETERS = 50_000_000
"""Below this many parameters a model runs on one CPU thread (:func:`threads_for`)."""


def threads_for(num_parameters: int, device: str | torch.device = "cpu") -> int | None:
    """The intra-op thread count to run a model of ``num_parameters`` on ``device``: 1 for a model under
    :data:`SMALL_MODEL_PARAMETERS` on the CPU, else None (keep torch's setting).

    A small model's matmuls are too small to split: extra threads only synchronise, and on a busy machine they thrash
    (the embedded 2 M-parameter model: about 0.3 s a call on one thread, up to 10 s on two; measured by
    ``benchmarks/pipeline_latency.py``). Large models and accelerators keep torch's setting.
    """
    if torch.device(device).type != "cpu" or num_parameters >= SMALL_MODEL_PARAMETERS:
        return None
    return 1


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(num_threads)``, restoring the previous count afterwards (None:
    unchanged). The setting is per process: concurrent calls from several threads share it."""
    previous = torch.get_num_threads()
    if num_threads is None or num_threads == previous:
        yield
        return
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def quiet_progress_bars(*descriptions: str) -> Iterator[None]:
    """Inside: transformers' progress bars with these descriptions (e.g. ``"Loading weights"``, ``"Writing model
    shards"``) are not drawn; every other bar is. The previous tqdm hook is restored afterwards."""
    from transformers.utils import logging as hf_logging

    previous = None

    def hook(factory, args, kwargs):
        if kwargs.get("desc") in descriptions:
            kwargs = {**kwargs, "disable": True}
        return previous(factory, args, kwargs) if previous is not None else factory(*args, **kwargs)

    previous = hf_logging.set_tqdm_hook(hook)
    try:
        yield
    finally:
        hf_logging.set_tqdm_hook(previous)
