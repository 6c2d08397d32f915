"""Reading and checking metric inputs: COCO RLE fields, one sample's mask (or instance list), ``eval_size``, and a
batch split into aligned per-sample lists with explicit no-target decisions."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..utils.masks import is_rle, to_binary_mask, union_masks

MAX_EVAL_SIDE = 8192
"""Largest ``eval_size`` side: beyond it every resized mask is hundreds of megabytes (a typo such as ``10**6`` would
try to allocate a terabyte)."""


# ----------------------------------------------------------------------------------------------- input checks
def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_rle_fields(rle: dict, where: str = "RLE") -> None:
    """Check the fields of a COCO RLE dict that :mod:`segcompass.utils.masks` reads with ``int()``: ``size`` must be
    two non-negative ints and a ``counts`` list must hold non-negative ints (``int()`` would truncate ``8.7`` or
    fail on ``None`` with a TypeError). The run-length sum and the compressed alphabet are checked on decoding."""
    size = rle.get("size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) and v >= 0 for v in size)):
        raise ValueError(
            f"{where}: RLE 'size' must be [H, W] with two non-negative ints, got {size!r}. Build RLEs with "
            "segcompass.utils.masks.encode_rle(mask)."
        )
    counts = rle.get("counts")
    if isinstance(counts, (list, tuple)) or (isinstance(counts, np.ndarray) and counts.dtype.kind not in "SU"):
        odd = [c for c in counts if not (_is_int(c) and c >= 0)]
        if odd:
            odd = odd[0]
            raise ValueError(
                f"{where}: RLE 'counts' list must hold non-negative integers, got {odd!r}; the RLE is corrupt. Build "
                "RLEs with segcompass.utils.masks.encode_rle(mask)."
            )


def _describe_value(x: Any) -> str:
    shape = getattr(x, "shape", None)
    if shape is not None and len(tuple(shape)) == 0:
        return f"a 0-d {type(x).__name__}"
    return _describe(x)


def _read_sample_mask(x: Any, role: str, threshold: float) -> np.ndarray | None:
    """One sample's mask as bool ``(H, W)``; ``None`` for an empty instance list (no instances, size unknown)."""
    if x is None:
        raise ValueError(
            f"The {role} of a sample is None; pass [] for a sample with no instances, or a mask of zeros."
        )
    try:
        return _read_mask_or_instances(x, role, threshold)
    except TypeError as err:  # a value of an unexpected type deep inside the conversion
        raise ValueError(
            f"Cannot read the {role} of a sample as a mask ({err}); pass a 2-D bool / 0-1 array or tensor, a COCO RLE "
            "dict or a list of them."
        ) from None


def _read_mask_or_instances(x: Any, role: str, threshold: float) -> np.ndarray | None:
    if is_rle(x):
        check_rle_fields(x, f"The {role} of a sample")
        return to_binary_mask(x, threshold=threshold)
    if isinstance(x, (list, tuple)):
        if len(x) == 0:
            return None
        for item in x:
            if is_rle(item):
                check_rle_fields(item, f"An instance of the {role} of a sample")
        try:
            return union_masks([to_binary_mask(item, threshold=threshold) for item in x])
        except ValueError as err:
            looks_like_nested_mask = any(
                isinstance(item, (bool, int, float, np.number))
                or (isinstance(item, (list, tuple)) and item and isinstance(item[0], (bool, int, float, np.number)))
                for item in x
            )
            if not looks_like_nested_mask:
                raise
            raise ValueError(
                f"{err} (A sample's {role} given as a list is read as a list of instance masks; pass a single "
                "2-D mask as a numpy array or tensor.)"
            ) from err
    return to_binary_mask(x, threshold=threshold)


