"""segcompass.metrics.functional on crafted cases whose answers are computed by hand in each test."""

import doctest
import math

import numpy as np
import pytest
import torch
from PIL import Image

import segcompass.metrics.functional as F
from segcompass.metrics import (
    SegmentationMetricAccumulator,
    ciou,
    giou,
    intersection_and_union,
    n_acc,
    precision_at,
    reasoning_segmentation_metrics,
    t_acc,
)
from segcompass.utils.masks import encode_rle


def rect(shape, rows, cols):
    """Bool mask of `shape` with rows[0]:rows[1] x cols[0]:cols[1] set."""
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def line(width, start, stop):
    """(1, width) mask with columns start:stop set."""
    return rect((1, width), (0, 1), (start, stop))


EMPTY = np.zeros((4, 4), dtype=bool)
TOP = rect((4, 4), (0, 2), (0, 4))  # rows 0-1: 8 px
MIDDLE = rect((4, 4), (1, 3), (0, 4))  # rows 1-2: 8 px, overlaps TOP in row 1 (4 px)
LEFT = rect((4, 4), (0, 4), (0, 2))  # cols 0-1: 8 px, overlaps TOP in 4 px


# ----------------------------------------------------------------------------------------------- empties
def test_all_empty_under_each_policy():
    preds = [EMPTY, []]
    refs = [[], EMPTY]
    one = reasoning_segmentation_metrics(preds, refs)
    assert (one["ciou"], one["giou"], one["n_acc"]) == (1.0, 1.0, 1.0)
    assert math.isnan(one["t_acc"]) and math.isnan(one["pr@0.5"])
    assert one["num_samples"] == 2 and one["num_no_target"] == 2
    zero = reasoning_segmentation_metrics(preds, refs, empty_policy="zero")
    assert (zero["ciou"], zero["giou"]) == (0.0, 0.0)
    skip = reasoning_segmentation_metrics(preds, refs, empty_policy="skip")
    assert math.isnan(skip["ciou"]) and math.isnan(skip["giou"])
    assert skip["n_acc"] == 1.0  # the decision is still counted


def test_one_side_empty():
    # A: nothing predicted for an 8-px target (I=0, U=8). B: 3 px predicted for a no-target sample (I=0, U=3).
    three_px = rect((4, 4), (3, 4), (0, 3))
    result = reasoning_segmentation_metrics([[], three_px], [TOP, []])
    assert result["ciou"] == 0.0
    assert result["giou"] == 0.0
    assert result["n_acc"] == 0.0  # the no-target sample was answered with a mask
    assert result["t_acc"] == 0.0  # the target sample was answered with nothing
    assert intersection_and_union([], TOP) == (0, 8)
    assert intersection_and_union(three_px, []) == (0, 3)
    assert intersection_and_union([], []) == (0, 0)


def test_both_empty_policies_mixed_with_a_scored_sample():
    preds = [EMPTY, rect((4, 4), (0, 1), (0, 4))]  # second: 4 px inside TOP -> IoU 4/8
    refs = [EMPTY, TOP]
    expected_giou = {"one": (1.0 + 0.5) / 2, "zero": (0.0 + 0.5) / 2, "skip": 0.5}
    for policy, value in expected_giou.items():
        result = reasoning_segmentation_metrics(preds, refs, empty_policy=policy)
        assert result["giou"] == pytest.approx(value)
        assert result["ciou"] == pytest.approx(4 / 8)  # the both-empty sample adds 0 / 0
    acc = SegmentationMetricAccumulator(empty_policy="skip")
    acc.update(preds, refs)
    np.testing.assert_array_equal(acc.per_sample_iou(), [np.nan, 0.5])


# ----------------------------------------------------------------------------------------------- overlaps
def test_partial_overlap_exact_fractions_and_pixel_weighting():
    # 4x4: TOP vs LEFT -> I = 4, U = 12. 10x10: 25 px inside a 50 px target -> I = 25, U = 50.
    big_gt = rect((10, 10), (0, 5), (0, 10))
    big_pred = rect((10, 10), (0, 5), (0, 5))
    preds, refs = [LEFT, big_pred], [TOP, big_gt]
    assert ciou(preds, refs) == pytest.approx((4 + 25) / (12 + 50))
    assert giou(preds, refs) == pytest.approx((4 / 12 + 25 / 50) / 2)
    # cIoU weighs the larger image more: it is closer to 0.5 than the per-sample mean is.
    assert abs(ciou(preds, refs) - 0.5) < abs(giou(preds, refs) - 0.5)


