"""Segmentation / confidence losses (paper eq. 6) and mask resizing, against hand-computed values on 2×2 grids.

Notation in the comments: sp(x) = softplus(x) = log(1 + e^x). BCE-with-logits of logit x is sp(-x) for target 1
and sp(x) for target 0.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from segcompass.training import letterbox_size, resize_masks, segmentation_losses
from segcompass.training.losses import confidence_targets_for


def sp(x: float) -> float:
    return math.log1p(math.exp(x))


TL = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # top-left pixel
BR = torch.tensor([[0.0, 0.0], [0.0, 1.0]])  # bottom-right pixel


def peaked(mask: torch.Tensor, high: float = 2.0, low: float = -2.0) -> torch.Tensor:
    """Logits `high` on the mask's pixels and `low` elsewhere, shape (2, 2)."""
    return torch.where(mask > 0, torch.tensor(high), torch.tensor(low))


def test_single_pair_hand_values():
    heat = torch.stack([peaked(TL), torch.zeros(2, 2)])[None]  # (1, 2, 2, 2)
    mask = torch.zeros(1, 2, 2, 2)  # decoder probabilities 0.5 everywhere
    conf = torch.tensor([[1.0, -1.0]])
    out = segmentation_losses(heat, mask, conf, [TL[None]])
    # matching on σ(heat): slot 0 IoU = σ(2) / (σ(2) + 3σ(-2) + 1 - σ(2)) ≈ 0.65, slot 1 = 0.5 / (2 + 1 - 0.5) = 0.2
    assert out.matching.slot_indices[0].tolist() == [0] and out.matching.gt_indices[0].tolist() == [0]
    s2, sm2 = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2))
    assert out.matched_iou.item() == pytest.approx(s2 / (s2 + 3 * sm2 + 1 - s2), rel=1e-5)
    # BCE: the target pixel has logit +2 (sp(-2)), the three others logit -2 (sp(-2)) -> mean sp(-2)
    bce = sp(-2.0)
    # dice (s = 1): Σpg = 0.5, Σp = 2, Σg = 1 -> 1 - (1 + 1) / (3 + 1) = 0.5
    dice = 0.5
    # confidence: y = [1, 0]; slot 0 logit 1 -> sp(-1), slot 1 logit -1 -> sp(-1); mean sp(-1)
    conf_loss = sp(-1.0)
    assert out.bce.item() == pytest.approx(bce, rel=1e-6)
    assert out.dice.item() == pytest.approx(dice, rel=1e-6)
    assert out.conf.item() == pytest.approx(conf_loss, rel=1e-6)
    assert out.seg.item() == pytest.approx(bce + 0.6 * dice, rel=1e-6)
    assert out.loss.item() == pytest.approx(1.0 * (bce + 0.6 * dice) + 0.2 * conf_loss, rel=1e-6)
    assert out.confidence_targets.tolist() == [[1.0, 0.0]]
    assert out.num_matched == 1
    # unsmoothed dice (authors' form): 1 - 2·0.5 / 3
    out0 = segmentation_losses(heat, mask, conf, [TL[None]], dice_smooth=0.0)
    assert out0.dice.item() == pytest.approx(1 - 1 / 3, rel=1e-5)
    # custom coefficients
    out2 = segmentation_losses(heat, mask, conf, [TL[None]], lambda_seg=2.0, lambda_conf=0.5, lambda_dice=1.0)
    assert out2.loss.item() == pytest.approx(2.0 * (bce + dice) + 0.5 * conf_loss, rel=1e-6)
    out_bool = segmentation_losses(heat, mask, conf, [TL[None].bool()])  # bool targets are read as 0/1
    assert out_bool.loss.item() == pytest.approx(out.loss.item(), rel=1e-6)
    assert set(out.metrics()) == {"loss", "seg", "bce", "dice", "conf", "matched_iou", "num_matched"}


