"""One sample reduced to raw counts: :class:`SampleStatistics` (intersection, union, target and rejection flags)
and :func:`intersection_and_union`, before any protocol or empty-union rule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..utils.masks import resize_mask_nearest
from .inputs import _normalize_eval_size, _read_sample_mask


@dataclass(frozen=True)
class SampleStatistics:
    """Raw counts of one sample, before any protocol or empty-union rule is applied.

    Attributes:
        intersection: ``|P ∩ G \\ ignore|`` in pixels (at the evaluation resolution).
        union: ``|(P ∪ G) \\ ignore|`` in pixels.
        target: the ground truth is non-empty (read at the original resolution, before ignore removal).
        rejected: the prediction says "no target" (explicit decision, else an empty predicted mask).
    """

    intersection: int
    union: int
    target: bool
    rejected: bool


def sample_statistics(
    prediction: Any,
    reference: Any,
    *,
    ignore: Any = None,
    no_target_prediction: bool | None = None,
    eval_size: int | Sequence[int] | None = None,
    threshold: float = 0.5,
) -> SampleStatistics:
    """Intersection, union, target and rejection flags of one sample.

    Args:
        prediction: predicted mask ``(H, W)`` in any form :func:`~segcompass.utils.masks.to_binary_mask`
            accepts, or a list of instance masks (union taken; ``[]`` = nothing predicted).
        reference: ground-truth mask ``(H, W)`` or list of target instance masks (``[]`` = no target).
        ignore: optional mask ``(H, W)`` of pixels excluded from intersection and union.
        no_target_prediction: explicit "no target" decision; ``None`` reads it from prediction emptiness.
        eval_size: ``None`` to score at the original resolution (shapes must agree), else ``(H, W)`` or
            ``int``: all masks are resized to it with nearest neighbour.
        threshold: foreground cut for float (probability) masks.
    """
    size = _normalize_eval_size(eval_size)
    pred = _read_sample_mask(prediction, "prediction", threshold)
    ref = _read_sample_mask(reference, "reference", threshold)
    ign = None if ignore is None else _read_sample_mask(ignore, "ignore mask", threshold)

    if size is None:
        if pred is not None and ref is not None and pred.shape != ref.shape:
            raise ValueError(
                f"Prediction shape {pred.shape} != reference shape {ref.shape}. Metrics compare masks at the "
                "original image resolution: resize the prediction to the image size first, or pass "
                "eval_size=(H, W) to resize both with nearest neighbour."
            )
        if ign is not None:
            base = ref if ref is not None else pred
            if base is not None and ign.shape != base.shape:
                raise ValueError(
                    f"Ignore mask shape {ign.shape} != reference shape {base.shape}; the ignore mask must "
                    "cover the same image as the ground truth."
                )

    if ign is not None and not ign.any():
        ign = None
    if no_target_prediction is None:
        rejected = pred is None or not pred.any()
    else:
        rejected = bool(no_target_prediction)
    target = ref is not None and bool(ref.any())

    if size is not None:
        pred = None if pred is None else resize_mask_nearest(pred, size)
        ref = None if ref is None else resize_mask_nearest(ref, size)
        ign = None if ign is None else resize_mask_nearest(ign, size)

    if pred is None and ref is None:
        return SampleStatistics(0, 0, target, rejected)
    keep = None if ign is None else ~ign
    if pred is None or ref is None:
        present = ref if pred is None else pred
        union = present if keep is None else present & keep
        return SampleStatistics(0, int(np.count_nonzero(union)), target, rejected)
    intersection = pred & ref
    union = pred | ref
    if keep is not None:
        intersection &= keep
        union &= keep
    return SampleStatistics(int(np.count_nonzero(intersection)), int(np.count_nonzero(union)), target, rejected)


def intersection_and_union(
    prediction: Any,
    reference: Any,
    *,
    ignore: Any = None,
    eval_size: int | Sequence[int] | None = None,
    threshold: float = 0.5,
) -> tuple[int, int]:
    """``(I, U)`` in pixels for one sample (arguments as in :func:`sample_statistics`)."""
    stats = sample_statistics(prediction, reference, ignore=ignore, eval_size=eval_size, threshold=threshold)
    return stats.intersection, stats.union
