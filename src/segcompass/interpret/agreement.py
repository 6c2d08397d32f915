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

from ..prediction import keep_and_union
from ..utils.logging import get_logger
from ._common import EvalMode, check_values, encode_sample, prepare

logger = get_logger(__name__)


def _iou(prediction: np.ndarray, reference: np.ndarray) -> tuple[float, int, int]:
    intersection = int(np.count_nonzero(prediction & reference))
    union = int(np.count_nonzero(prediction | reference))
    return (intersection / union if union else 1.0), intersection, union


def _pearson_and_fit(x: list[float], y: list[float]) -> dict:
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(xs) < 2 or xs.std() == 0 or ys.std() == 0:
        return {"pearson_r": None, "ols_slope": None, "ols_intercept": None}
    slope, intercept = np.polyfit(xs, ys, 1)
    return {
        "pearson_r": float(np.corrcoef(xs, ys)[0, 1]),
        "ols_slope": float(slope),
        "ols_intercept": float(intercept),
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

    One teacher-forced ``model(...)`` forward per sample. Slots with ``σ(c_k) >= confidence_threshold`` (default
    ``model.config.confidence_threshold``) are kept; the heatmap prediction is the union over kept slots of
    ``σ(H_k) > heatmap_threshold`` and the mask prediction the union of ``mask_logits > mask_threshold``, both
    mapped to the original image size (``processor.post_process_masks``) and compared with the union of
    ``sample["masks"]``. IoU is 1.0 when prediction and ground truth are both empty (no-target samples).

    Returns:
        ``{"heatmap_iou": [B], "mask_iou": [B]`` (each in [0, 1]), ``"heatmap_ciou"``, ``"mask_ciou"`` (cumulative
        intersection / union over samples, ``None`` when every union is empty), ``"pearson_r"``, ``"ols_slope"``,
        ``"ols_intercept"`` (mask IoU regressed on heatmap IoU; ``None`` with fewer than two samples or zero
        variance), ``"num_kept_slots": [B]``, ``"sample_ids": [B]``, ``"num_samples"}``.
    """
    threshold = model.config.confidence_threshold if confidence_threshold is None else confidence_threshold
    check_values([threshold, heatmap_threshold], "confidence_threshold / heatmap_threshold", 0.0, 1.0, low_open=False)
    samples, completions = prepare(model, processor, samples, completions)
    heat_logit = math.log(heatmap_threshold / (1 - heatmap_threshold)) if 0 < heatmap_threshold < 1 else (
        -math.inf if heatmap_threshold == 0 else math.inf)
    heat_iou, mask_iou, kept, ids = [], [], [], []
    totals = np.zeros(4, dtype=np.int64)  # heatmap I, U, mask I, U
    with EvalMode(model):
        for index, (sample, completion) in enumerate(zip(samples, completions)):
            batch, inputs, _, union = encode_sample(model, processor, sample, completion, index)
            out = model(sam_pixel_values=batch["sam_pixel_values"], reshaped_input_sizes=batch["reshaped_input_sizes"],
                        **inputs)
            confidences = out.confidence_logits[0].float().sigmoid()  # (K,)
            sizes = (batch["original_sizes"].cpu(), batch["reshaped_input_sizes"].cpu())
            # per-slot masks at the original size: (1, K, h, w) logits -> (K, H, W) bool
            heat = processor.post_process_masks(out.heatmap_logits.float().cpu(), *sizes, threshold=heat_logit)[0]
            mask = processor.post_process_masks(out.mask_logits.float().cpu(), *sizes, threshold=mask_threshold)[0]
            heat_pred, keep = keep_and_union(heat.numpy(), confidences, threshold, shape=union.shape)  # (H, W)
            mask_pred, _ = keep_and_union(mask.numpy(), confidences, threshold, shape=union.shape)  # (H, W)
            h_iou, h_i, h_u = _iou(heat_pred, union)
            m_iou, m_i, m_u = _iou(mask_pred, union)
            totals += (h_i, h_u, m_i, m_u)
            heat_iou.append(h_iou)
            mask_iou.append(m_iou)
            kept.append(len(keep))
            ids.append(str(sample.get("sample_id", index)))
    result = {
        "heatmap_iou": heat_iou,
        "mask_iou": mask_iou,
        "heatmap_ciou": float(totals[0] / totals[1]) if totals[1] else None,
        "mask_ciou": float(totals[2] / totals[3]) if totals[3] else None,
        **_pearson_and_fit(heat_iou, mask_iou),
        "num_kept_slots": kept,
        "sample_ids": ids,
        "num_samples": len(samples),
    }
    logger.info("heatmap_mask_agreement over %d samples: pearson_r=%s", len(samples), result["pearson_r"])
    return result