def test_ignore_regions_leave_intersection_and_union():
    # TOP vs MIDDLE: I = 4 (row 1), U = 12 (rows 0-2).
    assert intersection_and_union(MIDDLE, TOP) == (4, 12)
    # Ignoring row 2 removes 4 predicted-only pixels from U.
    assert intersection_and_union(MIDDLE, TOP, ignore=rect((4, 4), (2, 3), (0, 4))) == (4, 8)
    # Ignoring column 0 removes 1 pixel from I and 3 from U.
    col0 = rect((4, 4), (0, 4), (0, 1))
    assert intersection_and_union(MIDDLE, TOP, ignore=col0) == (3, 9)
    result = reasoning_segmentation_metrics([MIDDLE, MIDDLE], [TOP, TOP], ignore_masks=[col0, None])
    assert result["ciou"] == pytest.approx((3 + 4) / (9 + 12))
    assert result["giou"] == pytest.approx((3 / 9 + 4 / 12) / 2)


def test_multi_instance_unions_count_overlaps_once():
    # Predicted instances TOP and MIDDLE overlap in row 1; their union is rows 0-2 (12 px, not 16).
    gt_rows_0_2 = rect((4, 4), (0, 3), (0, 4))
    assert intersection_and_union([TOP, MIDDLE], gt_rows_0_2) == (12, 12)
    # Ground truth given as overlapping instances too.
    assert intersection_and_union([TOP], [TOP, MIDDLE]) == (8, 12)
    assert giou([[TOP, MIDDLE]], [[encode_rle(TOP), encode_rle(MIDDLE)]]) == 1.0


# ----------------------------------------------------------------------------------------------- Pr@X
def test_precision_at_thresholds_uses_ge_over_target_samples_only():
    gt = line(10, 0, 10)
    preds = [line(10, 0, 5), line(10, 0, 7), line(10, 0, 9), line(10, 0, 10)]  # IoU 0.5, 0.7, 0.9, 1.0
    refs = [gt, gt, gt, gt]
    # A no-target sample predicted empty scores IoU 1 for gIoU but is not in the Pr@X pool.
    preds.append(np.zeros((1, 10), bool))
    refs.append([])
    result = reasoning_segmentation_metrics(preds, refs)
    assert result["pr@0.5"] == 4 / 4
    assert result["pr@0.6"] == 3 / 4
    assert result["pr@0.7"] == 3 / 4  # IoU exactly 0.7 counts (>=)
    assert result["pr@0.8"] == 2 / 4
    assert result["pr@0.9"] == 2 / 4  # IoU exactly 0.9 counts
    assert result["giou"] == pytest.approx((0.5 + 0.7 + 0.9 + 1.0 + 1.0) / 5)
    assert precision_at(preds, refs, 0.95) == 1 / 4
    custom = reasoning_segmentation_metrics(preds, refs, pr_thresholds=(0.75,))
    assert custom["pr@0.75"] == 2 / 4 and "pr@0.5" not in custom


# ----------------------------------------------------------------------------------------------- N-acc / T-acc
def test_n_acc_and_t_acc_from_mask_emptiness():
    some = rect((4, 4), (0, 1), (0, 1))
    preds = [EMPTY, [], some, TOP, TOP, LEFT, []]
    refs = [[], EMPTY, [], TOP, MIDDLE, LEFT, TOP]  # 3 no-target (2 predicted empty), 4 target (1 empty)
    assert n_acc(preds, refs) == pytest.approx(2 / 3)
    assert t_acc(preds, refs) == pytest.approx(3 / 4)


def test_explicit_decisions_override_mask_emptiness_for_accuracy():
    preds = [TOP, EMPTY]
    refs = [[], TOP]
    assert (n_acc(preds, refs), t_acc(preds, refs)) == (0.0, 0.0)
    decisions = [True, False]  # rejects the no-target sample, accepts the target one
    assert n_acc(preds, refs, no_target_predictions=decisions) == 1.0
    assert t_acc(preds, refs, no_target_predictions=np.array(decisions)) == 1.0


# ----------------------------------------------------------------------------------------------- protocols
def _protocol_case():
    """s1 target, mask = GT but rejected; s2 no-target, 3-px mask but rejected;
    s3 no-target, empty mask but not rejected; s4 target TOP vs MIDDLE (I=4, U=12), not rejected."""
    three_px = rect((4, 4), (3, 4), (0, 3))
    preds = [TOP, three_px, EMPTY, MIDDLE]
    refs = [TOP, [], [], TOP]
    decisions = [True, True, False, False]
    return preds, refs, decisions


