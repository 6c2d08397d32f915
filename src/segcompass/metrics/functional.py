"""Reasoning / referring segmentation metrics as plain functions: cIoU, gIoU, Pr@X, N-acc, T-acc.

One evaluated unit ("sample") is one (image, instruction) pair. Its prediction is ONE mask, the union of the
predicted instances; its ground truth is the union of the target instances (empty for a no-target sample).
Masks are compared at the original image resolution, with ignore pixels removed from both intersection and
union. Per sample ``i``:

    I_i = |P_i ∩ G_i \\ ignore_i|        U_i = |(P_i ∪ G_i) \\ ignore_i|        IoU_i = I_i / U_i

Over the split:

* ``ciou`` = Σ_i I_i / Σ_i U_i (cumulative IoU, "overall IoU"; large objects weigh more).
* ``giou`` = mean_i IoU_i (every sample weighs the same).
* ``pr@t`` = fraction of target samples (non-empty ground truth) with ``IoU_i >= t``.
* ``n_acc`` = no-target samples predicted as no-target / no-target samples.
* ``t_acc`` = target samples predicted as having a target / target samples.

A sample "predicts no target" when its predicted mask is empty, unless an explicit per-sample decision is
given (``no_target_predictions``: a rejection head, a ``[REJ]`` token, all slot confidences below threshold).

Switches (defaults follow LISA, the code most reasoning-segmentation papers copy):

* ``empty_policy`` — IoU of a sample whose union is empty (prediction and ground truth both empty):
  ``"one"`` (LISA, GSVA, X-SAM, UniPixel, HiMTok), ``"zero"`` (VisionReasoner), ``"skip"`` (Seg-Zero: left out
  of gIoU and Pr@X).
* ``protocol`` — how no-target decisions enter the IoU numbers:
  ``"lisa"``: IoU from the masks only; decisions feed N-acc/T-acc only.
  ``"rela"`` (ReLA/GRES ``ReferEvaluator``): a no-target sample the model rejects scores IoU 1 with
  ``I = U = 0``; one it does not reject scores IoU 0 and adds ``|P|`` to ΣU; a target sample the model
  rejects has ``I`` forced to 0 (``U`` kept).
  ``"gsva"`` (GSVA ``eval_gres``): as ``"rela"``, but a rejected target sample keeps its mask IoU.
  With decisions read from mask emptiness (no ``no_target_predictions``) all three protocols give the same
  numbers; they differ only when an explicit decision disagrees with the mask.
* ``eval_size`` — ``None`` (original resolution, shapes must agree) or a fixed ``(H, W)`` / ``int`` (each side at
  most :data:`MAX_EVAL_SIDE`) to which prediction, ground truth and ignore mask are all resized with nearest
  neighbour (ReLA scores at 480 × 480).

Values are fractions in ``[0, 1]`` (papers print ×100); undefined values (no target samples for Pr@X, no
no-target samples for N-acc, every sample skipped) are ``nan``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..utils.logging import get_logger
from .inputs import (  # noqa: F401 (MAX_EVAL_SIDE and check_rle_fields re-exported)
    MAX_EVAL_SIDE,
    _is_int,
    _normalize_eval_size,
    check_rle_fields,
    split_batch,
)
from .per_sample import SampleStatistics, intersection_and_union, sample_statistics

logger = get_logger(__name__)

EMPTY_POLICIES = ("one", "zero", "skip")
PROTOCOLS = ("lisa", "rela", "gsva")
DEFAULT_PR_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)

__all__ = [
    "DEFAULT_PR_THRESHOLDS",
    "EMPTY_POLICIES",
    "PROTOCOLS",
    "SampleStatistics",
    "SegmentationMetricAccumulator",
    "ciou",
    "giou",
    "intersection_and_union",
    "n_acc",
    "precision_at",
    "reasoning_segmentation_metrics",
    "sample_statistics",
    "split_batch",
    "t_acc",
]


# ----------------------------------------------------------------------------------------------- accumulator
class SegmentationMetricAccumulator:
    """Streaming cIoU / gIoU / Pr@X / N-acc / T-acc over a split.

    ``update`` reduces each sample to four numbers (:class:`SampleStatistics`), so memory is O(samples), not
    O(pixels); ``compute`` applies the protocol and empty-union rules (see the module docstring).

    Args:
        protocol: ``"lisa"`` (default), ``"rela"`` or ``"gsva"``: how no-target decisions enter IoU.
        empty_policy: ``"one"`` (default), ``"zero"`` or ``"skip"``: IoU of a sample with an empty union.
        pr_thresholds: IoU thresholds for ``pr@t`` (``IoU >= t`` over target samples).
        eval_size: ``None`` (original resolution) or a fixed ``(H, W)`` / ``int`` (nearest-neighbour resize).
        threshold: foreground cut for float (probability) masks.

    Example:
        >>> import numpy as np
        >>> acc = SegmentationMetricAccumulator()
        >>> gt = np.zeros((2, 2), bool); gt[0] = True
        >>> acc.update([gt], [gt])
        >>> acc.update([np.zeros((2, 2), bool)], [[]])            # no-target sample, predicted empty
        >>> acc.compute()["giou"], acc.compute()["n_acc"]
        (1.0, 1.0)
    """

    def __init__(
        self,
        *,
        protocol: str = "lisa",
        empty_policy: str = "one",
        pr_thresholds: Sequence[float] = DEFAULT_PR_THRESHOLDS,
        eval_size: int | Sequence[int] | None = None,
        threshold: float = 0.5,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"`protocol` must be one of {PROTOCOLS}, got {protocol!r}.")
        if empty_policy not in EMPTY_POLICIES:
            raise ValueError(f"`empty_policy` must be one of {EMPTY_POLICIES}, got {empty_policy!r}.")
        is_sequence = isinstance(pr_thresholds, (Sequence, np.ndarray)) and not isinstance(pr_thresholds, (str, bytes))
        if not is_sequence or not all(isinstance(t, numbers.Real) and not isinstance(t, bool) for t in pr_thresholds):
            raise ValueError(
                f"`pr_thresholds` must be a sequence of numbers in [0, 1], got {pr_thresholds!r}; e.g. (0.5, 0.7)."
            )
        thresholds = tuple(float(t) for t in pr_thresholds)
        bad = [t for t in thresholds if not 0.0 <= t <= 1.0]
        if bad:
            raise ValueError(f"`pr_thresholds` must lie in [0, 1], got {bad}.")
        if not (isinstance(threshold, numbers.Real) and not isinstance(threshold, bool) and 0.0 <= threshold <= 1.0):
            raise ValueError(f"`threshold` is a probability cut in [0, 1], got {threshold!r}.")
        self.protocol = protocol
        self.empty_policy = empty_policy
        self.pr_thresholds = thresholds
        self.eval_size = _normalize_eval_size(eval_size)
        self.threshold = float(threshold)
        self.reset()

    def reset(self) -> None:
        """Forget every sample seen so far."""
        self._intersection: list[int] = []
        self._union: list[int] = []
        self._target: list[bool] = []
        self._rejected: list[bool] = []

    def __len__(self) -> int:
        return len(self._union)

    def add(
        self,
        prediction: Any,
        reference: Any,
        ignore: Any = None,
        no_target_prediction: bool | None = None,
    ) -> SampleStatistics:
        """Add one sample (arguments as in :func:`sample_statistics`); returns its statistics."""
        stats = sample_statistics(
            prediction,
            reference,
            ignore=ignore,
            no_target_prediction=no_target_prediction,
            eval_size=self.eval_size,
            threshold=self.threshold,
        )
        self.add_statistics(stats)
        return stats

    def add_statistics(self, stats: SampleStatistics) -> None:
        """Add one sample already reduced to :class:`SampleStatistics` (e.g. gathered from other processes).

        Raises ``ValueError`` unless the counts are non-negative integers with ``intersection <= union`` (anything
        else would give metrics outside [0, 1]).
        """
        if not isinstance(stats, SampleStatistics):
            raise ValueError(
                f"add_statistics expects a SampleStatistics, got {type(stats).__name__}; build one with "
                "sample_statistics(prediction, reference)."
            )
        inter, union = stats.intersection, stats.union
        if not (_is_int(inter) and _is_int(union)):
            raise ValueError(f"SampleStatistics counts must be integers, got intersection {inter!r}, union {union!r}.")
        if inter < 0 or union < 0:
            raise ValueError(f"SampleStatistics has a negative pixel count (intersection {inter}, union {union}).")
        if inter > union:
            raise ValueError(
                f"SampleStatistics has intersection {inter} > union {union}; the statistics are corrupt (an "
                "intersection is part of its union)."
            )
        self._intersection.append(int(stats.intersection))
        self._union.append(int(stats.union))
        self._target.append(bool(stats.target))
        self._rejected.append(bool(stats.rejected))

    def update(
        self,
        predictions: Any,
        references: Any,
        ignore_masks: Any = None,
        no_target_predictions: Any = None,
    ) -> None:
        """Add a batch of samples.

        Args:
            predictions: one entry per sample: a mask ``(H, W)`` (array, tensor, PIL, RLE) or a list of instance
                masks; or a batch array/tensor ``(B, H, W)``.
            references: same forms; ``[]`` (or an all-zero mask) for a no-target sample.
            ignore_masks: ``None`` or one entry per sample (``None`` for "nothing ignored").
            no_target_predictions: ``None`` or one bool (or ``None``) per sample: explicit "no target" decisions.
        """
        preds, refs, ignores, decisions = split_batch(predictions, references, ignore_masks, no_target_predictions)
        batch = [
            sample_statistics(
                p,
                r,
                ignore=i,
                no_target_prediction=d,
                eval_size=self.eval_size,
                threshold=self.threshold,
            )
            for p, r, i, d in zip(preds, refs, ignores, decisions)
        ]
        for stats in batch:  # add only once the whole batch validated
            self.add_statistics(stats)

    # ------------------------------------------------------------------------------------------- scoring
    def _scored(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per-sample ``(I, U, IoU, counted)`` after the protocol and empty-union rules."""
        inter = np.asarray(self._intersection, dtype=np.int64)
        union = np.asarray(self._union, dtype=np.int64)
        target = np.asarray(self._target, dtype=bool)
        rejected = np.asarray(self._rejected, dtype=bool)

        fixed = np.zeros(len(union), dtype=bool)  # IoU set by a protocol rule, never "empty union"
        iou = np.divide(inter, union, out=np.zeros(len(union), dtype=np.float64), where=union > 0)
        if self.protocol in ("rela", "gsva"):
            true_reject = ~target & rejected
            missed_reject = ~target & ~rejected
            union = np.where(true_reject, 0, union)  # I is already 0: the ground truth is empty
            iou[true_reject] = 1.0
            iou[missed_reject] = 0.0
            fixed |= ~target
            if self.protocol == "rela":
                false_reject = target & rejected
                inter = np.where(false_reject, 0, inter)
                iou[false_reject & (union > 0)] = 0.0

        empty = (union == 0) & ~fixed
        counted = np.ones(len(union), dtype=bool)
        if self.empty_policy == "one":
            iou[empty] = 1.0
        elif self.empty_policy == "zero":
            iou[empty] = 0.0
        else:
            counted &= ~empty
        return inter, union, iou, counted

    def per_sample_iou(self) -> np.ndarray:
        """IoU of every sample as scored for gIoU, shape ``(num_samples,)``; ``nan`` where skipped."""
        _, _, iou, counted = self._scored()
        return np.where(counted, iou, np.nan)

    def compute(self) -> dict[str, float | int]:
        """All metrics over the samples seen so far.

        Returns:
            ``{"ciou", "giou", "pr@<t>" for each threshold, "n_acc", "t_acc", "num_samples", "num_no_target"}``.
        """
        if len(self) == 0:
            raise ValueError("No samples to score; call update() with predictions and references first.")
        inter, union, iou, counted = self._scored()
        target = np.asarray(self._target, dtype=bool)
        rejected = np.asarray(self._rejected, dtype=bool)

        total_union = int(union.sum())
        if total_union > 0:
            ciou_value = float(inter.sum()) / total_union
        else:  # every sample has an empty union: follow the per-sample rule
            ciou_value = {"one": 1.0, "zero": 0.0, "skip": float("nan")}[self.empty_policy]
        giou_value = float(iou[counted].mean()) if counted.any() else float("nan")

        results: dict[str, float | int] = {"ciou": ciou_value, "giou": giou_value}
        pr_pool = target & counted
        for t in self.pr_thresholds:
            results[f"pr@{t:g}"] = float((iou[pr_pool] >= t).mean()) if pr_pool.any() else float("nan")
        results["n_acc"] = float(rejected[~target].mean()) if (~target).any() else float("nan")
        results["t_acc"] = float((~rejected[target]).mean()) if target.any() else float("nan")
        results["num_samples"] = int(len(union))
        results["num_no_target"] = int((~target).sum())
        logger.debug("Scored %d samples (%d no-target): %s", len(union), results["num_no_target"], results)
        return results


