"""Bad-input corpus of the metrics: :mod:`segcompass.metrics.functional` (functions and the streaming accumulator)
and the three ``evaluate`` modules (cIoU, gIoU, reasoning segmentation).

Each row feeds one malformed input and expects either the correct metric values or a ValueError naming the value and
the fix, raised by SegCompass (never a raw AttributeError from ``evaluate``, a TypeError from numpy, an allocation
of 931 GiB, or a silently wrong number).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import evaluate
import numpy as np
import pytest
import torch
from bad_input_cases import Case, Raises, Returns, ids, run_case
from PIL import Image

import segcompass.metrics
from segcompass.metrics import (
    SampleStatistics,
    SegmentationMetricAccumulator,
    ciou,
    giou,
    reasoning_segmentation_metrics,
)

NAN = float("nan")
GT = np.zeros((4, 4), bool)
GT[:2] = True  # 8 pixels
HALF = np.zeros((4, 4), bool)
HALF[:1] = True  # 4 pixels inside GT
EMPTY = np.zeros((4, 4), bool)

_MODULES: dict[str, evaluate.EvaluationModule] = {}


def module(name: str) -> evaluate.EvaluationModule:
    """A fresh-state evaluate module (loaded once; ``compute`` empties its buffer)."""
    if name not in _MODULES:
        _MODULES[name] = evaluate.load(getattr(segcompass.metrics, name), keep_in_memory=True)
    return _MODULES[name]


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[Path], Callable[[], Any]]:
    return lambda tmp_path: lambda: fn(*args, **kwargs)


def metric(name: str, method: str = "compute", **kwargs: Any) -> Callable[[Path], Callable[[], Any]]:
    def build(tmp_path: Path) -> Callable[[], Any]:
        m = module(name)
        return lambda: getattr(m, method)(**kwargs)

    return build


def accumulate(*stats: Any) -> Callable[[Path], Callable[[], Any]]:
    def run() -> dict:
        acc = SegmentationMetricAccumulator()
        for s in stats:
            acc.add_statistics(s)
        return acc.compute()

    return lambda tmp_path: run


def streamed(*batches: tuple[list, list], name: str = "REASONING_SEGMENTATION") -> Callable[[Path], Callable[[], Any]]:
    def run() -> dict:
        m = module(name)
        for preds, refs in batches:
            m.add_batch(predictions=preds, references=refs)
        return m.compute()

    return lambda tmp_path: run


def values(**expected: float) -> Returns:
    def check(result: dict) -> None:
        for key, value in expected.items():
            if np.isnan(value):
                assert np.isnan(result[key]), (key, result)
            else:
                assert result[key] == pytest.approx(value), (key, result)

    return Returns(check)


RLE_NULL_COUNTS = {"size": [4, 4], "counts": [None]}
RLE_FLOAT_COUNTS = {"size": [4, 4], "counts": [8.7, 7.3]}  # int() would truncate to 8 + 7 ... or 8 + 8 silently
NO_SAMPLES = r"No samples to score; pass predictions= and references="

CASES = [
    # None / empty
    Case("functional/none-none", call(reasoning_segmentation_metrics, None, None),
         Raises(ValueError, r"`predictions` is None; pass one entry per sample")),
    Case("functional/ciou-none-none", call(ciou, None, None), Raises(ValueError, r"`predictions` is None")),
    Case("functional/giou-references-none", call(giou, [GT], None), Raises(ValueError, r"`references` is None")),
    Case("functional/empty-lists", call(reasoning_segmentation_metrics, [], []),
         Raises(ValueError, r"No samples to score")),
    Case("evaluate/ciou-compute-none-none", metric("CIOU", predictions=None, references=None),
         Raises(ValueError, NO_SAMPLES)),
    Case("evaluate/giou-compute-nothing-added", metric("GIOU"), Raises(ValueError, NO_SAMPLES)),
    Case("evaluate/reasoning-compute-none-none", metric("REASONING_SEGMENTATION", predictions=None, references=None),
         Raises(ValueError, NO_SAMPLES)),
    Case("evaluate/compute-empty-lists", metric("CIOU", predictions=[], references=[]),
         Raises(ValueError, r"No samples to score")),
    Case("evaluate/compute-predictions-only", metric("GIOU", predictions=[GT]),
         Raises(ValueError, r"`references` is None")),
    Case("evaluate/add-batch-none", metric("CIOU", "add_batch", predictions=None, references=None),
         Raises(ValueError, r"`predictions` is None")),
    Case("evaluate/add-prediction-none", metric("GIOU", "add", prediction=None, reference=GT),
         Raises(ValueError, r"The prediction of a sample is None; pass \[\]")),
    # values inside the masks
    Case("functional/nan-mask", call(reasoning_segmentation_metrics, [np.full((4, 4), NAN)], [GT]),
         Raises(ValueError, r"Float mask contains NaN")),
    Case("functional/inf-mask", call(reasoning_segmentation_metrics, [np.full((4, 4), np.inf)], [GT]),
         Raises(ValueError, r"values span \[inf, inf\], outside \[0, 1\].*logits")),
    Case("functional/nan-tensor", call(ciou, [torch.full((4, 4), NAN)], [GT]), Raises(ValueError, r"NaN")),
    Case("functional/negative-int-mask", call(giou, [np.full((4, 4), -1)], [GT]),
         Raises(ValueError, r"negative values \(min -1\).*label_map_to_masks")),
    Case("functional/string-dtype", call(giou, [np.array([["a", "b"], ["c", "d"]])], [EMPTY[:2, :2]]),
         Raises(ValueError, r"Unsupported mask dtype <U1")),
    Case("functional/object-dtype", call(giou, [np.array([[None, 1], [1, 1]], dtype=object)], [EMPTY[:2, :2]]),
         Raises(ValueError, r"Unsupported mask dtype object")),
    Case("functional/uint8-255-is-foreground", call(reasoning_segmentation_metrics,
                                                    [np.where(HALF, 255, 0).astype(np.uint8)], [GT]),
         values(ciou=0.5, giou=0.5, t_acc=1.0)),
    Case("functional/rgb-image-as-mask", call(giou, [Image.new("RGB", (4, 4))], [GT]),
         Raises(ValueError, r"single-channel .*got mode 'RGB'")),
    # shapes
    Case("functional/shape-mismatch", call(ciou, [EMPTY[:3, :3]], [GT]),
         Raises(ValueError, r"Prediction shape \(3, 3\) != reference shape \(4, 4\).*eval_size")),
    Case("functional/ignore-shape-mismatch", call(ciou, [GT], [GT], ignore_masks=[EMPTY[:3, :3]]),
         Raises(ValueError, r"Ignore mask shape \(3, 3\) != reference shape \(4, 4\)")),
    Case("functional/instances-of-different-sizes", call(giou, [[GT, EMPTY[:3, :3]]], [GT]),
         Raises(ValueError, r"Instance mask 1 has shape \(3, 3\)")),
    Case("functional/mask-3d", call(giou, [np.zeros((2, 4, 4), bool)], [GT]),
         Raises(ValueError, r"Expected a 2-D mask \(H, W\).*3 dims")),
    Case("functional/ragged-nested-list", call(giou, [[[1, 0], [1]]], [GT]), Raises(ValueError, r"2-D mask")),
    Case("functional/scalar-tensor-batch", call(giou, torch.tensor(1.0), torch.tensor(1.0)),
         Raises(ValueError, r"`predictions` must .*got a 0-d Tensor")),
    Case("functional/one-dimensional-batch", call(giou, np.zeros(3), np.zeros(3)),
         Raises(ValueError, r"`predictions` must .*\(B, H, W\) batch, got ndarray of shape \(3,\)")),
    Case("functional/length-mismatch", call(ciou, [GT, GT], [GT]),
         Raises(ValueError, r"Got 2 predictions but 1 references")),
    Case("functional/both-empty-lisa-is-one", call(reasoning_segmentation_metrics, [[], EMPTY], [[], []]),
         values(ciou=1.0, giou=1.0, n_acc=1.0, t_acc=NAN, num_no_target=2)),
    # RLE
    Case("functional/rle-foreign-characters", call(giou, [{"size": [4, 4], "counts": "zz"}], [GT]),
         Raises(ValueError, r"character 'z'.*not a compressed COCO RLE")),
    Case("functional/rle-null-counts", call(giou, [RLE_NULL_COUNTS], [GT]),
         Raises(ValueError, r"RLE 'counts' list must hold non-negative integers, got None")),
    Case("functional/rle-float-counts", call(giou, [RLE_FLOAT_COUNTS], [GT]),
         Raises(ValueError, r"RLE 'counts' list must hold non-negative integers, got 8\.7")),
    Case("evaluate/rle-null-counts", metric("CIOU", predictions=[RLE_NULL_COUNTS], references=[GT]),
         Raises(ValueError, r"RLE 'counts' list must hold non-negative integers")),
    # decisions and options
    Case("functional/no-target-decision-string", call(reasoning_segmentation_metrics, [GT], [GT],
                                                      no_target_predictions=["no"]),
         Raises(ValueError, r"no_target_predictions\[0\] = 'no' is not a bool")),
    Case("functional/no-target-decision-nan", call(reasoning_segmentation_metrics, [GT], [GT],
                                                   no_target_predictions=[NAN]),
         Raises(ValueError, r"no_target_predictions\[0\] = nan is not a bool")),
    Case("functional/no-target-decisions-array", call(reasoning_segmentation_metrics, [GT, EMPTY], [GT, []],
                                                      no_target_predictions=np.array([True, True])),
         values(ciou=1.0, giou=1.0, n_acc=1.0, t_acc=0.0)),
    Case("evaluate/no-target-decision-string", metric("REASONING_SEGMENTATION", predictions=[GT], references=[GT],
                                                      no_target_predictions=["yes"]),
         Raises(ValueError, r"no_target_predictions\[0\] = 'yes' is not a bool")),
    Case("functional/eval-size-huge", call(ciou, [GT], [GT], eval_size=10**6),
         Raises(ValueError, r"`eval_size` .*1000000.*at most 8192")),
    Case("functional/eval-size-nan", call(ciou, [GT], [GT], eval_size=(NAN, 4)),
         Raises(ValueError, r"`eval_size` must be None, an int or \(H, W\) of ints, got \(nan, 4\)")),
    Case("functional/pr-thresholds-string", call(reasoning_segmentation_metrics, [GT], [GT], pr_thresholds="0.5"),
         Raises(ValueError, r"`pr_thresholds` must be a sequence of numbers in \[0, 1\], got '0\.5'")),
    Case("functional/pr-thresholds-none", call(reasoning_segmentation_metrics, [GT], [GT], pr_thresholds=None),
         Raises(ValueError, r"`pr_thresholds` must be a sequence of numbers in \[0, 1\], got None")),
    Case("functional/threshold-string", call(SegmentationMetricAccumulator, threshold="high"),
         Raises(ValueError, r"`threshold` is a probability cut in \[0, 1\], got 'high'")),
    Case("evaluate/unknown-option", metric("GIOU", predictions=[GT], references=[GT], protocl="rela"),
         Raises(ValueError, r"unknown option\(s\) \['protocl'\].*protocol")),
    Case("evaluate/bad-protocol", metric("CIOU", predictions=[GT], references=[GT], protocol="x"),
         Raises(ValueError, r"`protocol` must be one of \('lisa', 'rela', 'gsva'\), got 'x'")),
    # accumulator statistics (e.g. gathered from other processes)
    Case("accumulator/intersection-above-union", accumulate(SampleStatistics(5, 3, True, False)),
         Raises(ValueError, r"intersection 5 > union 3")),
    Case("accumulator/negative-counts", accumulate(SampleStatistics(-1, 3, True, False)),
         Raises(ValueError, r"negative pixel count")),
    Case("accumulator/not-statistics", accumulate("x"), Raises(ValueError, r"expects a SampleStatistics, got str")),
    Case("accumulator/valid-statistics", accumulate(SampleStatistics(4, 8, True, False), SampleStatistics(0, 0, False,
                                                                                                          True)),
         values(ciou=0.5, giou=0.75, n_acc=1.0, t_acc=1.0)),
    # streaming through evaluate gives the one-shot values
    Case("evaluate/streamed-batches", streamed(([HALF], [GT]), ([HALF, []], [[], []])),
         values(ciou=4 / 12, giou=1.5 / 3, n_acc=0.5, t_acc=1.0)),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_metrics_bad_input(case: Case, tmp_path: Path) -> None:
    run_case(case, tmp_path)


def test_corpus_size() -> None:
    assert len(CASES) >= 15
