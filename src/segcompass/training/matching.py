"""Soft IoU between slot maps and ground-truth masks, and Hungarian matching of slots to instances.

The paper (§3.3, appendix B.3) matches the K predicted slots to the G ground-truth instances with a bipartite
(Hungarian) assignment; the losses and the multi-object reward both use it. The cost is ``1 - soft IoU``, with

    soft IoU(p, g) = Σ p·g / (Σ p + Σ g − Σ p·g)

over pixels, ``p`` a probability map and ``g`` a binary or soft mask in ``[0, 1]``. For binary ``p`` and ``g`` it is
the ordinary IoU. Two maps that are both all-zero score 1 (they agree exactly); this is the only case where the
denominator vanishes. An optional region mask restricts every sum to the valid pixels (e.g. the unpadded part of
SAM's 256×256 frame).

Dimension names: B samples, K slots, G ground-truth instances (``G_b`` for sample b), H×W mask grid, M matched pairs.

The assignment is solved per sample on the CPU with :func:`scipy.optimize.linear_sum_assignment`; the IoU
matrices of a whole batch are computed in one batched torch op on the maps' device, and only the small
``(B, K, max G)`` cost tensor crosses to the host, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = [
    "SlotMatching",
    "hungarian_match",
    "match_slots",
    "match_slots_batched",
    "pairwise_soft_iou",
]


def pairwise_soft_iou(
    pred_probs: torch.Tensor,
    gt_masks: torch.Tensor,
    valid_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft IoU of every predicted map with every ground-truth mask.

    ``soft IoU = Σ p·g / (Σ p + Σ g − Σ p·g)``; a pair whose union is 0 (both maps all-zero) scores 1.
    Computed in float32 (bf16/fp16 inputs are upcast). Differentiable, but callers that only match should pass
    detached maps.

    Args:
        pred_probs (`torch.Tensor` of shape `(..., K, H, W)`): probabilities in ``[0, 1]``.
        gt_masks (`torch.Tensor` of shape `(..., G, H, W)`): binary or soft masks in ``[0, 1]``; the leading dims
            must equal those of ``pred_probs``.
        valid_mask (`torch.Tensor` of shape `(..., H, W)`, *optional*): pixel weights in ``[0, 1]`` (bool works);
            every sum runs over ``valid_mask``-weighted pixels only.

    Returns:
        `torch.Tensor` of shape `(..., K, G)`: the soft IoU matrix.

    Example:
        >>> p = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])      # (K=1, 2, 2)
        >>> g = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])      # (G=1, 2, 2)
        >>> pairwise_soft_iou(p, g)
        tensor([[0.5000]])
    """
    if pred_probs.dim() < 3 or gt_masks.dim() < 3:
        raise ValueError(
            f"pairwise_soft_iou expects `pred_probs` (..., K, H, W) and `gt_masks` (..., G, H, W), got shapes "
            f"{tuple(pred_probs.shape)} and {tuple(gt_masks.shape)}. Add a slot/instance axis with `x[None]`."
        )
    if pred_probs.shape[:-3] != gt_masks.shape[:-3] or pred_probs.shape[-2:] != gt_masks.shape[-2:]:
        raise ValueError(
            f"`pred_probs` {tuple(pred_probs.shape)} and `gt_masks` {tuple(gt_masks.shape)} must share the leading "
            "(batch) dims and the mask size (H, W). Resize the ground truth to the prediction grid first "
            "(segcompass.training.resize_masks)."
        )
    p = pred_probs.float()
    g = gt_masks.to(device=p.device, dtype=torch.float32)
    if valid_mask is not None:
        if valid_mask.shape != p.shape[:-3] + p.shape[-2:]:
            raise ValueError(
                f"`valid_mask` must have shape {tuple(p.shape[:-3] + p.shape[-2:])} (leading dims + (H, W)), got "
                f"{tuple(valid_mask.shape)}."
            )
        v = valid_mask.to(device=p.device, dtype=torch.float32).unsqueeze(-3)  # (..., 1, H, W)
        p = p * v
        g = g * v
    p = p.flatten(-2)  # (..., K, H*W)
    g = g.flatten(-2)  # (..., G, H*W)
    inter = p @ g.transpose(-1, -2)  # (..., K, G)
    union = p.sum(-1).unsqueeze(-1) + g.sum(-1).unsqueeze(-2) - inter  # (..., K, G)
    # Clamp only to keep the unselected branch of `where` finite (its gradient is multiplied by 0, never NaN).
    return torch.where(union > 0, inter / union.clamp_min(torch.finfo(torch.float32).tiny), torch.ones_like(union))


