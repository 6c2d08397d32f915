"""Soft IoU and Hungarian matching, checked against values worked out by hand on 2×2 / 4×4 masks."""

import doctest

import numpy as np
import pytest
import torch

from segcompass import answer_format, sam_frame
from segcompass.training import matching, rewards
from segcompass.training.matching import hungarian_match, match_slots, match_slots_batched, pairwise_soft_iou


def _mask4(*pixels):
    """4×4 float mask with ones at the given (row, col) pixels."""
    m = torch.zeros(4, 4)
    for r, c in pixels:
        m[r, c] = 1.0
    return m


def test_soft_iou_hand_values():
    p = torch.tensor([[[0.5, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])  # (K=2, 2, 2)
    g = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])  # (G=2, 2, 2)
    iou = pairwise_soft_iou(p, g)
    # slot 0 vs gt 0: Σpg = 0.5, Σp = 1.5, Σg = 1 -> 0.5 / (1.5 + 1 - 0.5) = 0.25
    # slot 0 vs gt 1: Σpg = 0 -> 0
    # slot 1 (empty) vs gt 0 / gt 1: 0 / (0 + 1 - 0) = 0
    expected = torch.tensor([[0.5 / (1.5 + 1.0 - 0.5), 0.0], [0.0, 0.0]])
    assert iou.shape == (2, 2)
    torch.testing.assert_close(iou, expected)


def test_soft_iou_binary_equals_hard_iou_and_empty_rules():
    a = _mask4((0, 0), (0, 1), (1, 0), (1, 1))  # 4 pixels
    b = _mask4((1, 1), (1, 2), (2, 1), (2, 2))  # 4 pixels, 1 shared
    empty = torch.zeros(4, 4)
    iou = pairwise_soft_iou(torch.stack([a, empty]), torch.stack([b, empty]))
    # a∩b = 1, a∪b = 7; empty vs b: 0/4 = 0; a vs empty: 0/4 = 0; empty vs empty: union 0 -> 1 by definition
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 0.0], [0.0, 1.0]]))


def test_soft_iou_valid_mask_restricts_sums():
    p = torch.ones(1, 2, 2)
    g = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    valid = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # left column only
    # full grid: 1 / (4 + 1 - 1) = 0.25; left column: Σpv = 2, Σgv = 1, Σpgv = 1 -> 1 / (2 + 1 - 1) = 0.5
    torch.testing.assert_close(pairwise_soft_iou(p, g), torch.tensor([[0.25]]))
    torch.testing.assert_close(pairwise_soft_iou(p, g, valid), torch.tensor([[0.5]]))


def test_soft_iou_batched_matches_per_sample_and_rejects_bad_shapes():
    p = torch.rand(3, 2, 4, 4)
    g = (torch.rand(3, 5, 4, 4) > 0.5).float()
    batched = pairwise_soft_iou(p, g)  # (3, 2, 5)
    assert batched.shape == (3, 2, 5)
    for b in range(3):
        torch.testing.assert_close(batched[b], pairwise_soft_iou(p[b], g[b]))
    with pytest.raises(ValueError, match="resize_masks"):
        pairwise_soft_iou(torch.rand(2, 4, 4), torch.rand(1, 3, 3))


def test_hungarian_picks_optimal_not_greedy():
    score = torch.tensor([[0.9, 0.8], [0.8, 0.0]])
    # greedy: (0,0)=0.9 then (1,1)=0.0 -> 0.9; optimal: (0,1)+(1,0) = 1.6
    rows, cols = hungarian_match(score)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    assert float(score[rows, cols].sum()) == pytest.approx(1.6)
    # 3×3: greedy takes 0.95 at (0,0), then 0.9 at (2,2) and 0.1 at (1,1): 1.95; optimal 0.9 + 0.9 + 0.9 = 2.7
    score3 = np.array([[0.95, 0.9, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 0.9]])
    rows, cols = hungarian_match(score3)
    assert cols.tolist() == [1, 0, 2]
    # as a cost (minimise 1 - IoU) the assignment is the same
    rows_c, cols_c = hungarian_match(1.0 - torch.as_tensor(score3), maximize=False)
    assert cols_c.tolist() == [1, 0, 2]


def test_hungarian_rectangular_and_empty():
    score = torch.tensor([[0.6, 0.5], [0.7, 0.1], [0.0, 0.2]])  # K=3 > G=2
    rows, cols = hungarian_match(score)
    # candidates: r0c1 + r1c0 = 1.2 (best), r0c0 + r2c1 = 0.8, r1c0 + r2c1 = 0.9
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    rows_t, cols_t = hungarian_match(score.T)  # G > K: two slots, three instances
    assert rows_t.tolist() == [0, 1] and cols_t.tolist() == [1, 0]
    rows_e, cols_e = hungarian_match(torch.zeros(3, 0))
    assert rows_e.numel() == 0 and cols_e.numel() == 0 and rows_e.dtype == torch.long
    with pytest.raises(ValueError, match="NaN"):
        hungarian_match(torch.tensor([[float("nan")]]))


def test_match_slots_more_gt_than_slots():
    gts = torch.stack([_mask4((0, 0)), _mask4((3, 3)), _mask4((0, 3))])  # G = 3
    slots = torch.stack([_mask4((3, 3)) * 0.9, _mask4((0, 3), (1, 3)) * 0.8])  # K = 2
    slot_idx, gt_idx = match_slots(slots, gts)
    # slot 0 covers gt 1 (IoU 0.9), slot 1 covers gt 2 (IoU 0.8 / (1.6 + 1 - 0.8)); gt 0 stays unmatched
    assert slot_idx.tolist() == [0, 1] and gt_idx.tolist() == [1, 2]


def test_match_slots_batched_variable_gt_counts():
    k, h, w = 3, 4, 4
    probs = torch.rand(3, k, h, w)
    gts = [
        (torch.rand(2, h, w) > 0.5).float(),  # G = 2 < K
        torch.zeros(0, h, w),  # no target
        (torch.rand(5, h, w) > 0.5).float(),  # G = 5 > K
    ]
    result = match_slots_batched(probs, gts)
    assert [s.numel() for s in result.slot_indices] == [2, 0, 3]
    assert [tuple(m.shape) for m in result.iou] == [(3, 2), (3, 0), (3, 5)]
    assert result.num_matched == 5
    for b in range(3):
        slot_idx, gt_idx = match_slots(probs[b], gts[b])
        assert result.slot_indices[b].tolist() == slot_idx.tolist()
        assert result.gt_indices[b].tolist() == gt_idx.tolist()
        torch.testing.assert_close(result.iou[b], pairwise_soft_iou(probs[b], gts[b]))
    targets = result.confidence_targets(k)
    assert targets.shape == (3, k)
    assert targets[0].sum() == 2 and targets[1].sum() == 0 and targets[2].sum() == 3
    assert result.matched_iou().shape == (5,)


def test_match_slots_batched_all_empty_and_errors():
    result = match_slots_batched(torch.rand(2, 3, 4, 4), [torch.zeros(0, 4, 4), torch.zeros(0, 4, 4)])
    assert result.num_matched == 0
    assert result.confidence_targets(3).sum() == 0
    with pytest.raises(ValueError, match="batch size 2"):
        match_slots_batched(torch.rand(2, 3, 4, 4), [torch.zeros(0, 4, 4)])
    with pytest.raises(ValueError, match=r"\(G, 4, 4\)"):
        match_slots_batched(torch.rand(1, 3, 4, 4), [torch.zeros(1, 8, 8)])


@pytest.mark.parametrize("module", [matching, sam_frame, answer_format, rewards])
def test_docstring_examples(module):
    result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