def _normalize_eval_size(eval_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if eval_size is None:
        return None
    if _is_int(eval_size):
        size = (int(eval_size), int(eval_size))
    elif isinstance(eval_size, (list, tuple)) and len(eval_size) == 2 and all(_is_int(v) for v in eval_size):
        size = (int(eval_size[0]), int(eval_size[1]))
    else:
        raise ValueError(f"`eval_size` must be None, an int or (H, W) of ints, got {eval_size!r}.")
    if min(size) <= 0:
        raise ValueError(f"`eval_size` must be positive, got {eval_size!r}.")
    if max(size) > MAX_EVAL_SIDE:
        raise ValueError(
            f"`eval_size` {eval_size!r} is too large: each side must be at most {MAX_EVAL_SIDE} pixels (ReLA scores "
            "at 480); pass None to score at the original resolution."
        )
    return size


# ----------------------------------------------------------------------------------------------- batches
def _describe(x: Any) -> str:
    shape = getattr(x, "shape", None)
    return f"{type(x).__name__} of shape {tuple(shape)}" if shape is not None else type(x).__name__


def _as_sample_list(x: Any, name: str) -> list:
    """Split a batch into per-sample items: a list/tuple, or an array/tensor batch ``(B, H, W)``."""
    if x is None:
        raise ValueError(
            f"`{name}` is None; pass one entry per sample (a list, or a (B, H, W) batch for masks)."
        )
    if is_rle(x):
        raise ValueError(
            f"`{name}` must be a sequence with one entry per sample, got a single RLE dict; wrap it: [rle]."
        )
    if isinstance(x, (list, tuple)):
        return list(x)
    ndim = getattr(x, "ndim", None)
    if ndim is not None:
        if ndim == 0 or (ndim == 1 and name in ("predictions", "references", "ignore_masks")):
            raise ValueError(
                f"`{name}` must be a list of per-sample entries or a (B, H, W) batch, got {_describe_value(x)}."
            )
        if ndim == 2 and name in ("predictions", "references", "ignore_masks"):
            raise ValueError(
                f"`{name}` must hold one mask per sample, got a single 2-D mask of shape {tuple(x.shape)}; "
                "wrap it in a list ([mask]) or stack a batch as (B, H, W)."
            )
        return [x[i] for i in range(len(x))]
    if hasattr(x, "__len__") and hasattr(x, "__getitem__") and not isinstance(x, (str, bytes, dict)):
        return [x[i] for i in range(len(x))]
    raise ValueError(f"`{name}` must be a list of per-sample entries or a (B, H, W) batch, got {_describe(x)}.")


def split_batch(
    predictions: Any, references: Any, ignore_masks: Any = None, no_target_predictions: Any = None
) -> tuple[list, list, list, list]:
    """Split a batch into four aligned per-sample lists (missing optional columns become ``None`` entries).

    Raises ``ValueError`` when the lengths differ or an argument is not a per-sample sequence.
    """
    preds = _as_sample_list(predictions, "predictions")
    refs = _as_sample_list(references, "references")
    if len(preds) != len(refs):
        raise ValueError(f"Got {len(preds)} predictions but {len(refs)} references; they must pair up.")
    ignores = [None] * len(refs) if ignore_masks is None else _as_sample_list(ignore_masks, "ignore_masks")
    decisions = (
        [None] * len(refs)
        if no_target_predictions is None
        else _as_sample_list(no_target_predictions, "no_target_predictions")
    )
    for name, column in (("ignore_masks", ignores), ("no_target_predictions", decisions)):
        if len(column) != len(refs):
            raise ValueError(f"Got {len(column)} {name} for {len(refs)} samples; pass one per sample.")
    decisions = [_decision(d, i) for i, d in enumerate(decisions)]
    return preds, refs, ignores, decisions


def _decision(d: Any, index: int) -> bool | None:
    """One explicit no-target decision: None, a bool (Python, numpy or a one-element bool array / tensor) or 0 / 1;
    anything else (a string, NaN, a probability) is refused rather than read by truthiness."""
    if d is None:
        return None
    if isinstance(d, (bool, np.bool_)):
        return bool(d)
    if _is_int(d) and d in (0, 1):
        return bool(d)
    dtype = getattr(d, "dtype", None)
    size = getattr(d, "size", None)
    size = size() if callable(size) else size
    if dtype is not None and str(dtype) in ("bool", "torch.bool") and getattr(d, "ndim", 1) <= 1:
        numel = d.numel() if hasattr(d, "numel") else int(np.prod(size))
        if numel == 1:
            return bool(d)
    raise ValueError(
        f"no_target_predictions[{index}] = {d!r} is not a bool; pass True (the model says there is no target), False "
        "or None (read it from the predicted mask) per sample."
    )
