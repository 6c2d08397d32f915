"""Evaluation metrics: cIoU, gIoU, Pr@X, N-acc, T-acc as plain functions and as offline ``evaluate`` modules.

Plain functions (no ``evaluate`` import)::

    from segcompass.metrics import reasoning_segmentation_metrics, SegmentationMetricAccumulator
    reasoning_segmentation_metrics(predictions, references)   # {"ciou", "giou", "pr@0.5", ..., "n_acc", "t_acc", ...}

``evaluate`` modules, loaded by path (works with ``HF_HUB_OFFLINE=1``)::

    import evaluate, segcompass.metrics
    metric = evaluate.load(segcompass.metrics.REASONING_SEGMENTATION)   # or CIOU / GIOU

Definitions, defaults and the peers each switch reproduces: :mod:`segcompass.metrics.functional` and the
metric cards (``README.md`` next to each module).
"""

from pathlib import Path

from .functional import (
    DEFAULT_PR_THRESHOLDS,
    EMPTY_POLICIES,
    PROTOCOLS,
    SampleStatistics,
    SegmentationMetricAccumulator,
    ciou,
    giou,
    intersection_and_union,
    n_acc,
    precision_at,
    reasoning_segmentation_metrics,
    sample_statistics,
    t_acc,
)

_HERE = Path(__file__).resolve().parent

CIOU: str = str(_HERE / "ciou")
"""Directory of the cIoU ``evaluate`` module: ``evaluate.load(segcompass.metrics.CIOU)``."""
GIOU: str = str(_HERE / "giou")
"""Directory of the gIoU ``evaluate`` module: ``evaluate.load(segcompass.metrics.GIOU)``."""
REASONING_SEGMENTATION: str = str(_HERE / "reasoning_segmentation")
"""Directory of the combined ``evaluate`` module (cIoU, gIoU, Pr@X, N-acc, T-acc)."""

__all__ = [
    "CIOU",
    "DEFAULT_PR_THRESHOLDS",
    "EMPTY_POLICIES",
    "GIOU",
    "PROTOCOLS",
    "REASONING_SEGMENTATION",
    "SampleStatistics",
    "SegmentationMetricAccumulator",
    "ciou",
    "giou",
    "intersection_and_union",
    "n_acc",
    "precision_at",
    "reasoning_segmentation_metrics",
    "sample_statistics",
    "t_acc",
]