def test_rela_protocol():
    preds, refs, decisions = _protocol_case()
    result = reasoning_segmentation_metrics(preds, refs, no_target_predictions=decisions, protocol="rela")
    # I: s1 forced 0, s2 0, s3 0, s4 4 | U: s1 8 (kept), s2 0 (true rejection), s3 0, s4 12
    assert result["ciou"] == pytest.approx(4 / 20)
    # IoU: s1 0 (I forced 0), s2 1 (true rejection), s3 0 (missed rejection), s4 1/3
    assert result["giou"] == pytest.approx((0 + 1 + 0 + 1 / 3) / 4)
    assert result["pr@0.5"] == 0.0  # targets s1 (0) and s4 (1/3)
    assert result["n_acc"] == 0.5 and result["t_acc"] == 0.5


def test_gsva_protocol_keeps_mask_iou_of_rejected_targets():
    preds, refs, decisions = _protocol_case()
    result = reasoning_segmentation_metrics(preds, refs, no_target_predictions=decisions, protocol="gsva")
    assert result["ciou"] == pytest.approx((8 + 4) / (8 + 12))
    assert result["giou"] == pytest.approx((1 + 1 + 0 + 1 / 3) / 4)
    assert result["pr@0.5"] == 0.5


def test_lisa_protocol_scores_masks_only():
    preds, refs, decisions = _protocol_case()
    result = reasoning_segmentation_metrics(preds, refs, no_target_predictions=decisions)
    # I: 8, 0, 0, 4 | U: 8, 3, 0, 12 | IoU: 1, 0, 1 (both empty), 1/3
    assert result["ciou"] == pytest.approx(12 / 23)
    assert result["giou"] == pytest.approx((1 + 0 + 1 + 1 / 3) / 4)
    assert result["n_acc"] == 0.5 and result["t_acc"] == 0.5


def test_protocols_agree_without_explicit_decisions():
    preds, refs, _ = _protocol_case()
    results = [reasoning_segmentation_metrics(preds, refs, protocol=p) for p in F.PROTOCOLS]
    assert results[0] == results[1] == results[2]
    assert results[0]["ciou"] == pytest.approx((8 + 4) / (8 + 3 + 12))


# ----------------------------------------------------------------------------------------------- resolution
def test_eval_size_resizes_with_nearest_neighbour():
    small_pred = rect((2, 2), (0, 1), (0, 2))  # top row of a 2x2 -> rows 0-1 of 4x4 = TOP
    with pytest.raises(ValueError, match=r"Prediction shape \(2, 2\) != reference shape \(4, 4\).*eval_size"):
        giou([small_pred], [TOP])
    assert giou([small_pred], [TOP], eval_size=4) == 1.0
    # Down to 2x2: TOP -> top row (2 px), MIDDLE samples rows 1 and 3 -> [rows 1] -> top row too.
    assert intersection_and_union(MIDDLE, TOP, eval_size=(2, 2)) == (2, 2)


# ----------------------------------------------------------------------------------------------- input forms
def _random_split(seed=0, n=12):
    rng = np.random.default_rng(seed)
    preds, refs, ignores = [], [], []
    for i in range(n):
        h, w = int(rng.integers(3, 12)), int(rng.integers(3, 12))
        ref = rng.random((h, w)) < (0.0 if i % 4 == 0 else 0.4)
        pred = rng.random((h, w)) < (0.0 if i % 3 == 0 else 0.5)
        preds.append(pred)
        refs.append(ref)
        ignores.append(rng.random((h, w)) < 0.1 if i % 2 else None)
    return preds, refs, ignores


def test_input_forms_give_the_same_answer():
    preds, refs, ignores = _random_split()
    expected = reasoning_segmentation_metrics(preds, refs, ignore_masks=ignores)
    assert 0.0 < expected["ciou"] < 1.0 and expected["num_no_target"] > 0
    forms = {
        "uint8 0/255": lambda m: m.astype(np.uint8) * 255,
        "torch bool": torch.from_numpy,
        "torch float": lambda m: torch.from_numpy(m.astype(np.float32)),
        "PIL L": lambda m: Image.fromarray(m.astype(np.uint8) * 255, mode="L"),
        "RLE": encode_rle,
        "instance list": lambda m: [encode_rle(m), m],
    }
    for name, convert in forms.items():
        result = reasoning_segmentation_metrics(
            [convert(p) for p in preds],
            [convert(r) for r in refs],
            ignore_masks=[None if i is None else convert(i) for i in ignores],
        )
        assert result == expected, name


