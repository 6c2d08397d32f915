"""Supervised segmentation losses of SegCompass (paper §3.3, eq. 6).

    L     = λ_s · L_seg + λ_c · L_conf                      (added to L_grpo by the trainer)
    L_seg = BCE(heatmaps H_k, M_gt) + λ_d · dice(masks M̂, M_gt)        on Hungarian-matched pairs only
            [+ λ_m · BCE(mask logits M̂_k, M_gt), off in the paper: ``lambda_mask_bce``]
    L_conf = (1/K) Σ_k BCE(c_k, y_k),   y_k = 1 if slot k is matched to a ground-truth instance, else 0
                                        (or, with ``confidence_targets="mask_iou"``, y_k = max_g IoU(M̂_k, M_g))

Paper defaults: λ_s = 1.0, λ_c = 0.2, λ_d = 0.6.

Choices where the paper is silent (each is a keyword argument or documented below):

* **Matching** uses the detached heatmap probabilities σ(H_k) (the authors' choice; ``matching_source="mask"``
  matches on the decoder masks instead), cost ``1 − soft IoU``, restricted to ``valid_mask`` when one is given
  (the authors' code matches on the unmasked grid although its losses are masked; that is not copied).
* **Reduction:** BCE is the mean over (valid) pixels of each matched pair; BCE and dice are then averaged over
  all matched pairs of the batch, so every matched instance weighs the same, and a sample with three targets
  contributes three pairs. Samples without targets (G = 0) add no pairs: they do **not** add zeros to the mean
  (the authors' code does, which silently down-weights the mask losses by the no-target fraction).
  L_conf is the mean over the B·K slots: (1/K)Σ_k per sample, then the mean over samples.
* **Dice** is the soft dice of the decoder probabilities σ(M̂_k) with the target,
  ``1 − (2 Σ p·g + s) / (Σ p + Σ g + s)`` with smoothing ``s = dice_smooth = 1`` (the DETR/SAM convention; the paper
  cites V-Net [36] without giving the form). ``dice_smooth=0`` gives the authors' unsmoothed form.
* **Confidence targets** (``confidence_targets``): ``"matched"`` (the paper) is 1 for the slots the Hungarian
  matching picked. ``"mask_iou"`` is, for every slot, the IoU of its binarised decoder mask (logit > 0, detached)
  with the ground-truth instance it overlaps most (0 when the sample has no target): a soft target that says how
  good the slot's mask is, whether or not the one-to-one matching picked it. Keeping the slots above a confidence
  threshold then keeps every slot whose mask lies on a target; with "matched", which of two slots on one object
  gets the 1 is the matching's choice, which a per-slot head cannot see. ``"assigned_iou"`` keeps the IoU but gives
  it to one slot per instance: the slots are assigned one-to-one to the instances by the largest total IoU of the
  binarised masks, an assigned slot's target is its IoU and every other slot's is 0, so a second, worse slot on an
  instance that another slot covers better is taught to stay below it (for a head that sees the other slots, e.g.
  :class:`~segcompass.modules.mask_confidence.MaskConfidenceHead`).
* **No matched pair in the batch** (all samples have G = 0): ``bce = dice = 0`` exactly, kept attached to the
  graph as ``0 · Σ logits`` so heatmap and mask parameters receive zero (not missing) gradients, which distributed
  data parallel needs; only the confidences get a training signal.
* **Targets** must already be on the prediction grid (``resize_masks`` does that) and lie in ``[0, 1]``; soft
  targets are fine. Everything is computed in float32.

Dimension names: B samples, K slots, G_b instances of sample b, H×W grid, M = Σ_b min(K, G_b) matched pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .matching import SlotMatching, hungarian_match, match_slots_batched

__all__ = [
    "CONFIDENCE_TARGETS",
    "MATCHING_SOURCES",
    "SegmentationLossOutput",
    "check_loss_option",
    "confidence_targets_for",
    "dice_loss",
    "instance_snap_loss",
    "segmentation_losses",
]

MATCHING_SOURCES = ("heatmap", "mask")
"""What the Hungarian matching compares with the ground truth (``segmentation_losses(matching_source=...)``)."""
CONFIDENCE_TARGETS = ("matched", "mask_iou", "assigned_iou")
"""The confidence BCE's targets (``segmentation_losses(confidence_targets=...)``)."""
_OPTION_CHOICES = {"matching_source": MATCHING_SOURCES, "confidence_targets": CONFIDENCE_TARGETS}


