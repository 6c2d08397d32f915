"""The prediction rule (segcompass.prediction): keep the confident slots, take the union."""

import numpy as np
import pytest
import torch

from segcompass.prediction import drop_duplicate_slots, instance_limit, keep_and_union, kept_instances, kept_slots


def masks():
    m = np.zeros((3, 4, 5), dtype=bool)
    m[0, 0, 0] = m[1, 1, 1] = m[2, 2, 2] = True
    return m


def test_kept_slots_is_inclusive_and_type_independent():
    scores = [0.2, 0.5, 0.9]
    assert kept_slots(scores, 0.5) == [1, 2]  # >= threshold
    assert kept_slots(np.asarray(scores, dtype=np.float32), 0.5) == [1, 2]
    assert kept_slots(torch.tensor(scores), 0.5) == [1, 2]
    # float32 0.3 is 0.30000001: the comparison is done in float64, the same for every input type
    assert kept_slots(torch.tensor([0.3]), 0.3) == kept_slots(np.float32([0.3]), 0.3) == [0]
    assert kept_slots(scores, 1.0) == [] and kept_slots(scores, 0.0) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        kept_slots(scores, 1.5)


def test_keep_and_union_numpy_and_torch_agree():
    scores = [0.9, 0.1, 0.7]
    union, kept = keep_and_union(masks(), scores, 0.5)
    assert kept == [0, 2] and union.dtype == bool and union.shape == (4, 5)
    assert union.sum() == 2 and union[0, 0] and union[2, 2] and not union[1, 1]
    t_union, t_kept = keep_and_union(torch.from_numpy(masks()), torch.tensor(scores), 0.5)
    assert t_kept == kept and isinstance(t_union, torch.Tensor) and np.array_equal(t_union.numpy(), union)


def test_nothing_kept_is_an_empty_prediction():
    union, kept = keep_and_union(masks(), [0.1, 0.2, 0.3], 0.5)
    assert kept == [] and union.shape == (4, 5) and not union.any()
    empty, kept = keep_and_union(np.zeros((0, 4, 5), bool), [], 0.5, shape=(7, 8))
    assert kept == [] and empty.shape == (7, 8)
    with pytest.raises(ValueError, match="one per slot"):
        keep_and_union(masks(), [0.9], 0.5)
    with pytest.raises(ValueError, match=r"\(slots, H, W\)"):
        keep_and_union(masks()[0], [0.9], 0.5)


@pytest.mark.parametrize("confidences", [[0.9, float("nan")], torch.tensor([0.2, 1.5]), np.array([-0.1, 0.5])])
def test_confidences_outside_zero_one_are_refused(confidences):
    """NaN (a diverged model) or a logit passed for a probability would otherwise be silently dropped or kept."""
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]; slot\(s\)"):
        kept_slots(confidences, 0.5)


def test_duplicate_slots_are_dropped_most_confident_first():
    """With ``duplicate_iou`` a kept slot that copies a more confident kept slot is not a second instance."""
    m = np.zeros((4, 4, 4), dtype=bool)
    m[0, :2, :2] = True  # instance A
    m[1, :2, :2] = True
    m[1, 2, 0] = True  # A plus one pixel: IoU 4 / 5 with slot 0
    m[2, 2:, 2:] = True  # instance B
    m[3, :2, :1] = True  # half of A: IoU 2 / 4
    scores = [0.6, 0.8, 0.7, 0.9]
    assert drop_duplicate_slots(m, scores, [0, 1, 2, 3], 0.75) == [1, 2, 3]  # slot 0 copies the surer slot 1
    assert drop_duplicate_slots(m, scores, [0, 1, 2, 3], 0.5) == [1, 2, 3]
    assert drop_duplicate_slots(m, scores, [0, 1, 2, 3], 0.4) == [2, 3]  # slot 3 (0.9) first: slot 1 overlaps it 2/5
    assert drop_duplicate_slots(m, scores, [0, 2], 0.5) == [0, 2] and drop_duplicate_slots(m, scores, [2], 0.1) == [2]
    union, kept = keep_and_union(m, scores, 0.65, duplicate_iou=0.75)  # slot 0 is below the threshold anyway
    assert kept == [1, 2, 3] and union.sum() == 5 + 4
    union, kept = keep_and_union(m, scores, 0.5, duplicate_iou=0.75)
    assert kept == [1, 2, 3] and union.sum() == 9  # slot 0's pixels are all in slot 1
    t_union, t_kept = keep_and_union(torch.from_numpy(m), torch.tensor(scores), 0.5, duplicate_iou=0.75)
    assert t_kept == kept and np.array_equal(t_union.numpy(), union)
    assert keep_and_union(m, scores, 0.5)[1] == [0, 1, 2, 3]  # None: the paper's rule, every confident slot
    tie = np.stack([m[0], m[0]])
    assert drop_duplicate_slots(tie, [0.5, 0.5], [0, 1], 0.9) == [0]  # equal scores: the lower index stays
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        drop_duplicate_slots(m, scores, [0, 1], 0.0)
    assert kept_instances(m, scores, 0.5, 0.75) == [1, 2, 3] and kept_instances(None, scores, 0.5) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="kept_instances"):
        drop_duplicate_slots(m, scores, [0, 1], None)


def test_max_instances_keeps_the_most_confident_after_the_threshold_and_the_copies():
    """``max_instances`` (the answer's object count, ``config.limit_instances_to_answer``) keeps at most that many of
    the slots the threshold and the duplicate rule leave, the most confident first, returned ascending."""
    m = masks()
    scores = [0.6, 0.9, 0.7]
    assert kept_instances(m, scores, 0.5, max_instances=2) == [1, 2]
    assert kept_instances(m, scores, 0.5, max_instances=1) == [1]
    assert kept_instances(m, scores, 0.5, max_instances=5) == [0, 1, 2] == kept_instances(m, scores, 0.5)
    assert kept_instances(m, scores, 0.65, max_instances=2) == [1, 2]  # below the threshold: never kept
    assert kept_instances(m, [0.8, 0.8, 0.2], 0.5, max_instances=1) == [0]  # a tie: the lower index
    union, kept = keep_and_union(m, scores, 0.5, max_instances=0)
    assert kept == [] and not union.any()  # "target : ." names nothing: no target
    copy = np.stack([m[0], m[0], m[2]])
    assert kept_instances(copy, [0.9, 0.8, 0.6], 0.5, 0.5, max_instances=2) == [0, 2]  # the copy goes first
    t_union, t_kept = keep_and_union(torch.from_numpy(m), torch.tensor(scores), 0.5, max_instances=1)
    assert t_kept == [1] and t_union.sum() == 1 and bool(t_union[1, 1])
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="max_instances"):
            kept_instances(m, scores, 0.5, max_instances=bad)


def test_instance_limit_reads_one_sample_of_the_model_outputs():
    limits = torch.tensor([2, -1, 0])
    assert [instance_limit(limits, b) for b in range(3)] == [2, None, 0]
    assert instance_limit(None, 1) is None and instance_limit(None) is None  # the option off: no limits at all
    assert instance_limit(3) == 3 and instance_limit(np.int64(1)) == 1 and instance_limit(torch.tensor(4)) == 4
    with pytest.raises(ValueError, match="one count per sample"):
        instance_limit(limits)
    with pytest.raises(ValueError, match="int or None"):
        instance_limit(2.0)
