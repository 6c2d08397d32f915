"""The mask reward ranks a group's completions the way the evaluation metric ranks them.

GRPO only uses the order of the rewards inside a group (one sample, several completions), so the reward must order
completions of the same sample as the evaluation would: the prediction is the union of the slots whose confidence
passes the model's threshold (``prediction.keep_and_union``), scored by the sample's IoU (what gIoU averages) and by
cIoU. Each sample below gets hand-made slot sets (a correct one, shifted ones, an extra confident slot, a missed
instance, a duplicate slot, a slot only the tuned threshold keeps, ...); the reward and the metric must agree on the
order of every pair whose metric differs by more than 0.02.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from segcompass.metrics import ciou, giou
from segcompass.prediction import keep_and_union
from segcompass.training.rewards import MaskReward

SIDE = 16
K = 4
THRESHOLD = 0.15  # a tuned model threshold (not 0.5): slots at 0.3 count at evaluation
FG, BG = 0.9, 0.04  # a confident model's mask probabilities inside / outside its object
OFF = 0.02  # confidence of an unused slot


def box(top: int, left: int, height: int, width: int) -> np.ndarray:
    mask = np.zeros((SIDE, SIDE), dtype=bool)
    mask[top : top + height, left : left + width] = True
    return mask


def slots(*pairs: tuple[np.ndarray | None, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask or None, confidence)`` per used slot -> ``(K, H, W)`` probabilities and ``(K,)`` confidences; the
    unused slots hold a faint random blob at confidence ``OFF``."""
    rng = np.random.default_rng(len(pairs))
    probs, confs = [], []
    for mask, conf in pairs:
        probs.append(np.where(mask, FG, BG) if mask is not None else np.full((SIDE, SIDE), BG))
        confs.append(conf)
    while len(probs) < K:
        probs.append(rng.uniform(0.0, 0.3, (SIDE, SIDE)))
        confs.append(OFF)
    return torch.tensor(np.stack(probs), dtype=torch.float32), torch.tensor(confs, dtype=torch.float32)


SINGLE = [box(3, 3, 6, 6)]  # one target (36 px)
MULTI = [box(1, 1, 4, 5), box(9, 8, 5, 6)]  # two targets (20 + 30 px)
NONE: list[np.ndarray] = []  # no target