# ----------------------------------------------------------------------------------------------- one-shot
def reasoning_segmentation_metrics(
    predictions: Any,
    references: Any,
    *,
    ignore_masks: Any = None,
    no_target_predictions: Any = None,
    protocol: str = "lisa",
    empty_policy: str = "one",
    pr_thresholds: Sequence[float] = DEFAULT_PR_THRESHOLDS,
    eval_size: int | Sequence[int] | None = None,
    threshold: float = 0.5,
) -> dict[str, float | int]:
    """cIoU, gIoU, Pr@X, N-acc and T-acc in one pass (arguments as in :class:`SegmentationMetricAccumulator`).

    Example:
        >>> import numpy as np
        >>> gt = np.zeros((4, 4), bool); gt[:2] = True            # 8 pixels
        >>> pred = np.zeros((4, 4), bool); pred[:1] = True        # 4 pixels, all inside gt
        >>> r = reasoning_segmentation_metrics([pred], [gt])
        >>> r["ciou"], r["giou"], r["pr@0.5"], r["pr@0.6"]
        (0.5, 0.5, 1.0, 0.0)
    """
    accumulator = SegmentationMetricAccumulator(
        protocol=protocol,
        empty_policy=empty_policy,
        pr_thresholds=pr_thresholds,
        eval_size=eval_size,
        threshold=threshold,
    )
    accumulator.update(predictions, references, ignore_masks, no_target_predictions)
    return accumulator.compute()


