"""The data of one Fig. 9-style panel (paper Appendix C.2): instruction and reasoning, the image, its activated image
tokens, every slot's heatmap and confidence, the prediction against the ground truth and each slot's top concepts.

Everything comes from the teacher-forced forward of :func:`~segcompass.interpret.agreement.sample_agreement` (the
prediction rule :func:`segcompass.prediction.keep_and_union`) and the SAE encoding of
:func:`~segcompass.interpret.activations.sample_activations`; :func:`~segcompass.interpret.figures.plot_sample_panel`
draws it.

Dimension glossary: ``K`` slots, ``N`` concepts kept by the model, ``(H, W)`` image size, ``(g_h, g_w)`` the merged
image-token grid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..image_utils import load_image
from ..prediction import slot_concepts as rank_slot_concepts
from .activations import sample_activations

__all__ = ["ARRAY_FIELDS", "feature_labeler", "sample_panel", "slot_concepts"]

ARRAY_FIELDS = ("image", "heatmaps", "prediction", "ground_truth")
"""Panel fields that are images or maps (drawn, not written to JSON)."""


def feature_labeler(model) -> Callable[[int], str | None]:
    """``index -> label or None``: the SAE's ``feature_label`` when it has one, else no labels."""
    return getattr(model.sae, "feature_label", lambda index: None)


def slot_concepts(out, slot: int, top: int, label: Callable[[int], str | None]) -> list[dict]:
    """The ``top`` concepts slot ``slot`` of sample 0 of ``out`` (a ``SegCompassOutput``) drew on most:
    :func:`segcompass.prediction.slot_concepts`."""
    return rank_slot_concepts(out.slot_concept_attention[0, slot], out.concept_mask[0], out.concept_indices[0],
                              out.concept_values[0], top, label)


def sample_panel(model, processor, sample: Mapping[str, Any], completion: str, index: int,
                 agreement: Mapping[str, Any], *, threshold: float, top_concepts: int = 5) -> dict:
    """The panel of one sample from its :func:`sample_agreement` dict (one more backbone forward for the SAE codes).

    Returns:
        ``{"sample_id", "instruction", "reasoning", "image": (H, W, 3) uint8, "token_grid": [g_h, g_w],
        "token_activation": (g_h, g_w)`` (the SAE activation of each image token summed over its features),
        ``"heatmaps": (K, H, W), "confidences": [K], "kept": [...], "threshold", "prediction": (H, W) bool,
        "ground_truth": (H, W) bool, "heatmap_iou", "mask_iou", "concepts": K lists}``.
    """
    acts = sample_activations(model, processor, sample, completion, index, [0.0])
    grid = acts["grid"]
    tokens = acts["total"][acts["image_positions"]].reshape(grid)  # (g_h, g_w), grid order is row-major
    label = feature_labeler(model)
    out = agreement["out"]
    return {
        "sample_id": str(sample.get("sample_id", index)),
        "instruction": sample["instruction"],
        "reasoning": (sample.get("reasoning") or "").strip(),
        "image": np.asarray(load_image(sample["image"]).convert("RGB")),
        "token_grid": list(grid),
        "token_activation": tokens.tolist(),
        "heatmaps": agreement["heatmaps"],
        "confidences": [float(c) for c in agreement["confidences"]],
        "kept": list(agreement["kept"]),
        "threshold": float(threshold),
        "prediction": agreement["mask_pred"],
        "ground_truth": agreement["union"],
        "heatmap_iou": agreement["heatmap_iou"],
        "mask_iou": agreement["mask_iou"],
        "concepts": [slot_concepts(out, k, top_concepts, label) for k in range(len(agreement["confidences"]))],
    }
