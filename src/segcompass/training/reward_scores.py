"""Scores of one GRPO rollout (paper §3.3, §4.1 and appendix B.3): the mask score, the combined reward and the
rollout IoU the trainer logs. Plain tensors in, floats out; the TRL adapters are in :mod:`.rewards`.

"Soft IoU" everywhere is ``Σ p·g / (Σ p + Σ g − Σ p·g)`` over pixels, with ``p`` the predicted probabilities and
``g`` the (possibly soft) ground truth; two all-zero maps score 1. See :mod:`segcompass.training.matching`. The keep
rule of the confident slots is :func:`segcompass.prediction.kept_instances` (probability ≥ threshold, less the copies
of a more confident slot under ``duplicate_iou``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from ..prediction import keep_and_union, kept_instances
from .matching import hungarian_match, pairwise_soft_iou

__all__ = [
    "MULTI_OBJECT_RULES",
    "combined_reward_score",
    "mask_reward_score",
    "mask_stack",
    "resolve_multi_object_rule",
    "rollout_iou",
    "soft_union",
]


def _as_float_tensor(x: Any, name: str, what: str = "tensor") -> torch.Tensor:
    if x is None:
        raise ValueError(f"`{name}` is None; pass a {what}.")
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise ValueError(f"`{name}` has dtype {x.dtype}; pass real probabilities (float; bool for binary masks).")
        return x.detach().float()
    if isinstance(x, (str, bytes)) or (isinstance(x, np.ndarray) and x.dtype.kind not in "biuf"):
        kind = type(x).__name__ if not isinstance(x, np.ndarray) else f"an array of dtype {x.dtype}"
        raise ValueError(f"`{name}` must be a tensor, numpy array or nested list of numbers, got {kind}.")
    try:
        array = np.asarray(x)
        if array.dtype.kind not in "biuf":
            raise ValueError(f"dtype {array.dtype}")
        return torch.as_tensor(array.astype(np.float32))
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must be a tensor, numpy array or nested list of numbers: {err}") from None


def mask_stack(x: Any, name: str, count: str = "K") -> torch.Tensor:
    """A stack of masks ``(N, H, W)`` (``(H, W)`` gets N = 1) as a float32 tensor, from a tensor (detached), an
    array or nested lists; ``name`` and ``count`` (the letter of N) only word the errors."""
    stack = _as_float_tensor(x, name, f"({count}, H, W) probability tensor")
    if stack.dim() == 2:
        stack = stack.unsqueeze(0)  # (1, H, W)
    if stack.dim() != 3:
        raise ValueError(f"`{name}` must have shape ({count}, H, W) or (H, W), got {tuple(stack.shape)}.")
    if stack.shape[-1] == 0 or stack.shape[-2] == 0:
        raise ValueError(f"`{name}` has no pixels (H, W) = {tuple(stack.shape[-2:])}; masks need at least one pixel.")
    return stack


def _check_unit_range(x: torch.Tensor, name: str, fix: str) -> None:
    if x.numel() == 0:
        return
    nans = int(torch.isnan(x).sum())
    if nans:
        raise ValueError(f"`{name}` contains {nans} NaN value(s); values must lie in [0, 1]. {fix}")
    low, high = torch.aminmax(x)
    if bool(torch.isnan(low)) or bool(low < 0) or bool(high > 1):
        raise ValueError(f"`{name}` must hold values in [0, 1], got [{float(low):g}, {float(high):g}]. {fix}")


MultiObjectRule = Literal["union", "max", "matched"]
MULTI_OBJECT_RULES: tuple[str, ...] = ("union", "max", "matched")


def resolve_multi_object_rule(multi_object_rule: str | None, denominator: str | None) -> str:
    """The multi-object rule from ``multi_object_rule`` and its legacy spelling ``denominator`` (``"matched"`` /
    ``"max"``: the Hungarian rule with that denominator). Default ``"union"``.

    Raises:
        ValueError: an unknown value, or the two arguments naming different rules.
    """
    if multi_object_rule is not None and multi_object_rule not in MULTI_OBJECT_RULES:
        raise ValueError(f"`multi_object_rule` must be one of {MULTI_OBJECT_RULES}, got {multi_object_rule!r}.")
    if denominator is not None and denominator not in ("matched", "max"):
        raise ValueError(
            f"`denominator` must be 'matched' or 'max', got {denominator!r}; or pass "
            f"multi_object_rule='union' (the default) instead."
        )
    if multi_object_rule is not None and denominator is not None and multi_object_rule != denominator:
        raise ValueError(
            f"`multi_object_rule={multi_object_rule!r}` and `denominator={denominator!r}` name different rules; "
            "pass only multi_object_rule ('union', 'max' or 'matched')."
        )
    return multi_object_rule or denominator or "union"


def soft_union(stack: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)`` probabilities -> ``(1, H, W)``: the pixelwise maximum (all zeros when N = 0).

    The maximum keeps the evaluation's decision exactly: ``max_k p_k > 0.5`` iff some slot's mask ``p_k > 0.5``,
    i.e. the union :func:`segcompass.prediction.keep_and_union` takes of the binarised slots (a probabilistic OR,
    ``1 - Π(1 - p_k)``, would turn two 0.4 pixels into a predicted 0.64)."""
    if stack.shape[0] == 0:
        return torch.zeros((1, *stack.shape[-2:]), dtype=stack.dtype, device=stack.device)
    return stack.amax(0, keepdim=True)


