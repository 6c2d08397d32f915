"""Heatmap / mask agreement with the ground truth (paper Appendix C.1, Figure 8 right): per sample, the IoU of the
heatmap prediction and of the mask prediction with the union ground truth, and how the two correlate.

The prediction rule (keep the slots whose confidence passes the threshold, take the union of their masks) is
:func:`segcompass.prediction.keep_and_union`, the same as the pipeline's and the evaluation's.

Dimension glossary: ``B`` samples, ``K`` slots, ``(H, W)`` original image size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..prediction import instance_limit, keep_and_union
from ..utils.logging import get_logger
from ._common import EvalMode, check_values, encode_sample, prepare

logger = get_logger(__name__)


def _iou(prediction: np.ndarray, reference: np.ndarray) -> tuple[float, int, int]:
    intersection = int(np.count_nonzero(prediction & reference))
    union = int(np.count_nonzero(prediction | reference))
    return (intersection / union if union else 1.0), intersection, union


def pearson_and_fit(x: Sequence[float], y: Sequence[float]) -> dict:
    """``{"pearson_r", "ols_slope", "ols_intercept"}`` of ``y`` regressed on ``x`` (ordinary least squares); all
    ``None`` with fewer than two points or zero variance."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(xs) < 2 or xs.std() == 0 or ys.std() == 0:
        return {"pearson_r": None, "ols_slope": None, "ols_intercept": None}
    slope, intercept = np.polyfit(xs, ys, 1)
    return {
        "pearson_r": float(np.corrcoef(xs, ys)[0, 1]),
        "ols_slope": float(slope),
        "ols_intercept": float(intercept),
    }


_pearson_and_fit = pearson_and_fit  # former private name


def heatmap_logit(heatmap_threshold: float) -> float:
    """The logit of a heatmap probability threshold (``-inf`` for 0, ``inf`` for 1)."""
    if 0 < heatmap_threshold < 1:
        return math.log(heatmap_threshold / (1 - heatmap_threshold))
    return -math.inf if heatmap_threshold == 0 else math.inf


def sample_agreement(model, processor, sample, completion: str, index: int, *, confidence_threshold: float,
                     heatmap_threshold: float = 0.5, mask_threshold: float = 0.0) -> dict:
    """One teacher-forced ``model(...)`` forward of one sample and its heatmap / mask predictions.

    Returns a dict: ``batch``, ``inputs`` (:func:`encode_sample`), ``out`` (the :class:`SegCompassOutput`),
    ``instances`` (list of (H, W) bool), ``union`` (H, W) bool ground truth, ``confidences`` (K,) σ(c_k),
    ``heatmaps`` (K, H, W) σ(H_k) and ``masks`` (K, H, W) bool per slot at the original size, ``kept`` (the kept
    slot indices), ``heatmap_pred`` / ``mask_pred`` (H, W) bool (the unions over kept slots), ``heatmap_iou`` /
    ``mask_iou`` (floats) and ``heatmap_iu`` / ``mask_iu`` (intersection, union) pixel counts.
    """
    batch, inputs, instances, union = encode_sample(model, processor, sample, completion, index)
    out = model(sam_pixel_values=batch["sam_pixel_values"], reshaped_input_sizes=batch["reshaped_input_sizes"],
                **inputs)
    confidences = out.confidence_logits[0].float().sigmoid().cpu()  # (K,)
    sizes = (batch["original_sizes"].cpu(), batch["reshaped_input_sizes"].cpu())
    # per-slot logits at the original size: (1, K, m, m) -> (K, H, W)
    heat_logits = processor.post_process_masks(out.heatmap_logits.float().cpu(), *sizes, binarize=False)[0]
    mask_logits = processor.post_process_masks(out.mask_logits.float().cpu(), *sizes, binarize=False)[0]
    masks = (mask_logits > mask_threshold).numpy()  # (K, H, W)
    rule = dict(shape=union.shape, duplicate_iou=model.config.duplicate_iou,
                max_instances=instance_limit(out.instance_limits, 0))
    heat_pred, kept = keep_and_union((heat_logits > heatmap_logit(heatmap_threshold)).numpy(), confidences,
                                     confidence_threshold, **rule)  # (H, W)
    mask_pred, _ = keep_and_union(masks, confidences, confidence_threshold, **rule)  # (H, W)
    h_iou, h_i, h_u = _iou(heat_pred, union)
    m_iou, m_i, m_u = _iou(mask_pred, union)
    return {
        "batch": batch, "inputs": inputs, "out": out, "instances": instances, "union": union,
        "confidences": confidences.numpy(), "heatmaps": heat_logits.sigmoid().numpy(), "masks": masks,
        "kept": kept, "heatmap_pred": heat_pred, "mask_pred": mask_pred,
        "heatmap_iou": h_iou, "mask_iou": m_iou, "heatmap_iu": (h_i, h_u), "mask_iu": (m_i, m_u),
    }