def test_mask_bce_on_the_matched_mask_logits():
    """λ_m adds the pixel BCE of the matched slot's mask logits (the unmatched slot adds nothing), inside the valid
    region when one is given; 0 (the default) leaves the paper's loss unchanged."""
    heat = torch.stack([peaked(TL), torch.zeros(2, 2)])[None]  # slot 0 matches TL
    mask = torch.stack([peaked(TL, 3.0, -1.0), peaked(BR, 5.0, 5.0)])[None]  # slot 1 (unmatched) is far off
    conf = torch.zeros(1, 2)
    plain = segmentation_losses(heat, mask, conf, [TL[None]])
    with_bce = segmentation_losses(heat, mask, conf, [TL[None]], lambda_mask_bce=0.5)
    mask_bce = (sp(-3.0) + 3 * sp(-1.0)) / 4  # target pixel logit 3, three background pixels logit -1
    assert with_bce.seg.item() == pytest.approx(plain.seg.item() + 0.5 * mask_bce, rel=1e-6)
    assert with_bce.loss.item() == pytest.approx(plain.loss.item() + 0.5 * mask_bce, rel=1e-6)
    left = torch.tensor([[[True, False], [True, False]]])  # only the left column counts
    masked = segmentation_losses(heat, mask, conf, [TL[None]], lambda_mask_bce=1.0, valid_mask=left)
    masked_plain = segmentation_losses(heat, mask, conf, [TL[None]], valid_mask=left)
    assert masked.seg.item() == pytest.approx(masked_plain.seg.item() + (sp(-3.0) + sp(-1.0)) / 2, rel=1e-6)
    grad_mask = mask.clone().requires_grad_(True)
    segmentation_losses(heat, grad_mask, conf, [TL[None]], lambda_mask_bce=1.0, lambda_dice=0.0,
                        confidence_targets="matched").loss.backward()
    assert grad_mask.grad[0, 0].abs().sum() > 0 and grad_mask.grad[0, 1].abs().sum() == 0


def test_more_instances_than_slots():
    heat = peaked(BR)[None, None]  # (1, K=1, 2, 2): slot peaked on the bottom-right pixel
    mask = peaked(BR)[None, None]
    out = segmentation_losses(heat, mask, torch.tensor([[0.0]]), [torch.stack([TL, BR])])  # G = 2 > K = 1
    assert out.matching.gt_indices[0].tolist() == [1]  # the slot takes BR; TL stays unmatched
    assert out.bce.item() == pytest.approx(sp(-2.0), rel=1e-6)
    # dice: p = σ(2) on BR, σ(-2) elsewhere; Σpg = σ(2), Σp = σ(2) + 3σ(-2), Σg = 1
    s2, sm2 = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2))
    assert out.dice.item() == pytest.approx(1 - (2 * s2 + 1) / (s2 + 3 * sm2 + 1 + 1), rel=1e-5)
    assert out.conf.item() == pytest.approx(sp(0.0), rel=1e-6)  # y = 1, logit 0 -> log 2


def test_pairs_weigh_equally_and_no_target_samples_do_not_dilute():
    # sample 0: two instances, both matched with pair BCE sp(-2);
    # sample 1: one instance, its matched slot has logits 0 -> pair BCE log 2;
    # sample 2: no target.
    heat = torch.stack(
        [
            torch.stack([peaked(TL), peaked(BR)]),
            torch.stack([torch.zeros(2, 2), torch.full((2, 2), -3.0)]),
            torch.zeros(2, 2, 2),
        ]
    )  # (B=3, K=2, 2, 2)
    mask = torch.zeros(3, 2, 2, 2)
    conf = torch.zeros(3, 2)
    gts = [torch.stack([TL, BR]), TL[None], torch.zeros(0, 2, 2)]
    out = segmentation_losses(heat, mask, conf, gts)
    assert out.num_matched == 3
    assert out.matching.slot_indices[1].tolist() == [0]  # IoU 0.2 beats σ(-3)'s ≈ 0.04
    # mean over the 3 matched pairs (not over samples, and no zero added for the no-target sample)
    assert out.bce.item() == pytest.approx((2 * sp(-2.0) + math.log(2.0)) / 3, rel=1e-6)
    # dice per pair with p = 0.5: 0.5 each (see test_single_pair_hand_values)
    assert out.dice.item() == pytest.approx(0.5, rel=1e-6)
    # confidence targets: [1, 1], [1, 0], [0, 0]; all logits 0 -> every slot log 2
    assert out.confidence_targets.tolist() == [[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]
    assert out.conf.item() == pytest.approx(math.log(2.0), rel=1e-6)
    # the no-target sample changes only the confidence term
    out_without = segmentation_losses(heat[:2], mask[:2], conf[:2], gts[:2])
    assert out_without.bce.item() == pytest.approx(out.bce.item(), rel=1e-6)


def test_all_no_target_batch_is_finite_and_trains_only_confidences():
    heat = torch.randn(2, 3, 2, 2, requires_grad=True)
    mask = torch.randn(2, 3, 2, 2, requires_grad=True)
    conf = torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.0, -2.0]], requires_grad=True)
    out = segmentation_losses(heat, mask, conf, [torch.zeros(0, 2, 2), torch.zeros(0, 2, 2)])
    assert out.bce.item() == 0.0 and out.dice.item() == 0.0
    assert out.matched_iou is None and out.num_matched == 0
    expected_conf = sum(sp(x) for x in [0.5, -1.0, 2.0, 0.0, 1.0, -2.0]) / 6  # all targets 0
    assert out.conf.item() == pytest.approx(expected_conf, rel=1e-6)
    assert out.loss.item() == pytest.approx(0.2 * expected_conf, rel=1e-6)
    out.loss.backward()
    assert torch.equal(heat.grad, torch.zeros_like(heat))  # zero, present (DDP-friendly), finite
    assert torch.equal(mask.grad, torch.zeros_like(mask))
    # d/dc mean(sp(c)) = σ(c) / 6, times λ_c
    torch.testing.assert_close(conf.grad, 0.2 * torch.sigmoid(conf.detach()) / 6)


