"""The prediction rule of SegCompass, in one place: keep the slots whose confidence passes the threshold, take the
union of their masks; no slot kept means "no target" (the LISA / gRefCOCO protocol's empty prediction). With a
``duplicate_iou`` (``SegCompassConfig.duplicate_iou``; None, the paper, turns it off) a kept slot whose mask overlaps a
more confident kept slot's mask with IoU >= ``duplicate_iou`` is dropped as a second copy of the same instance
(:func:`drop_duplicate_slots`), so the instances are distinct objects; the union changes only by the copy's pixels
outside the kept mask. With a ``max_instances`` (``SegCompassConfig.limit_instances_to_answer``: how many objects the
answer names, the model's ``outputs.instance_limits``) only that many of the remaining slots are kept, the most
confident first.

Every consumer calls these two functions: the pipeline, the evaluation runner (records and re-scoring), the recipe's
scoring, the GRPO trainer's logged rollout IoU, the mask reward (which keeps the same slots at the model's threshold
and scores the soft IoU of their union; :mod:`segcompass.training.reward_scores`) and the interpretability analyses. The comparison is ``float64(confidence) >= float64(threshold)``, so a
float32 tensor, a numpy array and a list of Python floats all give the same decision.

A leaf module (numpy and torch only).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["check_duplicate_iou", "drop_duplicate_slots", "instance_limit", "keep_and_union", "kept_instances",
           "kept_slots", "slot_concepts"]


def _float64_list(confidences: Any) -> list[float]:
    """``(K,)`` confidences (tensor, array or sequence) as Python floats, compared in float64 whatever their type."""
    if isinstance(confidences, torch.Tensor):
        return confidences.detach().to("cpu", torch.float64).reshape(-1).tolist()
    return np.asarray(confidences, dtype=np.float64).reshape(-1).tolist()


def kept_slots(confidences: Any, threshold: float) -> list[int]:
    """Indices ``k`` (ascending) of the slots with ``confidence_k >= threshold``.

    Args:
        confidences: ``(K,)`` slot confidence *probabilities* (σ(c_k)): a tensor, array or sequence of floats.
        threshold: probability in [0, 1].
    """
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"The confidence threshold is a probability in [0, 1], got {threshold}.")
    values = _float64_list(confidences)
    bad = [k for k, value in enumerate(values) if not 0.0 <= value <= 1.0]  # NaN fails both comparisons
    if bad:
        raise ValueError(
            f"Slot confidences must be probabilities in [0, 1]; slot(s) {bad} hold {[values[k] for k in bad]}. Pass "
            "sigmoid(confidence_logits), and check the model's weights if they are NaN."
        )
    return [k for k, value in enumerate(values) if value >= threshold]


def check_duplicate_iou(duplicate_iou: Any) -> float | None:
    """``duplicate_iou`` as a float, or None (every slot past the threshold is an instance: the paper); anything but
    None or an IoU in (0, 1] is a ValueError naming it. The one check of the model config, the recipe config and the
    rewards."""
    if duplicate_iou is None:
        return None
    is_number = isinstance(duplicate_iou, (int, float)) and not isinstance(duplicate_iou, bool)
    if not is_number or not 0.0 < duplicate_iou <= 1.0:
        raise ValueError(f"`duplicate_iou` must be None (keep every slot past the threshold, the paper) or an IoU in "
                         f"(0, 1], got {duplicate_iou!r}; the model's is `config.duplicate_iou`.")
    return float(duplicate_iou)


def drop_duplicate_slots(masks: Any, confidences: Any, kept: list[int], duplicate_iou: float) -> list[int]:
    """``kept`` (ascending) without the slots that copy a more confident kept slot.

    Slots are visited by confidence, highest first (ties: lower index first); one whose mask has IoU >=
    ``duplicate_iou`` with a slot already retained is dropped.

    Args:
        masks: ``(K, H, W)`` bool masks (numpy or torch).
        confidences: ``(K,)`` confidence probabilities.
        kept: slot indices already past the threshold (:func:`kept_slots`).
        duplicate_iou: IoU in (0, 1] at which two masks count as one instance.
    """
    if check_duplicate_iou(duplicate_iou) is None:
        raise ValueError("`duplicate_iou` is None: there is no duplicate rule to apply; call kept_instances instead.")
    if len(kept) < 2:
        return list(kept)
    if isinstance(masks, torch.Tensor):
        flat = masks.detach().to("cpu", torch.bool).reshape(masks.shape[0], -1).numpy()  # (K, H*W)
    else:
        flat = np.asarray(masks, dtype=bool).reshape(len(masks), -1)  # (K, H*W)
    scores = _float64_list(confidences)

    def iou(a: int, b: int) -> float:
        union = np.count_nonzero(flat[a] | flat[b])
        return np.count_nonzero(flat[a] & flat[b]) / union if union else 0.0

    retained: list[int] = []
    for k in sorted(kept, key=lambda j: (-scores[j], j)):
        if all(iou(k, r) < duplicate_iou for r in retained):
            retained.append(k)
    return sorted(retained)


def _is_count(value: Any) -> bool:
    """An int (Python or numpy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def instance_limit(limits: Any, index: int | None = None) -> int | None:
    """One sample's ``max_instances``: ``limits[index]`` of the model's ``outputs.instance_limits`` (``(B,)``, or None
    when ``config.limit_instances_to_answer`` is off), or ``limits`` itself (an int, a one-element tensor or None) when
    ``index`` is None. None (no limit) for None or a negative count (the answer had no list), else the count."""
    if limits is None:
        return None
    value = limits[index] if index is not None else limits
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"An instance limit is one count per sample, got a tensor of shape {tuple(value.shape)}; "
                             "pass outputs.instance_limits and the sample's index.")
        value = value.item()
    if not _is_count(value):
        raise ValueError(f"An instance limit must be an int or None, got {value!r}.")
    return None if value < 0 else int(value)