def mask_reward_score(
    pred_probs: torch.Tensor | np.ndarray,
    confidences: torch.Tensor | np.ndarray | Sequence[float] | None,
    gt_masks: torch.Tensor | np.ndarray,
    *,
    confidence_threshold: float = 0.5,
    multi_object: bool | None = None,
    multi_object_rule: MultiObjectRule | None = None,
    denominator: Literal["matched", "max"] | None = None,
    duplicate_iou: float | None = None,
    max_instances: int | None = None,
) -> float:
    """Mask score of one response in ``[0, 1]`` (paper appendix B.3, chosen to rank like the evaluation).

    The kept slots are those with confidence ≥ ``confidence_threshold`` (all K when ``confidences`` is None), less
    those whose binarised mask copies a more confident kept slot's (IoU ≥ ``duplicate_iou``, when given and
    confidences are), K' of them: the slots :func:`segcompass.prediction.keep_and_union` turns into the prediction
    at evaluation. Pass the model's ``config.confidence_threshold`` and ``config.duplicate_iou``; 0.5 and None are
    only ``SegCompassConfig``'s defaults.

    * Single object (the sample has one target, G = 1, with ``multi_object`` None; or ``multi_object=False``): soft
      IoU of the soft union (pixelwise max) of the kept slots with the instance; no matching. With K = 1 and no
      confidences this is the paper's rule literally; with K > 1 the union is what evaluation scores, so an extra
      confident slot lowers the score exactly as it lowers gIoU / cIoU, and no slot kept scores 0. G = 0 with
      ``multi_object=False`` is scored against an empty mask.
    * Multi object (G = 0 or G ≥ 2 with ``multi_object`` None; or ``multi_object=True``): K' = 0 and G = 0 → 1.0;
      exactly one of them 0 → 0.0 (paper). Else, by ``multi_object_rule``:

      - ``"union"`` (default): soft IoU of the soft union of the kept slots with the union of the instances, the
        soft form of the sample's gIoU (its IoU of the unions), so it ranks completions as gIoU and cIoU do:
        false-positive pixels from an extra slot and a missed instance both lower it, a duplicate slot on an
        already covered instance does not (the union, and the metric, are unchanged).
      - ``"max"`` (the authors' code): Hungarian assignment maximising the total soft IoU of the (K', G) matrix,
        Σ matched IoU / max(K', G); unmatched slots and instances cost reward, but a duplicate slot costs a whole
        share (an exact duplicate leaves gIoU unchanged) and a tiny spurious slot costs as much as a large one.
      - ``"matched"`` (the paper's B.3 literally): Σ matched IoU / min(K', G), the mean over matched pairs; extra
        confident slots and missed instances cost nothing.

    Args:
        pred_probs (`(K, H, W)` or `(H, W)`): slot mask probabilities in ``[0, 1]``.
        confidences (`(K,)` or None): slot confidence probabilities in ``[0, 1]`` (apply sigmoid to logits).
        gt_masks (`(G, H, W)` or `(H, W)`): ground truth in ``[0, 1]`` on the prediction grid; G may be 0.
        confidence_threshold: keep threshold on the confidence probability (the model's
            ``config.confidence_threshold``).
        multi_object: force the single- (False) or multi-object (True) rule; None chooses by G as above.
        multi_object_rule: ``"union"`` (default), ``"max"`` or ``"matched"``.
        denominator: legacy spelling of ``multi_object_rule="matched"`` / ``"max"``.
        duplicate_iou: drop kept slots that copy a more confident kept one
            (:func:`segcompass.prediction.drop_duplicate_slots`); None keeps them (the paper).
        max_instances: keep at most this many kept slots, the most confident first (the model's
            ``outputs.instance_limits`` under ``config.limit_instances_to_answer``); None: no limit.

    Example:
        >>> p = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])    # one slot covering the top row
        >>> g = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])    # one instance: the top-left pixel
        >>> mask_reward_score(p, None, g)
        0.5
    """
    rule = resolve_multi_object_rule(multi_object_rule, denominator)
    if multi_object is not None and not isinstance(multi_object, bool):
        raise ValueError(f"`multi_object` must be None, True or False, got {multi_object!r}.")
    if not _is_number(confidence_threshold) or not 0.0 <= confidence_threshold <= 1.0:
        raise ValueError(
            f"`confidence_threshold` is a probability threshold in [0, 1], got {confidence_threshold!r}. "
            "(The authors' code compared logits with 0.5; the equivalent probability threshold is "
            "sigmoid(0.5) ≈ 0.622.)"
        )
    pred = mask_stack(pred_probs, "pred_probs", "K")  # (K, H, W)
    _check_unit_range(pred, "pred_probs", "Pass probabilities (sigmoid of the mask logits), not logits.")
    num_slots = pred.shape[0]
    if gt_masks is None:
        raise ValueError("`gt_masks` is None; pass a (G, H, W) tensor of the ground truth (G = 0 for no target).")
    gt = mask_stack(gt_masks, "gt_masks", "G").to(pred.device)  # (G, H, W)
    if gt.shape[-2:] != pred.shape[-2:]:
        raise ValueError(
            f"`gt_masks` has spatial size {tuple(gt.shape[-2:])} but `pred_probs` is {tuple(pred.shape[-2:])}. "
            "Resize the ground truth to the prediction grid (segcompass.training.targets.masks_on_grid); the TRL "
            "adapter mask_reward does this for you."
        )
    _check_unit_range(
        gt, "gt_masks", "Ground truth must be binary or soft masks; convert 0/255 images with `mask != 0`."
    )
    num_gt = gt.shape[0]
    conf: torch.Tensor | None = None
    if confidences is not None:
        conf = _as_float_tensor(confidences, "confidences").reshape(-1).to(pred.device)  # (K,)
        if conf.numel() != num_slots:
            raise ValueError(f"`confidences` has {conf.numel()} values but `pred_probs` has K = {num_slots} slots.")
        _check_unit_range(conf, "confidences", "Pass probabilities: apply sigmoid to confidence logits.")
    kept = pred  # (K', H, W): every slot without confidences, else the slots the prediction keeps
    if conf is not None:
        kept = pred[kept_instances(pred > 0.5, conf, confidence_threshold, duplicate_iou, max_instances)]
    num_kept = kept.shape[0]

    single = multi_object is False or (multi_object is None and num_gt == 1)
    if single:
        if num_gt > 1:
            raise ValueError(
                f"`multi_object=False` needs at most one ground-truth mask, got G = {num_gt}. Use multi_object=True "
                "(or None) for multi-instance samples."
            )
        target = gt if num_gt == 1 else pred.new_zeros((1, *pred.shape[-2:]))  # (1, H, W)
        return float(pairwise_soft_iou(soft_union(kept), target)[0, 0])

    if num_kept == 0 and num_gt == 0:
        return 1.0
    if num_kept == 0 or num_gt == 0:
        return 0.0
    if rule == "union":
        return float(pairwise_soft_iou(soft_union(kept), soft_union(gt))[0, 0])
    iou = pairwise_soft_iou(kept, gt)  # (K', G)
    rows, cols = hungarian_match(iou)
    total = float(iou.cpu()[rows, cols].sum())
    count = len(rows) if rule == "matched" else max(num_kept, num_gt)
    return total / count