def test_gradients_reach_heatmap_mask_and_confidence():
    heat = torch.randn(2, 3, 4, 4, requires_grad=True)
    mask = torch.randn(2, 3, 4, 4, requires_grad=True)
    conf = torch.randn(2, 3, requires_grad=True)
    gts = [(torch.rand(2, 4, 4) > 0.5).float(), torch.zeros(0, 4, 4)]
    out = segmentation_losses(heat, mask, conf, gts)
    out.loss.backward()
    for t in (heat, mask, conf):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    matched = set(out.matching.slot_indices[0].tolist())
    for k in range(3):  # only matched slots of sample 0 get map gradients; sample 1 gets none
        assert (heat.grad[0, k].abs().sum() > 0) == (k in matched)
    assert heat.grad[1].abs().sum() == 0 and mask.grad[1].abs().sum() == 0


def test_valid_mask_restricts_loss_and_matching_source():
    heat = torch.tensor([[2.0, 5.0], [-2.0, -2.0]])[None, None]  # the invalid pixel (0, 1) has logit 5
    mask = torch.zeros(1, 1, 2, 2)
    valid = torch.tensor([[[True, False], [True, False]]])  # left column
    out = segmentation_losses(heat, mask, torch.zeros(1, 1), [TL[None]], valid_mask=valid)
    # BCE over the two valid pixels: sp(-2) (target 1, logit 2) and sp(-2) (target 0, logit -2)
    assert out.bce.item() == pytest.approx(sp(-2.0), rel=1e-6)
    # dice over valid pixels: Σpg = 0.5, Σp = 1, Σg = 1 -> 1 - 2 / 3
    assert out.dice.item() == pytest.approx(1 / 3, rel=1e-6)

    heat2 = torch.stack([peaked(TL), torch.full((2, 2), -2.0)])[None]  # heatmap prefers slot 0
    mask2 = torch.stack([torch.full((2, 2), -2.0), peaked(TL)])[None]  # decoder prefers slot 1
    args = (heat2, mask2, torch.zeros(1, 2), [TL[None]])
    assert segmentation_losses(*args).matching.slot_indices[0].tolist() == [0]
    assert segmentation_losses(*args, matching_source="mask").matching.slot_indices[0].tolist() == [1]