def hungarian_match(score: torch.Tensor | np.ndarray, *, maximize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal one-to-one assignment of rows (slots) to columns (instances).

    Args:
        score (`(K, G)` tensor or array): pair scores (e.g. soft IoU). With ``maximize=True`` the total score of
            the assignment is maximised, otherwise it is read as a cost and minimised. Maximising IoU is the same
            assignment as minimising ``1 - IoU``.
        maximize: see above.

    Returns:
        ``(row_idx, col_idx)``: two int64 CPU tensors of length ``min(K, G)``, sorted by row. Empty when K or G is 0.

    Example:
        >>> hungarian_match(torch.tensor([[0.9, 0.8], [0.8, 0.0]]))   # greedy would take 0.9 then 0.0
        (tensor([0, 1]), tensor([1, 0]))
    """
    if isinstance(score, torch.Tensor):
        matrix = score.detach().to("cpu", torch.float64).numpy()
    else:
        matrix = np.asarray(score, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"hungarian_match expects a 2-D (K, G) score matrix, got shape {matrix.shape}.")
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty.clone()
    if not np.isfinite(matrix).all():
        raise ValueError(
            "The matching score matrix contains NaN or inf; the predicted maps are probably NaN. Check the model "
            "outputs (and the loss scale) before matching."
        )
    rows, cols = linear_sum_assignment(matrix, maximize=maximize)
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


@dataclass
class SlotMatching:
    """Result of matching K slots to the ground-truth instances of each sample in a batch.

    Attributes:
        slot_indices (`list[torch.LongTensor]`, B entries of shape `(M_b,)`): matched slot of each pair,
            ``M_b = min(K, G_b)``; on the device of the predicted maps.
        gt_indices (`list[torch.LongTensor]`, B entries of shape `(M_b,)`): matched ground-truth instance.
        iou (`list[torch.FloatTensor]`, B entries of shape `(K, G_b)`): the detached soft-IoU matrices the
            assignment was solved on (on the CPU, where the assignment ran).
    """

    slot_indices: list[torch.Tensor]
    gt_indices: list[torch.Tensor]
    iou: list[torch.Tensor]

    @property
    def num_matched(self) -> int:
        """Total number of matched pairs M = Σ_b min(K, G_b)."""
        return sum(int(s.numel()) for s in self.slot_indices)

    def matched_iou(self) -> torch.Tensor:
        """Soft IoU of every matched pair, concatenated over the batch in sample order: shape `(M,)`, on the CPU."""
        values = [iou[s.cpu(), g.cpu()] for iou, s, g in zip(self.iou, self.slot_indices, self.gt_indices)]
        if not values:
            return torch.zeros(0)
        return torch.cat(values)

    def confidence_targets(self, num_slots: int) -> torch.Tensor:
        """Binary targets y (paper §3.3): 1 for a slot matched to any instance, else 0. Shape `(B, K)`, float32."""
        device = self.slot_indices[0].device if self.slot_indices else torch.device("cpu")
        targets = torch.zeros(len(self.slot_indices), num_slots, device=device)  # (B, K)
        for b, slots in enumerate(self.slot_indices):
            targets[b, slots] = 1.0
        return targets


def match_slots(
    pred_probs: torch.Tensor,
    gt_masks: torch.Tensor,
    valid_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hungarian matching of K slots to G ground-truth masks on cost ``1 − soft IoU`` (one sample).

    Handles K > G (K − G slots stay unmatched), G > K (G − K instances stay unmatched) and G = 0 (no pairs).

    Args:
        pred_probs (`torch.Tensor` of shape `(K, H, W)`): slot probabilities in ``[0, 1]``.
        gt_masks (`torch.Tensor` of shape `(G, H, W)`): ground-truth masks in ``[0, 1]``.
        valid_mask (`torch.Tensor` of shape `(H, W)`, *optional*): pixels taking part in the IoU.

    Returns:
        ``(slot_idx, gt_idx)``: int64 tensors of shape `(min(K, G),)` on ``pred_probs.device``, sorted by slot.
    """
    if pred_probs.dim() != 3 or gt_masks.dim() != 3:
        raise ValueError(
            f"match_slots expects `pred_probs` (K, H, W) and `gt_masks` (G, H, W), got "
            f"{tuple(pred_probs.shape)} and {tuple(gt_masks.shape)}. For a batch use match_slots_batched."
        )
    with torch.no_grad():
        iou = pairwise_soft_iou(pred_probs.detach(), gt_masks, valid_mask)  # (K, G)
    slots, gts = hungarian_match(iou)
    return slots.to(pred_probs.device), gts.to(pred_probs.device)


def match_slots_batched(
    pred_probs: torch.Tensor,
    gt_masks: Sequence[torch.Tensor],
    valid_mask: torch.Tensor | None = None,
) -> SlotMatching:
    """Hungarian matching for a batch whose samples have different numbers of instances.

    The ground truths are zero-padded to ``(B, G_max, H, W)`` and all IoU matrices come from one batched op; the
    ``(B, K, G_max)`` result moves to the CPU once, and each sample's ``(K, G_b)`` block is assigned there.

    Args:
        pred_probs (`torch.Tensor` of shape `(B, K, H, W)`): slot probabilities (detached inside).
        gt_masks (sequence of B tensors of shape `(G_b, H, W)`): each sample's instances; ``G_b`` may be 0.
        valid_mask (`torch.Tensor` of shape `(B, H, W)`, *optional*): pixels taking part in the IoU.

    Returns:
        :class:`SlotMatching` with per-sample indices on ``pred_probs.device``.
    """
    if pred_probs.dim() != 4:
        raise ValueError(
            f"match_slots_batched expects `pred_probs` of shape (B, K, H, W), got {tuple(pred_probs.shape)}."
        )
    batch, num_slots, height, width = pred_probs.shape
    if len(gt_masks) != batch:
        raise ValueError(
            f"`gt_masks` has {len(gt_masks)} entries but `pred_probs` has batch size {batch}; pass one "
            "(G_b, H, W) tensor per sample (shape (0, H, W) for a sample without targets)."
        )
    for b, gt in enumerate(gt_masks):
        if gt.dim() != 3 or tuple(gt.shape[-2:]) != (height, width):
            raise ValueError(
                f"gt_masks[{b}] has shape {tuple(gt.shape)}; expected (G, {height}, {width}) to match the predicted "
                "maps. Resize with segcompass.training.resize_masks."
            )
    device = pred_probs.device
    counts = [int(gt.shape[0]) for gt in gt_masks]
    max_gt = max(counts, default=0)
    if max_gt == 0:
        empty = [torch.zeros(0, dtype=torch.long, device=device) for _ in range(batch)]
        ious = [torch.zeros(num_slots, 0) for _ in range(batch)]
        return SlotMatching(slot_indices=empty, gt_indices=[e.clone() for e in empty], iou=ious)

    with torch.no_grad():
        padded = pred_probs.new_zeros((batch, max_gt, height, width), dtype=torch.float32)  # (B, G_max, H, W)
        for b, gt in enumerate(gt_masks):
            if counts[b]:
                padded[b, : counts[b]] = gt.to(device=device, dtype=torch.float32)
        iou = pairwise_soft_iou(pred_probs.detach(), padded, valid_mask).cpu()  # (B, K, G_max), one host transfer

    slot_indices: list[torch.Tensor] = []
    gt_indices: list[torch.Tensor] = []
    ious: list[torch.Tensor] = []
    for b in range(batch):
        block = iou[b, :, : counts[b]]  # (K, G_b); the padded columns are dropped
        slots, gts = hungarian_match(block)
        slot_indices.append(slots.to(device))
        gt_indices.append(gts.to(device))
        ious.append(block)
    return SlotMatching(slot_indices=slot_indices, gt_indices=gt_indices, iou=ious)