def test_batched_tensor_input_and_probability_threshold():
    gt = torch.zeros(2, 4, 4)
    gt[:, :2] = 1.0
    probs = torch.full((2, 4, 4), 0.2)
    probs[:, 0] = 0.9  # row 0 above 0.5
    probs[:, 1] = 0.6  # row 1 above 0.5, below 0.7
    assert giou(probs, gt) == 1.0
    assert giou(probs, gt, threshold=0.7) == 0.5


def test_streaming_equals_one_shot():
    preds, refs, ignores = _random_split(seed=1, n=15)
    decisions = [bool(i % 5 == 0) for i in range(15)]
    for protocol in F.PROTOCOLS:
        expected = reasoning_segmentation_metrics(
            preds, refs, ignore_masks=ignores, no_target_predictions=decisions, protocol=protocol
        )
        acc = SegmentationMetricAccumulator(protocol=protocol)
        for start in range(0, 15, 4):
            stop = start + 4
            acc.update(preds[start:stop], refs[start:stop], ignores[start:stop], decisions[start:stop])
        assert len(acc) == 15
        assert acc.compute() == expected
        acc.reset()
        for p, r, i, d in zip(preds, refs, ignores, decisions):
            acc.add(p, r, i, d)
        assert acc.compute() == expected


# ----------------------------------------------------------------------------------------------- errors
def test_bad_inputs_raise_value_errors_naming_the_problem():
    with pytest.raises(ValueError, match=r"\(4, 4\) != reference shape \(5, 5\)"):
        ciou([TOP], [np.zeros((5, 5), bool)])
    with pytest.raises(ValueError, match=r"Ignore mask shape \(3, 3\) != reference shape \(4, 4\)"):
        ciou([TOP], [TOP], ignore_masks=[np.zeros((3, 3), bool)])
    with pytest.raises(ValueError, match=r"2-D mask \(H, W\), got ndarray of shape \(2, 4, 4\)"):
        ciou([np.zeros((2, 4, 4), bool)], [TOP])
    with pytest.raises(ValueError, match=r"RGB\(A\) image"):
        ciou([np.zeros((4, 4, 3), bool)], [TOP])
    with pytest.raises(ValueError, match=r"cover 3 pixels but 'size' \[4, 4\] has 16"):
        ciou([TOP], [{"size": [4, 4], "counts": [1, 2]}])
    with pytest.raises(ValueError, match=r"single 2-D mask of shape \(4, 4\).*\[mask\]"):
        ciou(TOP, TOP)
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        ciou([TOP, TOP], [TOP])
    with pytest.raises(ValueError, match="1 no_target_predictions for 2 samples"):
        ciou([TOP, TOP], [TOP, TOP], no_target_predictions=[True])
    with pytest.raises(ValueError, match="read as a list of instance masks"):
        ciou([[[0, 1], [1, 0]]], [TOP])
    with pytest.raises(ValueError, match="pass \\[\\] for a sample with no instances"):
        ciou([None], [TOP])
    with pytest.raises(ValueError, match=r"`protocol` must be one of .*'refcoco'"):
        SegmentationMetricAccumulator(protocol="refcoco")
    with pytest.raises(ValueError, match=r"`empty_policy` must be one of .*'nan'"):
        SegmentationMetricAccumulator(empty_policy="nan")
    with pytest.raises(ValueError, match=r"`pr_thresholds` must lie in \[0, 1\], got \[50.0\]"):
        SegmentationMetricAccumulator(pr_thresholds=(50,))
    with pytest.raises(ValueError, match="No samples to score"):
        SegmentationMetricAccumulator().compute()


def test_a_failed_batch_adds_nothing():
    acc = SegmentationMetricAccumulator()
    with pytest.raises(ValueError, match=r"Prediction shape \(4, 4\) != reference shape \(5, 5\)"):
        acc.update([TOP, TOP], [TOP, np.zeros((5, 5), bool)])
    assert len(acc) == 0


def test_docstring_examples():
    failures, attempted = doctest.testmod(F, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert attempted >= 2 and failures == 0