def test_mask_iou_confidence_targets():
    """Every slot's target is its binarised mask's best IoU with an instance, matched or not; 0 without targets."""
    gt = torch.zeros(2, 4, 4)
    gt[0, :2, :2] = 1  # instance 0: top-left 2x2
    gt[1, 2:, 2:] = 1  # instance 1: bottom-right 2x2
    mask = torch.full((2, 3, 4, 4), -5.0)
    mask[0, 0, :2, :2] = 5  # exactly instance 0
    mask[0, 1, :2, :1] = 5  # half of instance 0: IoU 0.5, a duplicate the matching leaves unmatched
    mask[0, 2, 2:, 2:] = 5
    mask[0, 2, 0, 3] = 5  # instance 1 plus one stray pixel: IoU 4 / 5
    mask[1] = mask[0]
    conf = torch.zeros(2, 3, requires_grad=True)
    out = segmentation_losses(mask, mask, conf, [gt, torch.zeros(0, 4, 4)], confidence_targets="mask_iou")
    torch.testing.assert_close(out.confidence_targets, torch.tensor([[1.0, 0.5, 0.8], [0.0, 0.0, 0.0]]))
    assert sorted(out.matching.slot_indices[0].tolist()) == [0, 2]  # the matching itself is unchanged
    expected = F.binary_cross_entropy_with_logits(torch.zeros(2, 3), out.confidence_targets)
    assert out.conf.item() == pytest.approx(expected.item())
    paper = segmentation_losses(mask, mask, conf, [gt, torch.zeros(0, 4, 4)])
    assert paper.confidence_targets.tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    valid[:, 0, 3] = False  # the stray pixel is padding: slot 2 becomes exact
    masked = segmentation_losses(mask, mask, conf, [gt, torch.zeros(0, 4, 4)], confidence_targets="mask_iou",
                                 valid_mask=valid)
    assert masked.confidence_targets[0].tolist() == pytest.approx([1.0, 0.5, 1.0])


