"""Bad-input corpus of the GRPO rewards: :mod:`segcompass.training.reward_scores` (mask score, combined score, rollout
IoU), the TRL adapters of :mod:`segcompass.training.rewards` and the ground-truth reader
:mod:`segcompass.training.targets`.

Each row feeds one malformed input (wrong shapes / dtypes, NaN probabilities, confidences outside [0, 1], empty or
wrongly typed completions, broken ground truth) and expects the correct reward or a ValueError naming the value and
the fix. A reward that is silently NaN, above 1, or computed from a string iterated character by character would
train the policy on garbage.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from bad_input_cases import Case, Raises, Returns, ids, run_case

from segcompass.training import (
    combined_reward_score,
    format_reward,
    format_reward_score,
    mask_reward,
    mask_reward_score,
    segmentation_reward,
)
from segcompass.training.reward_scores import rollout_iou
from segcompass.training.targets import decode_masks, ground_truth_on_grid, image_hw, mask_hw, masks_on_grid

NAN = float("nan")
CLEAN = "<think>the mug left of the sink</think><REF_POS>"
P = torch.zeros(2, 4, 4)
P[0, :2] = 1.0  # slot 0 covers the top half
G = torch.zeros(1, 4, 4)
G[0, :2] = 1.0  # one instance: the top half
MASK_REWARD = mask_reward.with_threshold(0.5)  # the GRPO trainer gives the defaults the model's threshold
SEGMENTATION_REWARD = segmentation_reward.with_threshold(0.5)


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[Path], Callable[[], Any]]:
    return lambda tmp_path: lambda: fn(*args, **kwargs)


def equals(expected: Any) -> Returns:
    def check(result: Any) -> None:
        if isinstance(expected, list):
            assert result == pytest.approx(expected)
        else:
            assert result == pytest.approx(expected), result

    return Returns(check)


def nan_at(values: list[float], at: tuple[int, ...]) -> torch.Tensor:
    t = torch.tensor(values, dtype=torch.float32)
    t[at] = NAN
    return t


CASES = [
    # mask_reward_score: probabilities
    Case("mask-score/probs-nan", call(mask_reward_score, torch.full((1, 4, 4), NAN), None, G),
         Raises(ValueError, r"`pred_probs` contains 16 NaN value\(s\).*sigmoid")),
    Case("mask-score/probs-one-nan", call(mask_reward_score, nan_at([[[0.2, 0.5], [0.5, 0.5]]], (0, 0, 0)), None,
                                          torch.ones(1, 2, 2)),
         Raises(ValueError, r"`pred_probs` contains 1 NaN value\(s\)")),
    Case("mask-score/probs-logits", call(mask_reward_score, torch.full((1, 4, 4), 3.0), None, G),
         Raises(ValueError, r"`pred_probs` must hold values in \[0, 1\], got \[3, 3\].*not logits")),
    Case("mask-score/probs-inf", call(mask_reward_score, torch.full((1, 4, 4), float("inf")), None, G),
         Raises(ValueError, r"`pred_probs` must hold values in \[0, 1\], got \[inf, inf\]")),
    Case("mask-score/probs-none", call(mask_reward_score, None, None, G),
         Raises(ValueError, r"`pred_probs` is None; pass a \(K, H, W\) probability tensor")),
    Case("mask-score/probs-string", call(mask_reward_score, "0.5", None, G),
         Raises(ValueError, r"`pred_probs` must be a tensor, numpy array or nested list of numbers, got str")),
    Case("mask-score/probs-complex", call(mask_reward_score, torch.ones(1, 4, 4, dtype=torch.complex64), None, G),
         Raises(ValueError, r"`pred_probs` has dtype torch\.complex64")),
    Case("mask-score/probs-4d", call(mask_reward_score, P[None], None, G),
         Raises(ValueError, r"`pred_probs` must have shape \(K, H, W\) or \(H, W\), got \(1, 2, 4, 4\)")),
    Case("mask-score/probs-1d", call(mask_reward_score, torch.zeros(4), None, G),
         Raises(ValueError, r"`pred_probs` must have shape \(K, H, W\) or \(H, W\), got \(4,\)")),
    Case("mask-score/probs-no-pixels", call(mask_reward_score, torch.zeros(1, 0, 0), None, torch.zeros(1, 0, 0)),
         Raises(ValueError, r"`pred_probs` has no pixels \(H, W\) = \(0, 0\)")),
    Case("mask-score/probs-ragged-list", call(mask_reward_score, [[0.1, 0.2], [0.3]], None, G),
         Raises(ValueError, r"`pred_probs` must be a tensor, numpy array or nested list of numbers")),
    Case("mask-score/probs-bool-is-binary", call(mask_reward_score, G.bool(), None, G), equals(1.0)),
    # ground truth
    Case("mask-score/gt-nan", call(mask_reward_score, P[:1], None, torch.full((1, 4, 4), NAN)),
         Raises(ValueError, r"`gt_masks` contains 16 NaN value\(s\)")),
    Case("mask-score/gt-0-255", call(mask_reward_score, P[:1], None, G * 255),
         Raises(ValueError, r"`gt_masks` must hold values in \[0, 1\], got \[0, 255\].*mask != 0")),
    Case("mask-score/gt-none", call(mask_reward_score, P[:1], None, None),
         Raises(ValueError, r"`gt_masks` is None; pass a \(G, H, W\) tensor")),
    Case("mask-score/gt-size-mismatch", call(mask_reward_score, P, None, torch.zeros(1, 3, 3)),
         Raises(ValueError, r"`gt_masks` has spatial size \(3, 3\) but `pred_probs` is \(4, 4\).*masks_on_grid")),
    # confidences
    Case("mask-score/conf-nan", call(mask_reward_score, P, [0.2, NAN], G),
         Raises(ValueError, r"`confidences` contains 1 NaN value\(s\)")),
    Case("mask-score/conf-above-one", call(mask_reward_score, P, [1.5, 0.2], G),
         Raises(ValueError, r"`confidences` must hold values in \[0, 1\], got \[0\.2, 1\.5\].*sigmoid")),
    Case("mask-score/conf-negative", call(mask_reward_score, P, [-0.1, 0.2], G),
         Raises(ValueError, r"`confidences` must hold values in \[0, 1\], got \[-0\.1, 0\.2\]")),
    Case("mask-score/conf-wrong-length", call(mask_reward_score, P, [0.9], G),
         Raises(ValueError, r"`confidences` has 1 values but `pred_probs` has K = 2 slots")),
    Case("mask-score/conf-strings", call(mask_reward_score, P, ["a", "b"], G),
         Raises(ValueError, r"`confidences` must be a tensor, numpy array or nested list of numbers")),
    Case("mask-score/threshold-string", call(mask_reward_score, P, None, G, confidence_threshold="0.5"),
         Raises(ValueError, r"`confidence_threshold` is a probability threshold in \[0, 1\], got '0\.5'")),
    Case("mask-score/threshold-nan", call(mask_reward_score, P, None, G, confidence_threshold=NAN),
         Raises(ValueError, r"`confidence_threshold` is a probability threshold in \[0, 1\], got nan")),
    Case("mask-score/multi-object-string", call(mask_reward_score, P, None, G, multi_object="no"),
         Raises(ValueError, r"`multi_object` must be None, True or False, got 'no'")),
    # the empty-side rules (correct values)
    Case("mask-score/no-slots-no-targets", call(mask_reward_score, torch.zeros(0, 4, 4), None, torch.zeros(0, 4, 4)),
         equals(1.0)),
    Case("mask-score/no-slots-one-target", call(mask_reward_score, torch.zeros(0, 4, 4), None, G), equals(0.0)),
    Case("mask-score/no-kept-slot-no-target", call(mask_reward_score, P, [0.1, 0.2], torch.zeros(0, 4, 4)),
         equals(1.0)),
    Case("mask-score/matched", call(mask_reward_score, P, [0.9, 0.1], G), equals(1.0)),
    # combined score
    Case("combined/nan-format", call(combined_reward_score, NAN, 0.5),
         Raises(ValueError, r"`format_score` must be a number in \[0, 1\], got nan")),
    Case("combined/mask-above-one", call(combined_reward_score, 1.0, 2.0),
         Raises(ValueError, r"`mask_score` must be a number in \[0, 1\], got 2\.0")),
    Case("combined/string-score", call(combined_reward_score, "1", 0.5),
         Raises(ValueError, r"`format_score` must be a number in \[0, 1\], got '1'")),
    Case("combined/none-score", call(combined_reward_score, None, 0.5),
         Raises(ValueError, r"`format_score` must be a number in \[0, 1\], got None")),
    Case("combined/negative-weight", call(combined_reward_score, 1.0, 0.5, format_weight=-1.0),
         Raises(ValueError, r"`format_weight` must be a finite number >= 0, got -1\.0")),
    Case("combined/nan-weight", call(combined_reward_score, 1.0, 0.5, mask_weight=NAN),
         Raises(ValueError, r"`mask_weight` must be a finite number >= 0, got nan")),
    Case("combined/paper-weights", call(combined_reward_score, 0.9, 0.5), equals(0.62)),
    # format score and the TRL adapters
    Case("format/none", call(format_reward_score, None), Raises(ValueError, r"expects the response text as a str")),
    Case("format/empty-string", call(format_reward_score, ""), equals(0.0)),
    Case("format-reward/completions-none", call(format_reward, completions=None),
         Raises(ValueError, r"`completions` must be a list with one completion per row, got NoneType")),
    Case("format-reward/completions-string", call(format_reward, completions=CLEAN),
         Raises(ValueError, r"`completions` must be a list with one completion per row, got str")),
    Case("format-reward/no-completions", call(format_reward, completions=[]), equals([])),
    Case("format-reward/completion-number", call(format_reward, completions=[5]),
         Raises(ValueError, r"A completion must be a str or a chat list of messages, got int")),
    Case("format-reward/content-none", call(format_reward, completions=[[{"role": "assistant", "content": None}]]),
         Raises(ValueError, r"Unsupported message content of type NoneType")),
    Case("format-reward/text-part-none", call(format_reward, completions=[[{"role": "assistant", "content": [
        {"type": "text", "text": None}]}]]),
         Raises(ValueError, r"a text part's 'text' must be a str, got NoneType")),
    Case("format-reward/chat-and-plain", call(format_reward, completions=[
        CLEAN, [{"role": "assistant", "content": [{"type": "text", "text": CLEAN}]}]]), equals([1.0, 1.0])),
    Case("mask-reward/completions-none", call(mask_reward, completions=None, pred_masks=[P], masks=[G]),
         Raises(ValueError, r"`completions` must be a list with one completion per row, got NoneType")),
    Case("mask-reward/completions-string", call(mask_reward, completions="abc", pred_masks=[P] * 3, masks=[G] * 3),
         Raises(ValueError, r"`completions` must be a list with one completion per row, got str")),
    Case("mask-reward/masks-not-a-list", call(mask_reward, completions=["a"], pred_masks=[P], masks=5),
         Raises(ValueError, r"`masks` must be a list with one entry per completion, got int")),
    Case("mask-reward/no-completions", call(mask_reward, completions=[], pred_masks=[], pred_confidences=[],
                                            masks=[]), equals([])),
    Case("mask-reward/rle-counts-null", call(MASK_REWARD, completions=["a"], pred_masks=[P], pred_confidences=[
        [0.9, 0.1]], masks=[[{"size": [4, 4], "counts": [None]}]]),
         Raises(ValueError, r"masks\[0\]\[0\]: RLE 'counts' list must hold non-negative integers, got None")),
    Case("mask-reward/rle-size-string", call(MASK_REWARD, completions=["a"], pred_masks=[P], pred_confidences=[
        [0.9, 0.1]], masks=[[{"size": "4x4", "counts": "x"}]]),
         Raises(ValueError, r"masks\[0\]\[0\]: RLE 'size' must be \[H, W\] with two non-negative ints, got '4x4'")),
    Case("mask-reward/gt-nan", call(MASK_REWARD, completions=["a"], pred_masks=[P], pred_confidences=[[0.9, 0.1]],
                                    masks=[np.full((1, 4, 4), NAN)]),
         Raises(ValueError, r"masks\[0\]\[0\]: float ground-truth masks must lie in \[0, 1\], got NaN")),
    Case("mask-reward/rle-ground-truth", call(MASK_REWARD, completions=["a"], pred_masks=[P],
                                              pred_confidences=[[0.9, 0.1]],
                                              masks=[[{"size": [4, 4], "counts": [0, 2, 2, 2, 2, 2, 2, 2, 2]}]]),
         equals([1.0])),
    Case("mask-reward/threshold-unset", call(mask_reward, completions=["a"], pred_masks=[P],
                                             pred_confidences=[[0.9, 0.1]], masks=[G]),
         Raises(ValueError, r"mask_reward has no confidence threshold .*model\.config\.confidence_threshold")),
    Case("mask-reward/threshold-out-of-range", call(lambda: type(mask_reward)(confidence_threshold=2.0)),
         Raises(ValueError, r"`confidence_threshold` must be None .* or a probability in \[0, 1\], got 2\.0")),
    Case("segmentation-reward/completion-number", call(segmentation_reward, completions=[5], pred_masks=[P],
                                                       pred_confidences=[[0.9, 0.1]], masks=[G]),
         Raises(ValueError, r"A completion must be a str or a chat list of messages, got int")),
    Case("segmentation-reward/clean", call(SEGMENTATION_REWARD, completions=[CLEAN], pred_masks=[P],
                                           pred_confidences=[[0.9, 0.1]], masks=[G]), equals([1.0])),
    # rollout IoU
    Case("rollout-iou/conf-nan", call(rollout_iou, P, torch.tensor([NAN, 0.1]), G),
         Raises(ValueError, r"`confidences` contains 1 NaN value\(s\)")),
    Case("rollout-iou/gt-size-mismatch", call(rollout_iou, P, torch.tensor([0.9, 0.1]), torch.zeros(1, 3, 3)),
         Raises(ValueError, r"`gt` has spatial size \(3, 3\) but `pred_probs` is \(4, 4\)")),
    Case("rollout-iou/matched", call(rollout_iou, P, torch.tensor([0.9, 0.1]), G), equals(1.0)),
    # the ground-truth reader
    Case("targets/ragged-nested-list", call(decode_masks, [[[1, 0], [1]]], "row 3"),
         Raises(ValueError, r"row 3\[0\]: cannot read a mask from a ragged nested list")),
    Case("targets/rle-size-none", call(mask_hw, {"size": None, "counts": "x"}, "row 3"),
         Raises(ValueError, r"row 3: RLE 'size' must be \[H, W\] with two non-negative ints, got None")),
    Case("targets/rle-size-one-value", call(ground_truth_on_grid, [{"size": [2], "counts": "x"}], (2, 2), (4, 4)),
         Raises(ValueError, r"row masks\[0\]: RLE 'size' must be \[H, W\] with two non-negative ints, got \[2\]")),
    Case("targets/grid-huge", call(masks_on_grid, [np.ones((4, 4))], (10**6, 10**6)),
         Raises(ValueError, r"`grid` must be two ints in \[1, 8192\], got \(1000000, 1000000\)")),
    Case("targets/grid-string", call(masks_on_grid, [np.ones((4, 4))], "ab"),
         Raises(ValueError, r"`grid` must be two ints in \[1, 8192\], got 'ab'")),
    Case("targets/image-1d", call(image_hw, np.zeros(3), "row 3"),
         Raises(ValueError, r"row 3: an image array must be \(H, W\) or \(H, W, C\), got shape \(3,\)")),
    Case("targets/soft-mask-kept-soft", call(decode_masks, [np.full((2, 2), 0.25)]),
         Returns(lambda a: np.testing.assert_array_equal(a, np.full((1, 2, 2), 0.25, np.float32)))),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_rewards_bad_input(case: Case, tmp_path: Path) -> None:
    run_case(case, tmp_path)


def test_corpus_size() -> None:
    assert len(CASES) >= 15