def heatmap_mask_agreement(
    model,
    processor,
    samples: Iterable[Mapping[str, Any]],
    *,
    completions: Sequence[str] | None = None,
    confidence_threshold: float | None = None,
    heatmap_threshold: float = 0.5,
    mask_threshold: float = 0.0,
) -> dict:
    """Figure 8 (right): per sample, IoU of the heatmap and of the mask with the ground truth, and their correlation.

    One teacher-forced ``model(...)`` forward per sample (:func:`sample_agreement`). Slots with
    ``σ(c_k) >= confidence_threshold`` (default ``model.config.confidence_threshold``) are kept; the heatmap
    prediction is the union over kept slots of ``σ(H_k) > heatmap_threshold`` and the mask prediction the union of
    ``mask_logits > mask_threshold``, both mapped to the original image size (``processor.post_process_masks``) and
    compared with the union of ``sample["masks"]``. IoU is 1.0 when prediction and ground truth are both empty
    (no-target samples).

    Returns:
        ``{"heatmap_iou": [B], "mask_iou": [B]`` (each in [0, 1]), ``"heatmap_ciou"``, ``"mask_ciou"`` (cumulative
        intersection / union over samples, ``None`` when every union is empty), ``"pearson_r"``, ``"ols_slope"``,
        ``"ols_intercept"`` (mask IoU regressed on heatmap IoU; ``None`` with fewer than two samples or zero
        variance), ``"num_kept_slots": [B]``, ``"sample_ids": [B]``, ``"num_samples"}``.
    """
    threshold = model.config.confidence_threshold if confidence_threshold is None else confidence_threshold
    check_values([threshold, heatmap_threshold], "confidence_threshold / heatmap_threshold", 0.0, 1.0, low_open=False)
    samples, completions = prepare(model, processor, samples, completions)
    rows = []
    with EvalMode(model):
        for index, (sample, completion) in enumerate(zip(samples, completions)):
            rows.append(sample_agreement(model, processor, sample, completion, index, confidence_threshold=threshold,
                                         heatmap_threshold=heatmap_threshold, mask_threshold=mask_threshold))
    result = summarize_agreement(rows, [str(s.get("sample_id", i)) for i, s in enumerate(samples)])
    logger.info("heatmap_mask_agreement over %d samples: pearson_r=%s", len(samples), result["pearson_r"])
    return result


def summarize_agreement(rows: Sequence[Mapping[str, Any]], sample_ids: Sequence[str]) -> dict:
    """The result of :func:`heatmap_mask_agreement` from the B :func:`sample_agreement` dicts of its samples."""
    totals = np.zeros(4, dtype=np.int64)  # heatmap I, U, mask I, U
    for row in rows:
        totals += (*row["heatmap_iu"], *row["mask_iu"])
    heat_iou, mask_iou = [row["heatmap_iou"] for row in rows], [row["mask_iou"] for row in rows]
    return {
        "heatmap_iou": heat_iou,
        "mask_iou": mask_iou,
        "heatmap_ciou": float(totals[0] / totals[1]) if totals[1] else None,
        "mask_ciou": float(totals[2] / totals[3]) if totals[3] else None,
        **pearson_and_fit(heat_iou, mask_iou),
        "num_kept_slots": [len(row["kept"]) for row in rows],
        "sample_ids": list(sample_ids),
        "num_samples": len(rows),
    }