def test_assigned_iou_confidence_targets():
    """One slot per instance keeps its IoU (the assignment with the largest total IoU), every other slot gets 0: a
    second, worse slot on an instance another slot covers, a slot on nothing, and every slot of a no-target sample."""
    gt = torch.zeros(2, 4, 4)
    gt[0, :2, :2] = 1  # instance 0: top-left 2x2
    gt[1, 2:, 2:] = 1  # instance 1: bottom-right 2x2
    mask = torch.full((2, 4, 4, 4), -5.0)
    mask[0, 0, :2, :1] = 5  # half of instance 0: IoU 0.5
    mask[0, 1, :2, :2] = 5  # exactly instance 0: takes it from slot 0
    mask[0, 2, 2:, 2:] = 5
    mask[0, 2, 0, 3] = 5  # instance 1 plus one stray pixel: IoU 4 / 5
    mask[0, 3, 2:, 2:] = 5
    mask[0, 3, 1, 2:] = 5  # instance 1 and two stray pixels: IoU 4 / 6, loses instance 1 to slot 2
    mask[1] = mask[0]
    conf = torch.zeros(2, 4)
    out = segmentation_losses(mask, mask, conf, [gt, torch.zeros(0, 4, 4)], confidence_targets="assigned_iou")
    torch.testing.assert_close(out.confidence_targets, torch.tensor([[0.0, 1.0, 0.8, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    per_slot = confidence_targets_for("mask_iou", mask, [gt, torch.zeros(0, 4, 4)])
    torch.testing.assert_close(per_slot[0], torch.tensor([0.5, 1.0, 0.8, 4 / 6]))
    with pytest.raises(ValueError, match="needs the Hungarian matching"):
        confidence_targets_for("matched", mask, [gt, torch.zeros(0, 4, 4)])
    with pytest.raises(ValueError, match="confidence_targets"):
        confidence_targets_for("best", mask, [gt, torch.zeros(0, 4, 4)])


def test_input_validation():
    heat, mask, conf = torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), torch.zeros(1, 2)
    with pytest.raises(ValueError, match=r"\(8, 8\).*\(4, 4\)"):
        segmentation_losses(heat, mask, conf, [torch.zeros(1, 8, 8)])
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        segmentation_losses(heat, mask, conf, [torch.full((1, 4, 4), 255.0) * (torch.rand(1, 4, 4) > 0.5)])
    with pytest.raises(ValueError, match="batch size 1"):
        segmentation_losses(heat, mask, conf, [])
    with pytest.raises(ValueError, match="confidence_logits"):
        segmentation_losses(heat, mask, torch.zeros(1, 3), [torch.zeros(0, 4, 4)])
    with pytest.raises(ValueError, match="matching_source"):
        segmentation_losses(heat, mask, conf, [torch.zeros(0, 4, 4)], matching_source="both")
    with pytest.raises(ValueError, match="confidence_targets"):
        segmentation_losses(heat, mask, conf, [torch.zeros(0, 4, 4)], confidence_targets="iou")
    with pytest.raises(ValueError, match="no valid pixel"):
        segmentation_losses(heat, mask, conf, [torch.zeros(0, 4, 4)], valid_mask=torch.zeros(1, 4, 4))


def test_resize_masks_area_and_bilinear():
    m = torch.zeros(4, 4)
    m[0, 0] = m[0, 1] = m[1, 0] = 1.0
    down = resize_masks(m[None], (2, 2))  # area: each output cell is the mean of a 2×2 block
    torch.testing.assert_close(down, torch.tensor([[[0.75, 0.0], [0.0, 0.0]]]))
    # bilinear, align_corners=False, 2 -> 4: source coordinates (i + 0.5) / 2 - 0.5 clamp to [0, 0.25, 0.75, 1]
    up = resize_masks(torch.tensor([[0.0, 1.0], [0.0, 0.0]]), (4, 4))
    pos = torch.tensor([0.0, 0.25, 0.75, 1.0])
    torch.testing.assert_close(up, (1 - pos)[:, None] * pos[None, :])  # row weight of row 0 × col weight of col 1
    assert resize_masks(torch.zeros(0, 5, 5), (2, 2)).shape == (0, 2, 2)
    assert resize_masks(torch.ones(2, 3, 4, 4, dtype=torch.bool), (2, 2)).shape == (2, 3, 2, 2)
    nearest = resize_masks(m, (2, 2), mode="nearest-exact")
    assert set(nearest.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="mask != 0"):
        resize_masks(torch.full((2, 2), 255, dtype=torch.uint8), (4, 4))


def test_resize_masks_letterbox():
    assert letterbox_size(480, 640, (256, 256)) == (192, 256)
    assert letterbox_size(640, 480, (256, 256)) == (256, 192)
    wide = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])  # (2, 4): aspect 1:2
    boxed = resize_masks(wide[None], (4, 4), letterbox=True)  # scale 1 -> top 2 rows, zero padding below
    expected = torch.zeros(1, 4, 4)
    expected[0, :2] = wide
    torch.testing.assert_close(boxed, expected)
    stretched = resize_masks(wide[None], (4, 4))  # rows duplicated: left half everywhere
    torch.testing.assert_close(stretched, torch.tensor([[1.0, 1.0, 0.0, 0.0]]).expand(4, 4)[None])
    # 4×8 into 2×2: scale 1/4 -> a (1, 2) block of 4×4 area means, then one zero row
    big = torch.zeros(4, 8)
    big[:, :4] = 1.0
    big[0, 4] = 1.0
    torch.testing.assert_close(resize_masks(big, (2, 2), letterbox=True), torch.tensor([[1.0, 1 / 16], [0.0, 0.0]]))


def test_instance_snap_loss_hand_values():
    """Every slot is pulled toward the instance its binarised mask overlaps most (targets or not), or toward empty;
    BCE over every slot's pixels, dice over the slots with an instance."""
    from segcompass.training.losses import instance_snap_loss

    mask = torch.stack([peaked(TL), peaked(BR, 3.0, -1.0), torch.full((2, 2), -3.0)])[None]  # (1, 3, 2, 2)
    loss, logs = instance_snap_loss(mask, [torch.stack([TL, BR])])
    bce = (4 * sp(-2.0) + sp(-3.0) + 3 * sp(-1.0) + 4 * sp(-3.0)) / 12
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    dice0 = 1 - (2 * s(2) + 1) / (s(2) + 3 * s(-2) + 2)
    dice1 = 1 - (2 * s(3) + 1) / (s(3) + 3 * s(-1) + 2)
    assert logs["snap_bce"] == pytest.approx(bce, rel=1e-6)
    assert logs["snap_dice"] == pytest.approx((dice0 + dice1) / 2, rel=1e-6)
    assert loss.item() == pytest.approx(bce + 0.6 * (dice0 + dice1) / 2, rel=1e-6)
    assert logs["snapped"] == pytest.approx(2 / 3)
    # below min_iou the target is empty: a mask over the top row has IoU 0.5 with TL
    top = peaked(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))[None, None]  # (1, 1, 2, 2)
    _, kept = instance_snap_loss(top, [TL[None]], min_iou=0.5)
    _, dropped = instance_snap_loss(top, [TL[None]], min_iou=0.6)
    assert kept["snapped"] == 1.0 and dropped["snapped"] == 0.0
    assert dropped["snap_bce"] == pytest.approx((2 * sp(2.0) + 2 * sp(-2.0)) / 4, rel=1e-6)
    # min_iou=0 still never snaps a slot that overlaps nothing (its best "instance" would be row 0)
    _, none = instance_snap_loss(torch.full((1, 1, 2, 2), -3.0), [TL[None]], min_iou=0.0)
    assert none["snapped"] == 0.0