def check_loss_option(name: str, value: str, option: str | None = None) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a valid ``segmentation_losses`` ``option`` (default:
    ``name`` itself; e.g. the recipe's ``concept_matching_source`` is a ``matching_source``)."""
    choices = _OPTION_CHOICES[option or name]
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")

# ----------------------------------------------------------------------------------------------- losses
def dice_loss(
    probs: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    smooth: float = 1.0,
) -> torch.Tensor:
    """Soft dice loss per map: ``1 − (2 Σ w·p·g + s) / (Σ w·p + Σ w·g + s)``.

    Args:
        probs (`torch.Tensor` of shape `(M, H, W)`): probabilities.
        targets (`torch.Tensor` of shape `(M, H, W)`): targets in ``[0, 1]``.
        weights (`torch.Tensor` of shape `(M, H, W)`, *optional*): pixel weights (valid region).
        smooth: additive smoothing ``s >= 0``; the denominator is floored at 1e-6 so ``s = 0`` stays finite.

    Returns:
        `torch.Tensor` of shape `(M,)`: one loss per map.
    """
    if weights is not None:
        probs = probs * weights
        targets = targets * weights
    inter = (probs * targets).sum((-2, -1))  # (M,)
    denom = probs.sum((-2, -1)) + targets.sum((-2, -1))  # (M,)
    return 1.0 - (2.0 * inter + smooth) / (denom + smooth).clamp_min(1e-6)


@dataclass
class SegmentationLossOutput:
    """What :func:`segmentation_losses` returns. Every loss is a 0-d float32 tensor attached to the graph.

    Attributes:
        loss: ``λ_s · seg + λ_c · conf``, the term the trainer adds to the policy loss.
        seg: ``bce + λ_d · dice``.
        bce: heatmap BCE, mean over matched pairs (0 when there is none).
        dice: decoder-mask dice loss, mean over matched pairs (0 when there is none).
        conf: confidence BCE, mean over the B·K slots.
        matching: the :class:`SlotMatching` used for all terms.
        confidence_targets (`(B, K)`): the binary targets y.
        matched_iou: mean soft IoU of the matched pairs on the maps used for matching (detached; ``None`` when
            there is no matched pair).
        num_matched: number of matched pairs M.
    """

    loss: torch.Tensor
    seg: torch.Tensor
    bce: torch.Tensor
    dice: torch.Tensor
    conf: torch.Tensor
    matching: SlotMatching
    confidence_targets: torch.Tensor
    matched_iou: torch.Tensor | None
    num_matched: int

    def metrics(self) -> dict[str, float]:
        """Detached scalars for logging (``matched_iou`` is left out when there is no matched pair)."""
        out = {name: float(getattr(self, name).detach()) for name in ("loss", "seg", "bce", "dice", "conf")}
        if self.matched_iou is not None:
            out["matched_iou"] = float(self.matched_iou)
        out["num_matched"] = float(self.num_matched)
        return out


def _check_targets(gt_masks: Sequence[torch.Tensor], batch: int, height: int, width: int,
                   name: str = "gt_masks") -> None:
    if len(gt_masks) != batch:
        raise ValueError(
            f"`{name}` has {len(gt_masks)} entries but the logits have batch size {batch}; pass one (G_b, H, W) "
            "tensor per sample (shape (0, H, W) for a sample without targets)."
        )
    for b, gt in enumerate(gt_masks):
        if not isinstance(gt, torch.Tensor):
            raise ValueError(f"{name}[{b}] must be a torch.Tensor of shape (G, H, W), got {type(gt).__name__}.")
        if gt.dim() != 3:
            raise ValueError(
                f"{name}[{b}] must have shape (G, H, W), got {tuple(gt.shape)}. Stack a sample's instances along "
                "dim 0 (use shape (0, H, W) when it has none)."
            )
        if tuple(gt.shape[-2:]) != (height, width):
            raise ValueError(
                f"{name}[{b}] has spatial size {tuple(gt.shape[-2:])} but the predicted maps are {(height, width)}. "
                f"Resize the ground truth to the prediction grid first: "
                f"segcompass.training.resize_masks(masks, ({height}, {width})) "
                "(letterbox=True for SAM's padded frame)."
            )


_MASK_VALUES_HINT = " Convert 0/255 images with `mask != 0` and probabilities from logits with sigmoid."


def _check_unit_interval(values: torch.Tensor, what: str, hint: str = "") -> None:
    """Raise ``ValueError`` ("{what} in [0, 1], got values in [low, high].{hint}") unless every value (NaN fails) lies
    in ``[0, 1]``; an empty tensor passes."""
    if values.numel():
        low, high = torch.aminmax(values)
        if bool(low < 0) or bool(high > 1) or bool(torch.isnan(low)):
            raise ValueError(f"{what} in [0, 1], got values in [{float(low):g}, {float(high):g}].{hint}")


def _valid_weights(valid_mask: torch.Tensor | None, batch: int, height: int, width: int,
                   device: torch.device) -> torch.Tensor | None:
    """``valid_mask`` (B, H, W) checked (shape, values in ``[0, 1]``, a valid pixel in every sample) as float32 pixel
    weights on ``device``; None stays None."""
    if valid_mask is None:
        return None
    if valid_mask.shape != (batch, height, width):
        raise ValueError(
            f"`valid_mask` must have shape (B, H, W) = {(batch, height, width)}, got {tuple(valid_mask.shape)}."
        )
    weights = valid_mask.to(device=device, dtype=torch.float32)  # (B, H, W)
    _check_unit_interval(weights, "`valid_mask` must be bool or pixel weights")
    if bool((weights.sum((-2, -1)) <= 0).any()):
        raise ValueError("`valid_mask` has a sample with no valid pixel; every sample needs at least one.")
    return weights


def _hard_ious(mask_logits: torch.Tensor, gts: Sequence[torch.Tensor],
               weights: torch.Tensor | None) -> list[torch.Tensor]:
    """IoU of every slot's binarised mask (logit > 0, detached) with every instance: (B, K, H, W), B × (G_b, H, W)
    -> B × (K, G_b) (0 where both are empty; pixels with weight 0 left out)."""
    hard = (mask_logits.detach() > 0).float()  # (B, K, H, W)
    if weights is not None:
        hard = hard * (weights > 0).unsqueeze(1)
    ious = []
    for b, gt in enumerate(gts):
        pred, target = hard[b].flatten(1), (gt > 0.5).float().flatten(1)  # (K, H*W), (G, H*W)
        if weights is not None:
            target = target * (weights[b] > 0).flatten()
        inter = pred @ target.T  # (K, G)
        union = pred.sum(-1, keepdim=True) + target.sum(-1) - inter  # (K, G)
        ious.append(inter / union.clamp_min(1.0))  # (K, G)
    return ious


def _best_overlap(mask_logits: torch.Tensor, gts: Sequence[torch.Tensor],
                  weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each slot's best IoU with an instance and that instance's row: binarised masks (B, K, H, W) (logit > 0,
    detached), B × (G_b, H, W) -> IoU (B, K) float and index (B, K) long (0 where the sample has no instance)."""
    best = mask_logits.new_zeros(mask_logits.shape[:2], dtype=torch.float32)  # (B, K)
    index = torch.zeros(mask_logits.shape[:2], dtype=torch.long, device=mask_logits.device)  # (B, K)
    for b, iou in enumerate(_hard_ious(mask_logits, gts, weights)):
        if iou.shape[1]:
            best[b], index[b] = iou.max(-1)  # (K,)
    return best, index


def _mask_iou_targets(mask_logits: torch.Tensor, gts: Sequence[torch.Tensor],
                      weights: torch.Tensor | None) -> torch.Tensor:
    """Each slot's best IoU with a ground-truth instance: binarised masks (B, K, H, W), B × (G_b, H, W) -> (B, K)."""
    return _best_overlap(mask_logits, gts, weights)[0]


def _assigned_iou_targets(mask_logits: torch.Tensor, gts: Sequence[torch.Tensor],
                          weights: torch.Tensor | None) -> torch.Tensor:
    """One slot per instance: the one-to-one assignment of slots to instances with the largest total IoU of the
    binarised masks (:func:`~segcompass.training.matching.hungarian_match`); an assigned slot's target is its IoU with
    its instance, every other slot's (a second slot on an instance already taken, a slot on no instance) is 0.
    (B, K, H, W), B × (G_b, H, W) -> (B, K)."""
    targets = mask_logits.new_zeros(mask_logits.shape[:2], dtype=torch.float32)  # (B, K)
    for b, iou in enumerate(_hard_ious(mask_logits, gts, weights)):
        slots, instances = hungarian_match(iou)  # empty when the sample has no instance
        targets[b, slots.to(iou.device)] = iou[slots.to(iou.device), instances.to(iou.device)]
    return targets


def confidence_targets_for(kind: str, mask_logits: torch.Tensor, gts: Sequence[torch.Tensor],
                           weights: torch.Tensor | None = None, matching: SlotMatching | None = None) -> torch.Tensor:
    """The confidence BCE's targets y (B, K) of ``segmentation_losses(confidence_targets=kind)`` (module docstring):
    ``"matched"`` needs the Hungarian ``matching``; ``"mask_iou"`` and ``"assigned_iou"`` read the binarised decoder
    masks ``mask_logits`` (B, K, H, W) against ``gts`` (B × (G_b, H, W), on the same grid)."""
    check_loss_option("confidence_targets", kind)
    if kind == "matched":
        if matching is None:
            raise ValueError("confidence_targets='matched' needs the Hungarian matching of the slots; pass `matching`.")
        return matching.confidence_targets(mask_logits.shape[1]).to(mask_logits.device)  # (B, K)
    if kind == "assigned_iou":
        return _assigned_iou_targets(mask_logits, gts, weights)  # (B, K)
    return _mask_iou_targets(mask_logits, gts, weights)  # (B, K)


def segmentation_losses(
    heatmap_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    confidence_logits: torch.Tensor,
    gt_masks: Sequence[torch.Tensor],
    *,
    lambda_seg: float = 1.0,
    lambda_conf: float = 0.2,
    lambda_dice: float = 0.6,
    lambda_mask_bce: float = 0.0,
    dice_smooth: float = 1.0,
    valid_mask: torch.Tensor | None = None,
    matching_source: Literal["heatmap", "mask"] = "heatmap",
    confidence_targets: Literal["matched", "mask_iou", "assigned_iou"] = "matched",
) -> SegmentationLossOutput:
    """Hungarian-matched segmentation and confidence losses (paper eq. 6 without the GRPO term).

    Args:
        heatmap_logits (`torch.Tensor` of shape `(B, K, H, W)`): slot-mapper heatmap logits H_k.
        mask_logits (`torch.Tensor` of shape `(B, K, H, W)`): mask-decoder logits M̂_k, same grid as the heatmaps.
        confidence_logits (`torch.Tensor` of shape `(B, K)`): slot confidence logits c_k.
        gt_masks (sequence of B tensors of shape `(G_b, H, W)`): ground-truth instances in ``[0, 1]`` on the
            prediction grid (see :func:`resize_masks`); ``G_b = 0`` for a no-target sample, ``G_b > K`` is allowed
            (only K instances can be matched).
        lambda_seg: λ_s (paper 1.0).
        lambda_conf: λ_c (paper 0.2).
        lambda_dice: λ_d (paper 0.6).
        lambda_mask_bce: λ_m, weight of a pixel BCE on the matched decoder mask logits (0: the paper, whose masks
            learn from the soft dice alone; the dice of probabilities does not say where the logit's sign should
            flip, which a BCE does).
        dice_smooth: smoothing of the dice loss (see :func:`dice_loss`).
        valid_mask (`torch.Tensor` of shape `(B, H, W)`, *optional*): pixel weights in ``[0, 1]`` (bool works),
            e.g. the unpadded image region of SAM's frame. Matching, BCE and dice use only these pixels; every
            sample needs at least one valid pixel.
        matching_source: match on ``σ(heatmap_logits)`` (default) or ``σ(mask_logits)``.
        confidence_targets: ``"matched"`` (default, the paper), ``"mask_iou"`` or ``"assigned_iou"`` (module docstring).

    Returns:
        :class:`SegmentationLossOutput`.

    Raises:
        ValueError: inconsistent shapes, ground truth not on the prediction grid, targets outside ``[0, 1]``, an
            empty ``valid_mask`` for a sample, or an unknown ``matching_source`` / ``confidence_targets``.
    """
    if heatmap_logits.dim() != 4:
        raise ValueError(f"`heatmap_logits` must have shape (B, K, H, W), got {tuple(heatmap_logits.shape)}.")
    if mask_logits.shape != heatmap_logits.shape:
        raise ValueError(
            f"`mask_logits` {tuple(mask_logits.shape)} must have the shape of `heatmap_logits` "
            f"{tuple(heatmap_logits.shape)}; resize the decoder logits to the heatmap grid first."
        )
    batch, num_slots, height, width = heatmap_logits.shape
    if num_slots < 1 or height < 1 or width < 1:
        raise ValueError(f"`heatmap_logits` needs K >= 1 slots and a non-empty grid, got {tuple(heatmap_logits.shape)}.")
    if confidence_logits.shape != (batch, num_slots):
        raise ValueError(
            f"`confidence_logits` must have shape (B, K) = {(batch, num_slots)}, got {tuple(confidence_logits.shape)}."
        )
    check_loss_option("matching_source", matching_source)
    check_loss_option("confidence_targets", confidence_targets)
    if dice_smooth < 0:
        raise ValueError(f"`dice_smooth` must be >= 0, got {dice_smooth}.")
    _check_targets(gt_masks, batch, height, width)
    device = heatmap_logits.device
    gts = [gt.to(device=device, dtype=torch.float32) for gt in gt_masks]  # B × (G_b, H, W)
    gt_all = torch.cat(gts) if gts else heatmap_logits.new_zeros((0, height, width), dtype=torch.float32)  # (ΣG, H, W)
    _check_unit_interval(gt_all, "Ground-truth masks must be binary or soft values", _MASK_VALUES_HINT)
    weights_all = _valid_weights(valid_mask, batch, height, width, device)  # (B, H, W) or None

    # 1. Match slots to instances on the detached probabilities.
    source = heatmap_logits if matching_source == "heatmap" else mask_logits
    matching = match_slots_batched(source.detach().float().sigmoid(), gts, weights_all)

    # 2. Confidence BCE against the matched / unmatched targets, mean over B·K.
    targets = confidence_targets_for(confidence_targets, mask_logits, gts, weights_all, matching)  # (B, K)
    conf = F.binary_cross_entropy_with_logits(confidence_logits.float(), targets)

    # 3. Gather the matched pairs of the whole batch.
    num_matched = matching.num_matched
    if num_matched == 0:
        # Zero that stays in the graph: parameters feeding the maps get zero gradients instead of none.
        bce = heatmap_logits.float().sum() * 0.0
        dice = mask_bce = mask_logits.float().sum() * 0.0
        matched_iou = None
    else:
        offsets = [0]
        for gt in gts[:-1]:
            offsets.append(offsets[-1] + int(gt.shape[0]))
        batch_idx = torch.cat(
            [torch.full_like(s, b) for b, s in enumerate(matching.slot_indices)]
        )  # (M,)
        slot_idx = torch.cat(matching.slot_indices)  # (M,)
        gt_rows = torch.cat([g + offsets[b] for b, g in enumerate(matching.gt_indices)])  # (M,) rows of gt_all
        target = gt_all[gt_rows]  # (M, H, W)
        heat = heatmap_logits[batch_idx, slot_idx].float()  # (M, H, W)
        probs = mask_logits[batch_idx, slot_idx].float().sigmoid()  # (M, H, W)
        weights = weights_all[batch_idx] if weights_all is not None else None  # (M, H, W)

        pixel_bce = F.binary_cross_entropy_with_logits(heat, target, reduction="none")  # (M, H, W)
        if weights is None:
            pair_bce = pixel_bce.mean((-2, -1))  # (M,)
        else:
            pair_bce = (pixel_bce * weights).sum((-2, -1)) / weights.sum((-2, -1))  # (M,)
        bce = pair_bce.mean()
        dice = dice_loss(probs, target, weights, smooth=dice_smooth).mean()
        mask_bce = heat.new_zeros(())
        if lambda_mask_bce:
            mask_pixels = F.binary_cross_entropy_with_logits(mask_logits[batch_idx, slot_idx].float(), target,
                                                             reduction="none")  # (M, H, W)
            mask_bce = (mask_pixels.mean((-2, -1)) if weights is None
                        else (mask_pixels * weights).sum((-2, -1)) / weights.sum((-2, -1))).mean()
        matched_iou = matching.matched_iou().mean()

    seg = bce + lambda_dice * dice + lambda_mask_bce * mask_bce
    loss = lambda_seg * seg + lambda_conf * conf
    return SegmentationLossOutput(
        loss=loss,
        seg=seg,
        bce=bce,
        dice=dice,
        conf=conf,
        matching=matching,
        confidence_targets=targets,
        matched_iou=matched_iou,
        num_matched=num_matched,
    )


def instance_snap_loss(
    mask_logits: torch.Tensor,
    instance_masks: Sequence[torch.Tensor],
    *,
    min_iou: float = 0.1,
    lambda_dice: float = 0.6,
    dice_smooth: float = 1.0,
    valid_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Pull every slot's mask onto the image instance it already overlaps most (not in the paper).

    :func:`segmentation_losses` trains only the slots the matching pairs with a target, toward that target. This loss
    trains all K slots, each toward *any* instance of the image (target or not: every shape, every annotated object)
    that its binarised mask overlaps most, or toward an empty mask when that IoU is below ``min_iou``. It teaches
    "a mask is one whole object, with its outline" independently of which object the reasoning asked for, which is
    what a mask refiner (:class:`~segcompass.modules.mask_refiner.MaskRefiner`) has to learn; which slots are kept is
    left to the confidences.

    Args:
        mask_logits (`torch.Tensor` of shape `(B, K, H, W)`): mask logits M̂_k.
        instance_masks (sequence of B tensors of shape `(N_b, H, W)`): every instance of each image in ``[0, 1]`` on
            the prediction grid (``N_b = 0``: every slot is pulled toward empty).
        min_iou: a slot whose best IoU is below this (or 0) gets an empty target.
        lambda_dice: weight of the soft dice (on the slots with a non-empty target) beside the pixel BCE (all slots).
        dice_smooth: smoothing of the dice (see :func:`dice_loss`).
        valid_mask (`torch.Tensor` of shape `(B, H, W)`, *optional*): pixel weights in ``[0, 1]``, as in
            :func:`segmentation_losses`; assignment and losses use only these pixels.

    Returns:
        ``(loss, {"snap_bce", "snap_dice", "snapped"})``: the 0-d float32 loss ``bce + λ_d · dice`` and detached
        logging values (``snapped``: the share of slots with a non-empty target).

    Raises:
        ValueError: shapes that do not fit, instances off the prediction grid or outside ``[0, 1]``, a bad
            ``valid_mask`` (as in :func:`segmentation_losses`), ``min_iou`` outside ``[0, 1]``.
    """
    if mask_logits.dim() != 4:
        raise ValueError(f"`mask_logits` must have shape (B, K, H, W), got {tuple(mask_logits.shape)}.")
    if not 0.0 <= min_iou <= 1.0:
        raise ValueError(f"`min_iou` must be in [0, 1], got {min_iou}.")
    batch, num_slots, height, width = mask_logits.shape
    _check_targets(instance_masks, batch, height, width, "instance_masks")
    instances = [m.to(device=mask_logits.device, dtype=torch.float32) for m in instance_masks]  # B × (N_b, H, W)
    if instances:
        _check_unit_interval(torch.cat(instances), "`instance_masks` must be binary or soft values", _MASK_VALUES_HINT)
    weights = _valid_weights(valid_mask, batch, height, width, mask_logits.device)  # (B, H, W) or None
    best, index = _best_overlap(mask_logits, instances, weights)  # (B, K), (B, K)
    targets = mask_logits.new_zeros(mask_logits.shape, dtype=torch.float32)  # (B, K, H, W)
    for b, inst in enumerate(instances):
        if inst.shape[0]:
            keep = (best[b] >= min_iou) & (best[b] > 0)  # (K,): no overlap at all is never a snap
            targets[b] = inst[index[b]] * keep.float()[:, None, None]  # (K, H, W)
    logits = mask_logits.float()
    pixel_bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # (B, K, H, W)
    if weights is None:
        bce = pixel_bce.mean()
    else:
        w = weights.unsqueeze(1).expand_as(pixel_bce)  # (B, K, H, W)
        bce = ((pixel_bce * w).sum((-2, -1)) / w.sum((-2, -1)).clamp_min(1e-6)).mean()
    snapped = targets.flatten(2).amax(-1) > 0  # (B, K)
    if bool(snapped.any()):
        pair_weights = None if weights is None else weights.unsqueeze(1).expand_as(logits)[snapped]  # (S, H, W)
        dice = dice_loss(logits[snapped].sigmoid(), targets[snapped], pair_weights, smooth=dice_smooth).mean()
    else:
        dice = logits.sum() * 0.0  # stays in the graph
    loss = bce + lambda_dice * dice
    return loss, {"snap_bce": float(bce.detach()), "snap_dice": float(dice.detach()),
                  "snapped": float(snapped.float().mean())}
