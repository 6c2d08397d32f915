"""Property tests (Hypothesis) of cIoU, gIoU and the reasoning-segmentation metric, as functions and as ``evaluate``
modules: values in [0, 1], LISA's both-empty rule, streaming ``add_batch`` == one-shot ``compute``, invariance to the
order of the samples, and the accumulator == the functions == an independent numpy computation.

Deterministic (``derandomize=True``, no example database) and small (each property runs in about a second).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segcompass.metrics import (
    SegmentationMetricAccumulator,
    ciou,
    giou,
    reasoning_segmentation_metrics,
    sample_statistics,
)

PROPERTY = settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FEW = settings(PROPERTY, max_examples=10)  # the evaluate modules write Arrow buffers: slower per example


@st.composite
def samples(draw, max_samples: int = 6, ignore: bool = False):
    """``(predictions, references, ignores)``: per sample a bool (H, W) mask or ``[]`` (no instances) on each side,
    with a good share of empty ones, and optionally an ignore mask (or None)."""
    n = draw(st.integers(1, max_samples))
    preds, refs, ignores = [], [], []
    for _ in range(n):
        h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))

        def mask(h: int, w: int):
            kind = draw(st.sampled_from(["list-empty", "zeros", "random", "random"]))
            if kind == "list-empty":
                return []
            if kind == "zeros":
                return np.zeros((h, w), bool)
            bits = draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w))
            return np.array(bits, bool).reshape(h, w)

        preds.append(mask(h, w))
        refs.append(mask(h, w))
        if ignore and draw(st.booleans()):
            bits = draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w))
            ignores.append(np.array(bits, bool).reshape(h, w))
        else:
            ignores.append(None)
    return preds, refs, ignores


def _dense(x, shape):
    return np.zeros(shape, bool) if isinstance(x, list) else x


def independent(preds, refs, ignores):
    """cIoU, gIoU (LISA: an empty union scores 1) computed here with plain numpy."""
    inters, unions, ious = [], [], []
    for p, r, i in zip(preds, refs, ignores):
        shape = (p if not isinstance(p, list) else r if not isinstance(r, list) else i if i is not None
                 else np.zeros((1, 1))).shape
        p, r = _dense(p, shape), _dense(r, shape)
        keep = np.ones(shape, bool) if i is None else ~i
        inter, union = int((p & r & keep).sum()), int(((p | r) & keep).sum())
        inters.append(inter)
        unions.append(union)
        ious.append(inter / union if union else 1.0)
    total = sum(unions)
    return (sum(inters) / total if total else 1.0), float(np.mean(ious))


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(b[key]), key
        else:
            assert value == pytest.approx(b[key], abs=1e-12), key


# ----------------------------------------------------------------------------------------------- functional
@PROPERTY
@given(samples(ignore=True), st.sampled_from(["lisa", "rela", "gsva"]), st.sampled_from(["one", "zero", "skip"]))
def test_values_are_fractions(data, protocol, empty_policy):
    preds, refs, ignores = data
    result = reasoning_segmentation_metrics(preds, refs, ignore_masks=ignores, protocol=protocol,
                                            empty_policy=empty_policy)
    for key, value in result.items():
        if key.startswith("num_"):
            continue
        assert math.isnan(value) or 0.0 <= value <= 1.0, (key, value)
    assert result["num_samples"] == len(preds)


@PROPERTY
@given(samples(ignore=True))
def test_lisa_values_equal_an_independent_computation(data):
    preds, refs, ignores = data
    expected_ciou, expected_giou = independent(preds, refs, ignores)
    result = reasoning_segmentation_metrics(preds, refs, ignore_masks=ignores)
    assert result["ciou"] == pytest.approx(expected_ciou)
    assert result["giou"] == pytest.approx(expected_giou)
    assert ciou(preds, refs, ignore_masks=ignores) == result["ciou"]
    assert giou(preds, refs, ignore_masks=ignores) == result["giou"]


@PROPERTY
@given(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5), st.booleans(), st.booleans()), min_size=1,
                max_size=6))
def test_both_empty_scores_one_under_lisa(shapes):
    """Empty prediction and empty reference (as ``[]`` or zeros) = IoU 1, so an all-empty split scores 1."""
    preds = [[] if as_list else np.zeros((h, w), bool) for h, w, as_list, _ in shapes]
    refs = [[] if as_list else np.zeros((h, w), bool) for h, w, _, as_list in shapes]
    result = reasoning_segmentation_metrics(preds, refs)
    assert result["ciou"] == 1.0 and result["giou"] == 1.0 and result["n_acc"] == 1.0
    assert math.isnan(result["t_acc"]) and result["num_no_target"] == len(shapes)
    assert reasoning_segmentation_metrics(preds, refs, empty_policy="zero")["giou"] == 0.0
    assert math.isnan(reasoning_segmentation_metrics(preds, refs, empty_policy="skip")["giou"])


@PROPERTY
@given(samples(ignore=True), st.randoms(use_true_random=False))
def test_order_of_samples_does_not_matter(data, random):
    preds, refs, ignores = data
    order = list(range(len(preds)))
    random.shuffle(order)
    before = reasoning_segmentation_metrics(preds, refs, ignore_masks=ignores)
    after = reasoning_segmentation_metrics([preds[i] for i in order], [refs[i] for i in order],
                                           ignore_masks=[ignores[i] for i in order])
    _same(before, after)


@PROPERTY
@given(samples(ignore=True), st.integers(1, 3))
def test_accumulator_streaming_equals_one_shot(data, chunk):
    preds, refs, ignores = data
    expected = reasoning_segmentation_metrics(preds, refs, ignore_masks=ignores)
    batched = SegmentationMetricAccumulator()
    for start in range(0, len(preds), chunk):
        batched.update(preds[start:start + chunk], refs[start:start + chunk], ignores[start:start + chunk])
    _same(batched.compute(), expected)
    one_by_one = SegmentationMetricAccumulator()
    for p, r, i in zip(preds, refs, ignores):
        one_by_one.add(p, r, i)
    _same(one_by_one.compute(), expected)
    from_stats = SegmentationMetricAccumulator()
    for p, r, i in zip(preds, refs, ignores):
        from_stats.add_statistics(sample_statistics(p, r, ignore=i))
    _same(from_stats.compute(), expected)
    iou = one_by_one.per_sample_iou()
    assert ((iou >= 0) & (iou <= 1)).all() and expected["giou"] == pytest.approx(float(iou.mean()))


# ----------------------------------------------------------------------------------------------- evaluate modules
@FEW
@given(samples(max_samples=5), st.integers(1, 3))
def test_modules_streaming_equals_one_shot_and_functional(modules, data, chunk):
    preds, refs, _ = data
    expected = reasoning_segmentation_metrics(preds, refs)
    for name, keys in (("ciou", ["ciou"]), ("giou", ["giou"]), ("all", list(expected))):
        module = modules[name]
        one_shot = module.compute(predictions=preds, references=refs)
        for start in range(0, len(preds), chunk):
            module.add_batch(predictions=preds[start:start + chunk], references=refs[start:start + chunk])
        streamed = module.compute()
        _same(one_shot, {k: expected[k] for k in keys})
        _same(streamed, one_shot)


@FEW
@given(samples(max_samples=5), st.randoms(use_true_random=False))
def test_modules_are_order_independent_and_bounded(modules, data, random):
    preds, refs, _ = data
    order = list(range(len(preds)))
    random.shuffle(order)
    for name in ("ciou", "giou"):
        forward = modules[name].compute(predictions=preds, references=refs)
        shuffled = modules[name].compute(predictions=[preds[i] for i in order], references=[refs[i] for i in order])
        _same(forward, shuffled)
        assert 0.0 <= forward[name] <= 1.0