def ciou(predictions: Any, references: Any, **kwargs: Any) -> float:
    """Cumulative IoU Σ I / Σ U (keyword arguments as in :func:`reasoning_segmentation_metrics`)."""
    return reasoning_segmentation_metrics(predictions, references, **kwargs)["ciou"]


def giou(predictions: Any, references: Any, **kwargs: Any) -> float:
    """Mean per-sample IoU (keyword arguments as in :func:`reasoning_segmentation_metrics`)."""
    return reasoning_segmentation_metrics(predictions, references, **kwargs)["giou"]


def precision_at(predictions: Any, references: Any, threshold: float = 0.5, **kwargs: Any) -> float:
    """Pr@``threshold``: fraction of target samples with ``IoU >= threshold``."""
    result = reasoning_segmentation_metrics(predictions, references, pr_thresholds=(threshold,), **kwargs)
    return result[f"pr@{float(threshold):g}"]


def n_acc(predictions: Any, references: Any, **kwargs: Any) -> float:
    """No-target accuracy: no-target samples predicted as no-target / no-target samples (``nan`` if none)."""
    return reasoning_segmentation_metrics(predictions, references, **kwargs)["n_acc"]


def t_acc(predictions: Any, references: Any, **kwargs: Any) -> float:
    """Target accuracy: target samples predicted as having a target / target samples (``nan`` if none)."""
    return reasoning_segmentation_metrics(predictions, references, **kwargs)["t_acc"]