def test_instance_snap_loss_picks_the_most_overlapped_instance_per_sample():
    """Two samples; a slot over the top row and the left column overlaps both TL-row and TL-column instances: it
    snaps to the one with the higher IoU; BCE with a valid mask is the per-slot weighted mean."""
    from segcompass.training.losses import instance_snap_loss

    row = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    three = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # slot mask: TL, TR, BL
    mask = torch.stack([peaked(three)[None], peaked(BR)[None]])  # (2, 1, 2, 2)
    # sample 0: IoU with the top row 2/3, with TL 1/3 -> the row; sample 1: BR against [TL, BR] -> BR
    _, logs = instance_snap_loss(mask, [torch.stack([TL, row]), torch.stack([TL, BR])], lambda_dice=0.0)
    bce0 = (sp(-2.0) * 2 + sp(2.0) + sp(-2.0)) / 4  # TL, TR target 1 (logit 2); BL target 0 (logit 2); BR 0 (-2)
    bce1 = sp(-2.0)  # every pixel right with margin 2
    assert logs["snapped"] == 1.0
    assert logs["snap_bce"] == pytest.approx((bce0 + bce1) / 2, rel=1e-6)
    left = torch.tensor([[True, False], [True, False]]).expand(2, 2, 2)
    _, masked = instance_snap_loss(mask, [torch.stack([TL, row]), torch.stack([TL, BR])], valid_mask=left)
    # valid pixels TL, BL; sample 0: slot (TL, BL) vs row-in-valid (TL) IoU 1/2, vs TL 1/2 -> the first (TL);
    # sample 1: the slot's only pixel BR is invalid -> nothing to snap, target empty
    assert masked["snapped"] == 0.5
    assert masked["snap_bce"] == pytest.approx(((sp(-2.0) + sp(2.0)) / 2 + sp(-2.0)) / 2, rel=1e-6)


def test_instance_snap_loss_without_instances_and_gradients():
    """An image with no instance pulls every slot toward empty (dice 0, still in the graph); the gradient reaches
    every slot, matched or not."""
    from segcompass.training.losses import instance_snap_loss

    mask = torch.stack([peaked(TL), peaked(BR)])[None].requires_grad_(True)  # (1, 2, 2, 2)
    loss, logs = instance_snap_loss(mask, [torch.zeros(0, 2, 2)])
    assert logs["snapped"] == 0.0 and logs["snap_dice"] == 0.0
    assert loss.item() == pytest.approx((2 * sp(2.0) + 6 * sp(-2.0)) / 8, rel=1e-6)
    loss.backward()
    assert bool((mask.grad[0, 0, 0, 0] > 0) & (mask.grad[0, 1, 1, 1] > 0))  # both peaks pushed down
    valid = torch.tensor([[[True, False], [True, False]]])
    _, left = instance_snap_loss(mask.detach(), [BR[None]], valid_mask=valid)  # BR is outside: nothing to snap to
    assert left["snapped"] == 0.0


def test_instance_snap_loss_rejects_bad_inputs():
    from segcompass.training.losses import instance_snap_loss

    mask = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match="instance_masks"):
        instance_snap_loss(mask, [TL[None], TL[None]])
    with pytest.raises(ValueError, match=r"instance_masks\[0\] has spatial size"):
        instance_snap_loss(mask, [torch.zeros(1, 3, 3)])
    with pytest.raises(ValueError,
                       match=r"`instance_masks` must be binary or soft values in \[0, 1\], got values in \[0, 2\]"):
        instance_snap_loss(mask, [2 * TL[None]])
    with pytest.raises(ValueError, match="no valid pixel"):
        instance_snap_loss(mask, [TL[None]], valid_mask=torch.zeros(1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="min_iou"):
        instance_snap_loss(mask, [TL[None]], min_iou=1.5)
    with pytest.raises(ValueError, match=r"\(B, K, H, W\)"):
        instance_snap_loss(mask[0], [TL[None]])
