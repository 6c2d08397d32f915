"""The output classes of :class:`~segcompass.modeling_segcompass.SegCompassForReasoningSegmentation`
(re-exported there). Dimension glossary: see :mod:`segcompass.modeling_segcompass`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

__all__ = ["SegCompassOutput", "SegCompassSegmentation", "SegCompassSegmentationOutput"]


@dataclass
class SegCompassOutput(ModelOutput):
    """Output of [`SegCompassForReasoningSegmentation.forward`].

    Args:
        loss (`()`, *optional*): language-model loss when ``labels`` are given.
        logits (`(B, T', vocab)`): language-model logits of the last T' positions (see ``logits_to_keep``).
        heatmap_logits (`(B, K, m, m)`): the K-slot heatmaps H_k (logits).
        confidence_logits (`(B, K)`): slot confidences c_k (logits).
        mask_logits (`(B, K, m, m)`): the final mask logits: the decoder's, refined by the mask refiner when the
            model has one (``config.mask_refiner_hidden_size``), plus ``config.mask_logit_bias``. Training losses read
            these too: fine-tuning a model with a bias trains its decoder under that cut (set the bias to 0 to train
            the decoder's own cut, and tune it again after).
        iou_scores (`(B, K)`): the SAM decoder's IoU predictions for its own masks, i.e. before the mask refiner
            and the bias (they are not re-estimated for the final masks; the prediction rule reads
            ``confidence_logits``).
        concept_indices / concept_values / concept_mask (`(B, N)`): the kept SAE concepts (j, h_j), valid entries.
        slot_concept_attention (`(B, K, N)`): how much each slot drew on each concept (provenance).
        concept_token_activations (`(B, T, N)`): each kept concept's activation at every token.
        slot_embeddings (`(B, K, D)`): e_k; concept_slots (`(B, K, d_c)`): r_k.
        image_embeddings (`(B, C, h, w)`): SAM image keys (reusable across instructions on the same image).
        instance_limits (`(B,)` long, *optional*): with ``config.limit_instances_to_answer``, the most slots the
            prediction keeps: how many objects the answer names (-1: no answer list, no limit); pass
            ``instance_limit(instance_limits[b])`` as ``max_instances`` to :func:`segcompass.prediction.keep_and_union`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    heatmap_logits: torch.FloatTensor | None = None
    confidence_logits: torch.FloatTensor | None = None
    mask_logits: torch.FloatTensor | None = None
    iou_scores: torch.FloatTensor | None = None
    concept_indices: torch.LongTensor | None = None
    concept_values: torch.FloatTensor | None = None
    concept_mask: torch.BoolTensor | None = None
    slot_concept_attention: torch.FloatTensor | None = None
    concept_token_activations: torch.FloatTensor | None = None
    slot_embeddings: torch.FloatTensor | None = None
    concept_slots: torch.FloatTensor | None = None
    image_embeddings: torch.FloatTensor | None = None
    instance_limits: torch.LongTensor | None = None


@dataclass
class SegCompassSegmentationOutput(ModelOutput):
    """Output of [`SegCompassForReasoningSegmentation.segment`] (batch-first tensors, lists per sample).

    Args:
        sequences (`(B, T')`): the sequences that were scored (prompt + completion + <REF_POS> + slot tokens).
        completion_ids (list of `(t_b,)`): the generated tokens of each sample (up to and including <REF_POS>).
        malformed (`(B,)` bool): True where the completion had no <REF_POS> and one was appended.
        confidences (`(B, K)`): σ(c_k).
        masks (list of `(K, H_b, W_b)` bool): per-slot masks at each original image size (when sizes are given).
        heatmaps (list of `(K, H_b, W_b)` float): per-slot heatmap probabilities at the original size.
        outputs: the full [`SegCompassOutput`] of the scoring forward.
    """

    sequences: torch.LongTensor | None = None
    completion_ids: list | None = None
    malformed: torch.BoolTensor | None = None
    confidences: torch.FloatTensor | None = None
    masks: list | None = None
    heatmaps: list | None = None
    outputs: SegCompassOutput | None = None


SegCompassSegmentation = SegCompassSegmentationOutput
"""Former name of :class:`SegCompassSegmentationOutput` (kept so existing imports keep working)."""
