"""The evaluate modules (loaded offline by path) agree with segcompass.metrics.functional."""

import doctest
import math
import os

import evaluate
import numpy as np
import pytest
import torch

import segcompass.metrics
from segcompass.metrics import reasoning_segmentation_metrics
from segcompass.utils.masks import encode_rle


def _split(seed=0, n=10):
    rng = np.random.default_rng(seed)
    preds, refs, ignores, decisions = [], [], [], []
    for i in range(n):
        h, w = int(rng.integers(3, 10)), int(rng.integers(3, 10))
        refs.append(rng.random((h, w)) < (0.0 if i % 4 == 0 else 0.4))
        preds.append(rng.random((h, w)) < (0.0 if i % 3 == 0 else 0.5))
        ignores.append(rng.random((h, w)) < 0.15 if i % 2 else None)
        decisions.append(i % 5 == 0)
    return preds, refs, ignores, decisions


def test_modules_load_by_path_as_the_right_classes(modules):
    assert [type(m).__name__ for m in modules.values()] == ["CIoU", "GIoU", "ReasoningSegmentation"]
    for module in modules.values():
        assert "cIoU" in module.description or "gIoU" in module.description
        assert "lai2024lisa" in module.citation


def test_hand_computed_case(modules):
    gt = np.zeros((4, 4), bool)
    gt[:2] = True  # 8 px
    pred = np.zeros((4, 4), bool)
    pred[:1] = True  # 4 px inside gt
    preds, refs = [pred, [], pred], [gt, [], []]
    # I: 4, 0, 0 | U: 8, 0, 4 | IoU: 0.5, 1 (both empty), 0
    assert modules["ciou"].compute(predictions=preds, references=refs) == {"ciou": 4 / 12}
    assert modules["giou"].compute(predictions=preds, references=refs) == {"giou": pytest.approx(1.5 / 3)}
    result = modules["all"].compute(predictions=preds, references=refs)
    assert result["n_acc"] == 0.5 and result["t_acc"] == 1.0 and result["pr@0.5"] == 1.0


@pytest.mark.parametrize(
    "options",
    [{}, {"protocol": "rela"}, {"protocol": "gsva", "empty_policy": "skip"}, {"empty_policy": "zero", "eval_size": 6}],
)
def test_modules_equal_the_plain_functions(modules, options):
    preds, refs, ignores, decisions = _split()
    expected = reasoning_segmentation_metrics(
        preds, refs, ignore_masks=ignores, no_target_predictions=decisions, **options
    )
    kwargs = dict(predictions=preds, references=refs, ignore_masks=ignores, no_target_predictions=decisions)
    assert modules["all"].compute(**kwargs, **options) == expected
    assert modules["ciou"].compute(**kwargs, **options) == {"ciou": expected["ciou"]}
    assert modules["giou"].compute(**kwargs, **options) == {"giou": expected["giou"]}


def test_optional_columns_may_be_left_out(modules):
    preds, refs, _, _ = _split(seed=3)
    assert modules["all"].compute(predictions=preds, references=refs) == reasoning_segmentation_metrics(preds, refs)


def test_add_batch_and_add_equal_one_shot(modules):
    preds, refs, ignores, decisions = _split(seed=1, n=11)
    expected = reasoning_segmentation_metrics(preds, refs, ignore_masks=ignores, no_target_predictions=decisions)
    metric = modules["all"]
    for start in range(0, 8, 4):
        stop = start + 4
        metric.add_batch(
            predictions=preds[start:stop],
            references=refs[start:stop],
            ignore_masks=ignores[start:stop],
            no_target_predictions=decisions[start:stop],
        )
    for p, r, i, d in zip(preds[8:], refs[8:], ignores[8:], decisions[8:]):
        metric.add(prediction=p, reference=r, ignore_masks=i, no_target_predictions=d)
    assert metric.compute() == expected


def test_input_forms_through_evaluate(modules):
    preds, refs, ignores, _ = _split(seed=2)
    expected = modules["all"].compute(predictions=preds, references=refs, ignore_masks=ignores)
    as_torch = [torch.from_numpy(p.astype(np.float32)) for p in preds]
    as_instances = [[encode_rle(r)] if r.any() else [] for r in refs]  # dataset-schema style
    as_rle_ignores = [None if i is None else encode_rle(i) for i in ignores]
    result = modules["all"].compute(predictions=as_torch, references=as_instances, ignore_masks=as_rle_ignores)
    assert result == expected


def test_bad_inputs_raise_value_errors(modules):
    good = np.zeros((4, 4), bool)
    with pytest.raises(ValueError, match=r"2-D mask \(H, W\), got ndarray of shape \(1, 2, 4, 4\)"):
        modules["ciou"].add_batch(predictions=[np.zeros((1, 2, 4, 4), bool)], references=[good])
    with pytest.raises(ValueError, match=r"cover 6 pixels but 'size' \[2, 2\] has 4"):
        modules["ciou"].add(prediction=good, reference={"size": [2, 2], "counts": "06"})
    with pytest.raises(ValueError, match=r"\(4, 4\) != reference shape \(5, 5\)"):
        modules["ciou"].compute(predictions=[good], references=[np.zeros((5, 5), bool)])
    # A failed call leaves nothing behind: the next computation sees only its own samples.
    full = np.ones((4, 4), bool)
    assert modules["ciou"].compute(predictions=[full], references=[full]) == {"ciou": 1.0}


def test_load_by_file_path_and_combine(modules):
    by_file = evaluate.load(os.path.join(segcompass.metrics.CIOU, "ciou.py"), keep_in_memory=True)
    combined = evaluate.combine([by_file, modules["giou"]])
    gt = np.zeros((4, 4), bool)
    gt[:2] = True
    assert combined.compute(predictions=[gt, []], references=[gt, gt]) == {"ciou": 8 / 16, "giou": 0.5}


def test_all_empty_split_gives_nan_where_undefined(modules):
    result = modules["all"].compute(predictions=[[]], references=[[]], empty_policy="skip")
    assert math.isnan(result["ciou"]) and math.isnan(result["giou"]) and math.isnan(result["t_acc"])
    assert result["n_acc"] == 1.0


def test_documented_examples_run(modules):
    for module in modules.values():
        parser = doctest.DocTestParser()
        test = parser.get_doctest(module.inputs_description, {}, type(module).__name__, None, 0)
        assert test.examples, type(module).__name__
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        runner.run(test)
        assert runner.failures == 0, type(module).__name__