def combined_reward_score(
    format_score: float, mask_score: float, *, format_weight: float = 0.3, mask_weight: float = 0.7
) -> float:
    """``format_weight · format_score + mask_weight · mask_score`` (paper: 0.3 and 0.7).

    Both scores must be numbers in ``[0, 1]`` and both weights finite and non-negative; anything else (NaN, a score
    above 1, a string) raises a ValueError naming it rather than giving the policy a meaningless reward.

    Example:
        >>> round(combined_reward_score(0.9, 0.5), 6)
        0.62
    """
    for name, value in (("format_score", format_score), ("mask_score", mask_score)):
        if not _is_number(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}.")
    for name, value in (("format_weight", format_weight), ("mask_weight", mask_weight)):
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
    return format_weight * format_score + mask_weight * mask_score


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def rollout_iou(pred_probs: torch.Tensor, confidences: torch.Tensor, gt: torch.Tensor, threshold: float = 0.5,
                valid: torch.Tensor | None = None, duplicate_iou: float | None = None,
                max_instances: int | None = None) -> float:
    """IoU of one rollout: union of the slots with confidence ≥ ``threshold`` (pixels > 0.5; copies of a more
    confident slot dropped at ``duplicate_iou``, at most ``max_instances`` kept) vs the union of the ground-truth
    instances (≥ 0.5); both empty = 1.
    The GRPO trainer logs its mean as ``seg/rollout_iou``.

    Args:
        pred_probs (`(K, m, m)`), confidences (`(K,)`), gt (`(G, m, m)`), valid (`(m, m)` bool, optional).

    Raises:
        ValueError: a ground truth or ``valid`` of another size than the slots, or confidences that are not
            probabilities (NaN, outside [0, 1]).
    """
    if gt.dim() != 3 or pred_probs.dim() != 3 or gt.shape[-2:] != pred_probs.shape[-2:]:
        raise ValueError(
            f"`gt` has spatial size {tuple(gt.shape[-2:])} but `pred_probs` is {tuple(pred_probs.shape[-2:])} (need "
            "(G, m, m) and (K, m, m)); put the ground truth on the prediction grid (targets.masks_on_grid)."
        )
    if valid is not None and tuple(valid.shape) != tuple(pred_probs.shape[-2:]):
        raise ValueError(f"`valid` has shape {tuple(valid.shape)} but the masks are {tuple(pred_probs.shape[-2:])}.")
    _check_unit_range(_as_float_tensor(confidences, "confidences").reshape(-1), "confidences",
                      "Pass probabilities: apply sigmoid to confidence logits.")
    pred, _ = keep_and_union(pred_probs > 0.5, confidences, threshold, duplicate_iou=duplicate_iou,
                             max_instances=max_instances)  # (m, m) bool
    target = (gt >= 0.5).any(0) if gt.shape[0] else torch.zeros_like(pred)
    if valid is not None:
        pred, target = pred & valid, target & valid
    union = (pred | target).sum()
    if int(union) == 0:
        return 1.0
    return float((pred & target).sum()) / float(union)