def shifted(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    return np.roll(np.roll(mask, dy, 0), dx, 1)


CANDIDATES = {
    "single": (SINGLE, {
        "correct": slots((SINGLE[0], 0.9)),
        "correct, low but kept confidence": slots((SINGLE[0], 0.3)),
        "shifted 1": slots((shifted(SINGLE[0], 1, 1), 0.9)),
        "shifted 3": slots((shifted(SINGLE[0], 3, 2), 0.9)),
        "half": slots((box(3, 3, 3, 6), 0.9)),
        "extra confident slot": slots((SINGLE[0], 0.9), (box(12, 12, 3, 3), 0.8)),
        "extra slot only the tuned threshold keeps": slots((SINGLE[0], 0.9), (box(11, 10, 4, 5), 0.3)),
        "large extra slot": slots((SINGLE[0], 0.9), (box(10, 0, 6, 16), 0.7)),
        "duplicate slot": slots((SINGLE[0], 0.9), (SINGLE[0], 0.8)),
        "split in two slots": slots((box(3, 3, 3, 6), 0.9), (box(6, 3, 3, 6), 0.9)),
        "nothing kept": slots((SINGLE[0], 0.1)),
        "wrong object": slots((box(11, 11, 5, 5), 0.9)),
    }),
    "multi": (MULTI, {
        "correct": slots((MULTI[0], 0.9), (MULTI[1], 0.9)),
        "correct, swapped slots": slots((MULTI[1], 0.9), (MULTI[0], 0.9)),
        "missing the large instance": slots((MULTI[0], 0.9), (MULTI[1], 0.05)),
        "missing the small instance": slots((MULTI[0], 0.05), (MULTI[1], 0.9)),
        "both shifted 1": slots((shifted(MULTI[0], 1, 0), 0.9), (shifted(MULTI[1], 0, 1), 0.9)),
        "one shifted 3": slots((MULTI[0], 0.9), (shifted(MULTI[1], 2, 2), 0.9)),
        "extra confident slot": slots((MULTI[0], 0.9), (MULTI[1], 0.9), (box(0, 12, 3, 3), 0.8)),
        "large extra slot": slots((MULTI[0], 0.9), (MULTI[1], 0.9), (box(6, 0, 3, 16), 0.6)),
        "duplicate slot": slots((MULTI[0], 0.9), (MULTI[1], 0.9), (MULTI[0], 0.9)),
        "one slot over both": slots((MULTI[0] | MULTI[1], 0.9)),
        "nothing kept": slots((MULTI[0], 0.1), (MULTI[1], 0.1)),
    }),
    "no target": (NONE, {
        "nothing kept": slots((box(2, 2, 4, 4), 0.1)),
        "small slot kept": slots((box(2, 2, 2, 2), 0.9)),
        "slot only the tuned threshold keeps": slots((box(2, 2, 4, 4), 0.3)),
    }),
}


def _gt_tensor(instances: list[np.ndarray]) -> torch.Tensor:
    if not instances:
        return torch.zeros(0, SIDE, SIDE)
    return torch.tensor(np.stack(instances), dtype=torch.float32)


def _prediction(probs: torch.Tensor, confs: torch.Tensor) -> np.ndarray:
    mask, _ = keep_and_union(probs.numpy() > 0.5, confs.numpy(), THRESHOLD)  # what evaluation predicts
    return mask


def _reference(instances: list[np.ndarray]) -> np.ndarray:
    return np.logical_or.reduce(instances) if instances else np.zeros((SIDE, SIDE), dtype=bool)


def _scores(sample: str):
    """``{candidate: (reward, sample IoU via gIoU, cIoU)}`` for one sample, the metrics on that one sample."""
    instances, candidates = CANDIDATES[sample]
    reward = MaskReward(confidence_threshold=THRESHOLD)
    names = list(candidates)
    rewards = reward(completions=["x"] * len(names), pred_masks=[candidates[n][0] for n in names],
                     pred_confidences=[candidates[n][1] for n in names],
                     masks=[_gt_tensor(instances)] * len(names))
    out = {}
    for name, value in zip(names, rewards):
        pred, ref = _prediction(*candidates[name]), _reference(instances)
        out[name] = (value, giou([pred], [ref]), ciou([pred], [ref]))
    return out


@pytest.mark.parametrize("sample", list(CANDIDATES))
def test_reward_orders_completions_as_the_sample_iou_does(sample):
    """Per-sample IoU is what gIoU averages: every pair the metric separates by > 0.02 is ordered the same way by
    the reward (Kendall's tau on those pairs is 1)."""
    scores = _scores(sample)
    disagreements = []
    for (a, (ra, ga, _)), (b, (rb, gb, _)) in itertools.combinations(scores.items(), 2):
        if abs(ga - gb) > 0.02 and (ra - rb) * (ga - gb) <= 0:
            disagreements.append(f"{a!r} (reward {ra:.3f}, IoU {ga:.3f}) vs {b!r} (reward {rb:.3f}, IoU {gb:.3f})")
    assert not disagreements, "\n".join(disagreements)


@pytest.mark.parametrize("sample", ["single", "multi"])
def test_reward_orders_completions_as_ciou_does(sample):
    """cIoU where a per-sample reward can follow it: on the sample alone (ΣI / ΣU of one target sample). Inside a
    full split the order cIoU gives one sample's completions depends on the other samples' areas (it tends to
    ``I - r·U`` with r the rest's ratio), which no score of the sample alone can reproduce."""
    scores = _scores(sample)
    disagreements = []
    for (a, (ra, _, ca)), (b, (rb, _, cb)) in itertools.combinations(scores.items(), 2):
        if abs(ca - cb) > 0.02 and (ra - rb) * (ca - cb) <= 0:
            disagreements.append(f"{a!r} (reward {ra:.3f}, cIoU {ca:.3f}) vs {b!r} (reward {rb:.3f}, cIoU {cb:.3f})")
    assert not disagreements, "\n".join(disagreements)


def test_reward_and_metric_agree_on_what_is_perfect():
    """A completion the metric scores perfectly gets (nearly) the best reward of its group, and the ones it scores
    0 get the group's lowest rewards: the same completions are best and worst."""
    for sample in CANDIDATES:
        scores = _scores(sample)
        best_reward = max(r for r, _, _ in scores.values())
        for name, (reward, iou, _) in scores.items():
            if iou == 1.0:
                assert reward >= best_reward - 0.02, (sample, name, reward, best_reward)
        zero = [r for r, iou, _ in scores.values() if iou == 0.0]
        positive = [r for r, iou, _ in scores.values() if iou > 0.0]
        if zero and positive:
            assert max(zero) < min(positive), (sample, zero, positive)