def kept_instances(masks: Any, confidences: Any, threshold: float, duplicate_iou: float | None = None,
                   max_instances: int | None = None) -> list[int]:
    """The slots the prediction keeps, ascending: confidence ≥ ``threshold`` (:func:`kept_slots`), less the copies of
    a more confident kept slot when ``duplicate_iou`` is given (:func:`drop_duplicate_slots`), then at most
    ``max_instances`` of them, the most confident first (ties: lower index first; None: no limit, 0: none).
    ``masks``: ``(K, H, W)`` bool (read only with ``duplicate_iou``)."""
    kept = kept_slots(confidences, threshold)
    if duplicate_iou is not None:
        kept = drop_duplicate_slots(masks, confidences, kept, duplicate_iou)
    if max_instances is not None:
        if not _is_count(max_instances) or max_instances < 0:
            raise ValueError(f"`max_instances` must be None (no limit) or an int >= 0, got {max_instances!r}; "
                             "convert outputs.instance_limits[b] with segcompass.prediction.instance_limit.")
        scores = _float64_list(confidences)
        kept = sorted(sorted(kept, key=lambda j: (-scores[j], j))[:int(max_instances)])
    return kept


def keep_and_union(masks: Any, confidences: Any, threshold: float, shape: tuple[int, int] | None = None,
                   duplicate_iou: float | None = None, max_instances: int | None = None) -> tuple[Any, list[int]]:
    """The prediction of one sample: the union of the kept slots' masks, and the kept slot indices.

    Args:
        masks: ``(K, H, W)`` bool masks (a numpy array or a torch tensor; threshold logits or probabilities before).
        confidences: ``(K,)`` confidence probabilities (see :func:`kept_slots`).
        threshold: keep threshold.
        shape: ``(H, W)`` of the empty prediction when ``K == 0`` (default ``masks.shape[1:]``).
        duplicate_iou: drop kept slots that copy a more confident kept one (:func:`drop_duplicate_slots`); None
            (default) keeps every slot past the threshold.
        max_instances: keep at most this many, the most confident first (:func:`kept_instances`); None (default):
            no limit.

    Returns:
        ``(mask, kept)``: ``mask`` ``(H, W)`` bool of the same array type as ``masks`` (all False when no slot is
        kept), ``kept`` the list of kept slot indices.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be (slots, H, W), got shape {tuple(masks.shape)}.")
    if len(confidences) != masks.shape[0]:
        raise ValueError(f"Got {masks.shape[0]} slot masks but {len(confidences)} confidences; pass one per slot.")
    kept = kept_instances(masks, confidences, threshold, duplicate_iou, max_instances)
    size = tuple(shape) if shape is not None else tuple(masks.shape[1:])
    if isinstance(masks, torch.Tensor):
        if kept:
            return masks[kept].bool().any(0), kept  # (H, W)
        return torch.zeros(size, dtype=torch.bool, device=masks.device), kept
    masks = np.asarray(masks)
    if kept:
        return masks[kept].astype(bool).any(0), kept  # (H, W)
    return np.zeros(size, dtype=bool), kept


def slot_concepts(attention: torch.Tensor, concept_mask: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
                  top: int, label=None) -> list[dict]:
    """The ``top`` concepts one slot drew on most, by its concept-attention weight (what the pipeline, the app and
    the explain panels show for a slot).

    Args:
        attention: ``(N,)`` the slot's attention over the N concept tokens (``slot_concept_attention[b, k]``).
        concept_mask: ``(N,)`` bool, which concept tokens are real (``concept_mask[b]``).
        indices, values: ``(N,)`` SAE feature ids and pooled activations of the concept tokens.
        top: how many to return (at most the number of real concepts the slot attends to).
        label: optional ``feature id -> str | None`` (e.g. ``model.sae.feature_label``).

    Returns:
        ``[{"feature", "activation", "weight", "label"}]``, highest weight first.
    """
    weights = attention.detach().float().cpu()  # (N,)
    # a concept the slot gives no attention at all is not its own (another slot's item under
    # ``concept_grouping="answer_items"``; a softmax weight over a real concept is never exactly 0 otherwise)
    valid = concept_mask.detach().cpu().bool() & (weights > 0)  # (N,)
    indices, values = indices.detach().cpu(), values.detach().float().cpu()
    order = weights.masked_fill(~valid, -1.0).argsort(descending=True)[: min(int(top), int(valid.sum()))]
    return [{"feature": int(indices[j]), "activation": float(values[j]), "weight": float(weights[j]),
             "label": label(int(indices[j])) if label is not None else None} for j in order.tolist()]
