"""Format / mask rewards (paper appendix B.3) and their TRL adapters, against hand-computed values."""

import functools

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

from segcompass.training import (
    FormatReward,
    MaskReward,
    SegmentationReward,
    combined_reward_score,
    completion_text,
    format_reward,
    format_reward_score,
    mask_reward,
    mask_reward_score,
    segmentation_reward,
)

CLEAN = "<think>The mug left of the sink matches the plate.</think><REF_POS>"


# ----------------------------------------------------------------------------------------------- format
@pytest.mark.parametrize(
    "text, expected",
    [
        # the five canonical cases of appendix B.3
        ("The answer is the mug.", 0.0),  # invalid
        (CLEAN, 1.0),  # valid and clean
        ("<think>" + "a" * 2049 + "</think><REF_POS>", 0.9),  # long think
        ("Sure! " + CLEAN, 0.9),  # text before <think>
        (CLEAN + " It is the mug.", 0.9),  # text after the reference token
        # boundaries and whitespace
        ("<think>" + "a" * 2048 + "</think><REF_POS>", 1.0),
        ("  \n" + CLEAN + "\n ", 1.0),
        ("<think>x</think> so the target is <REF_POS>", 1.0),  # text between </think> and the token: allowed
        # end-of-sequence markers are not "text after"
        (CLEAN + "<|im_end|>", 1.0),
        (CLEAN + "</s>", 1.0),
        (CLEAN + "<|im_end|><|endoftext|><|endoftext|>", 1.0),
        (CLEAN + " done<|im_end|>", 0.9),
        # malformed
        ("<think>a</think><think>b</think><REF_POS>", 0.0),  # two think blocks
        ("<think>  \n </think><REF_POS>", 0.0),  # empty think
        ("<think>look at <REF_POS></think>", 0.0),  # token inside think
        ("<think>look at <REF_POS></think><REF_POS>", 0.0),  # one inside, one after: two tokens
        ("<think>unclosed reasoning <REF_POS>", 0.0),  # unclosed think
        ("<think>a</think><REF_POS><REF_POS>", 0.0),  # two reference tokens
        ("<REF_POS><think>a</think>", 0.0),  # token before think
        ("</think>a<think><REF_POS>", 0.0),  # tags in the wrong order
        ("<think>a<think>b</think><REF_POS>", 0.0),  # nested open tag
        ("<think>a</think>", 0.0),  # no reference token
    ],
)
def test_format_reward_score(text, expected):
    assert format_reward_score(text) == expected


def test_format_reward_options():
    assert format_reward_score(CLEAN + "<|im_end|>", eos_markers=()) == 0.9
    gap = "<think>x</think>" + " w" * 11 + " <REF_POS>"
    assert format_reward_score(gap) == 1.0
    assert format_reward_score(gap, max_gap_words=10) == 0.9  # the authors' extra rule, opt-in
    assert format_reward_score("<think>x</think>[SEG]", ref_token="[SEG]") == 1.0
    assert format_reward_score("<think>abcd</think><REF_POS>", think_max_chars=3) == 0.9
    with pytest.raises(ValueError, match="ref_token"):
        format_reward_score(CLEAN, ref_token="")


# ----------------------------------------------------------------------------------------------- mask score
TL = [[1.0, 0.0], [0.0, 0.0]]
BR = [[0.0, 0.0], [0.0, 1.0]]
TOP = [[1.0, 1.0], [0.0, 0.0]]


def test_single_object_soft_iou():
    assert mask_reward_score(torch.tensor([TOP]), None, torch.tensor([TL])) == pytest.approx(0.5)  # 1 / (2 + 1 - 1)
    soft = torch.tensor([[0.5, 0.5], [0.0, 0.0]])  # Σpg = 0.5, Σp = 1, Σg = 1 -> 0.5 / 1.5
    assert mask_reward_score(soft, None, torch.tensor(TL)) == pytest.approx(1 / 3)
    # the prediction is evaluation's: a slot below the threshold is not predicted ("no target") -> 0
    assert mask_reward_score(soft[None], torch.tensor([0.01]), torch.tensor([TL])) == 0.0
    assert mask_reward_score(soft[None], torch.tensor([0.01]), torch.tensor([TL]),
                             confidence_threshold=0.0) == pytest.approx(1 / 3)
    # one target and K = 2: the union of the kept slots, no matching (G = 1 picks the single-object rule)
    two = torch.tensor([TOP, TL])
    assert mask_reward_score(two, [0.2, 0.9], torch.tensor([TL])) == pytest.approx(1.0)
    assert mask_reward_score(two, [0.9, 0.2], torch.tensor([TL]), multi_object=False) == pytest.approx(0.5)
    # both kept: the union is TOP, so the extra slot costs what it costs gIoU (the old rule matched TL and gave 1)
    assert mask_reward_score(two, [0.9, 0.9], torch.tensor([TL])) == pytest.approx(0.5)
    assert mask_reward_score(two, [0.9, 0.9], torch.tensor([TL]), multi_object_rule="matched") == pytest.approx(0.5)
    # the union is the pixelwise maximum: two 0.4 maps stay 0.4 (not predicted at 0.5, as at evaluation)
    half = torch.full((2, 2, 2), 0.4)
    assert mask_reward_score(half, None, torch.ones(1, 2, 2)) == pytest.approx(0.4)


def _slots():
    s0 = TL  # IoU(s0, TL) = 1
    s1 = [[0.0, 0.0], [0.0, 0.5]]  # IoU(s1, BR) = 0.5 / (0.5 + 1 - 0.5) = 0.5
    s2 = [[1.0, 1.0], [1.0, 1.0]]  # IoU(s2, TL) = IoU(s2, BR) = 1 / 4
    return torch.tensor([s0, s1, s2])


def test_multi_object_threshold_matching_and_denominator():
    pred, gt = _slots(), torch.tensor([TL, BR])
    conf = torch.tensor([0.9, 0.6, 0.4])
    # kept: s0, s1 -> pairs (s0, TL) = 1 and (s1, BR) = 0.5 -> mean 0.75
    assert mask_reward_score(pred, conf, gt, multi_object_rule="matched") == pytest.approx(0.75)
    assert mask_reward_score(pred, conf, gt, denominator="matched") == pytest.approx(0.75)  # older spelling
    assert mask_reward_score(pred, conf, gt, denominator="max") == pytest.approx(1.5 / 2)
    # default "union": union of s0, s1 = TL + 0.5·BR vs TL + BR -> 1.5 / (1.5 + 2 - 1.5)
    assert mask_reward_score(pred, conf, gt) == pytest.approx(0.75)
    # all slots kept (no confidences): best assignment s0-TL + s1-BR = 1.5 (s2 instead of s1 would give 1.25)
    assert mask_reward_score(pred, None, gt, multi_object_rule="matched") == pytest.approx(0.75)
    assert mask_reward_score(pred, None, gt, denominator="max") == pytest.approx(1.5 / 3)  # max(K'=3, G=2)
    assert mask_reward_score(pred, None, gt) == pytest.approx(2 / 4)  # s2 fills the union: 2 of its 4 pixels
    # the threshold is on probabilities: 0.55 is kept at 0.5 (a logit >= 0.5 rule would drop it)
    assert mask_reward_score(pred, [0.9, 0.55, 0.1], gt, multi_object_rule="matched") == pytest.approx(0.75)
    assert mask_reward_score(pred, [0.9, 0.55, 0.1], gt, confidence_threshold=0.6,
                             multi_object_rule="matched") == pytest.approx(1.0)  # only s0
    assert mask_reward_score(pred, [0.9, 0.55, 0.1], gt, confidence_threshold=0.6) == pytest.approx(0.5)  # TL of 2
    with pytest.raises(ValueError, match="name different rules"):
        mask_reward_score(pred, conf, gt, multi_object_rule="union", denominator="max")
    with pytest.raises(ValueError, match="multi_object_rule"):
        mask_reward_score(pred, conf, gt, multi_object_rule="hungarian")


def test_multi_object_more_instances_than_kept_slots():
    pred, gt = torch.tensor([TL]), torch.tensor([TL, BR])  # K = 1, G = 2 -> multi-object rule
    assert mask_reward_score(pred, [0.8], gt, multi_object_rule="matched") == pytest.approx(1.0)  # matched pairs
    assert mask_reward_score(pred, [0.8], gt, denominator="max") == pytest.approx(0.5)
    assert mask_reward_score(pred, [0.8], gt) == pytest.approx(0.5)  # the missed instance halves the union IoU


def test_empty_sides():
    pred = _slots()
    no_gt = torch.zeros(0, 2, 2)
    assert mask_reward_score(pred, [0.1, 0.2, 0.3], no_gt) == 1.0  # both empty
    assert mask_reward_score(pred, [0.1, 0.9, 0.3], no_gt) == 0.0  # a kept slot but no target
    assert mask_reward_score(pred, [0.1, 0.2, 0.3], torch.tensor([TL, BR])) == 0.0  # all below threshold, targets
    assert mask_reward_score(pred, None, no_gt) == 0.0  # every slot kept, no target
    # K = 1 with no target follows the multi-object rule too
    assert mask_reward_score(torch.tensor([TL]), [0.3], no_gt) == 1.0


def test_mask_score_validation():
    gt = torch.tensor([TL])
    with pytest.raises(ValueError, match="sigmoid"):
        mask_reward_score(torch.tensor([TL]) * 4 - 2, None, gt)  # logits, not probabilities
    with pytest.raises(ValueError, match="sigmoid"):
        mask_reward_score(_slots(), [2.0, -1.0, 0.0], torch.tensor([TL, BR]))  # confidence logits
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(2, 2\)"):
        mask_reward_score(torch.tensor([TL]), None, torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="K = 3"):
        mask_reward_score(_slots(), [0.5], torch.tensor([TL]))
    with pytest.raises(ValueError, match="multi_object=True"):
        mask_reward_score(torch.tensor([TL]), None, torch.tensor([TL, BR]), multi_object=False)


def test_combined_reward_score():
    assert combined_reward_score(1.0, 0.5) == pytest.approx(0.3 + 0.35)
    assert combined_reward_score(0.9, 1.0, format_weight=0.5, mask_weight=0.5) == pytest.approx(0.95)


# ----------------------------------------------------------------------------------------------- TRL adapters
def _rle(mask: np.ndarray) -> dict:
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(mask.shape), "counts": encoded["counts"].decode("ascii")}


def test_completion_text_forms():
    assert completion_text("abc") == "abc"
    assert completion_text([{"role": "assistant", "content": "abc"}]) == "abc"
    parts = [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]
    assert completion_text([{"role": "assistant", "content": parts}]) == "ab"
    with pytest.raises(ValueError, match="assistant"):
        completion_text([{"role": "user", "content": "x"}])


def test_format_reward_adapter_strings_and_chat_lists():
    completions = [CLEAN, [{"role": "assistant", "content": "Sure. " + CLEAN}], "nothing"]
    out = format_reward(prompts=["p"] * 3, completions=completions, completion_ids=[[1]] * 3, trainer_state=None)
    assert out == [1.0, 0.9, 0.0]
    assert format_reward.__name__ == "format_reward"
    assert FormatReward(name="fmt").__name__ == "fmt"


def test_mask_reward_adapter_ground_truth_forms():
    pred = torch.tensor([TL, BR])  # (K=2, 2, 2)
    conf = torch.tensor([0.9, 0.8])
    big_tl = np.zeros((4, 4), dtype=bool)
    big_tl[:2, :2] = True  # 4×4 original resolution; area-resized to 2×2 it is exactly TL
    big_br = np.zeros((4, 4), dtype=bool)
    big_br[2:, 2:] = True
    gts = [
        [_rle(big_tl), _rle(big_br)],  # SegCompass schema: list of RLEs at original size
        torch.tensor([TL, BR]),  # tensor (G, H, W) on the prediction grid
        [TL],  # one 2-D nested list -> G = 1: single-object rule, the union TL + BR vs TL -> 1 / 2
        [],  # no target, but both slots kept -> 0
        np.stack([big_tl, big_br]).astype(np.uint8) * 255,  # uint8 0/255 array: nonzero is foreground
    ]
    n = len(gts)
    out = mask_reward.with_threshold(0.5)(
        prompts=["p"] * n,
        completions=["x"] * n,
        completion_ids=[[1]] * n,
        pred_masks=[pred] * n,
        pred_confidences=[conf] * n,
        masks=gts,
        image=[None] * n,
    )
    assert out == pytest.approx([1.0, 1.0, 0.5, 0.0, 1.0])
    # the authors' max(K', G) denominator: the same here (row 2 has one target: the single-object rule)
    strict = MaskReward(denominator="max", confidence_threshold=0.5)(completions=["x"] * n, pred_masks=[pred] * n,
                                                                     pred_confidences=[conf] * n, masks=gts)
    assert strict == pytest.approx([1.0, 1.0, 0.5, 0.0, 1.0])
    # the keep threshold decides: at 0.85 only s0 is kept, so rows 2 and 3 change
    high = MaskReward(confidence_threshold=0.85)(completions=["x"] * n, pred_masks=[pred] * n,
                                                 pred_confidences=[conf] * n, masks=gts)
    assert high == pytest.approx([0.5, 0.5, 1.0, 0.0, 0.5])
    # without a threshold (None = the model's, filled in by the GRPO trainer) confidences cannot be applied
    with pytest.raises(ValueError, match=r"no confidence threshold.*with_threshold"):
        mask_reward(completions=["x"], pred_masks=[pred], pred_confidences=[conf], masks=[gts[1]])
    assert mask_reward.confidence_threshold is None and mask_reward.with_threshold(0.2).confidence_threshold == 0.2
    assert MaskReward(confidence_threshold=0.3).with_threshold(0.2).confidence_threshold == 0.3  # explicit wins
    with pytest.raises(ValueError, match=r"`confidence_threshold` must be None .* got 1\.5"):
        MaskReward(confidence_threshold=1.5)


def test_mask_reward_adapter_letterbox_vs_stretch():
    wide = np.zeros((2, 4), dtype=bool)  # original image 2×4 (aspect 1:2); left half is the target
    wide[:, :2] = True
    pred = torch.zeros(1, 4, 4)
    pred[0, :2, :2] = 1.0  # SAM frame: image in the top 2 rows, padding below
    kwargs = dict(completions=["x"], pred_masks=[pred], pred_confidences=[None], masks=[[_rle(wide)]])
    assert MaskReward()(**kwargs) == pytest.approx([1.0])
    # stretched to 4×4 the target is the whole left half (8 px); the prediction covers 4 of them -> 4 / 8
    assert MaskReward(gt_layout="stretch")(**kwargs) == pytest.approx([0.5])


def test_mask_reward_adapter_none_missing_and_lengths():
    pred = torch.tensor([TL])
    out = mask_reward(completions=["a", "b", "c"], pred_masks=[pred, None, pred.numpy()],
                      pred_confidences=None, masks=[[TL], [TL], None])
    assert out == [pytest.approx(1.0), None, None]  # no predicted masks / no annotation -> inapplicable
    with pytest.raises(ValueError, match="pred_masks.*trainer"):
        mask_reward(completions=["a"], masks=[[TL]])
    with pytest.raises(ValueError, match="lengths"):
        mask_reward(completions=["a", "b"], pred_masks=[pred], masks=[[TL], [TL]])


def test_segmentation_reward_combines_and_keeps_masks_for_bad_format():
    pred = _slots()
    conf = torch.tensor([0.9, 0.6, 0.4])
    gt = torch.tensor([TL, BR])
    logged = {}
    completions = [
        [{"role": "assistant", "content": CLEAN + "<|im_end|>"}],  # format 1.0
        [{"role": "assistant", "content": "<think>no token</think>"}],  # format 0.0, mask still scored
    ]
    out = segmentation_reward.with_threshold(0.5)(
        prompts=[[{"role": "user", "content": "q"}]] * 2,
        completions=completions,
        completion_ids=[[1], [2]],
        pred_masks=[pred, pred],
        pred_confidences=[conf, conf],
        masks=[gt, gt],
        log_metric=lambda name, value: logged.__setitem__(name, value),
        log_extra=lambda column, values: None,
        trainer_state=None,
    )
    assert out == pytest.approx([0.3 * 1.0 + 0.7 * 0.75, 0.7 * 0.75])
    assert logged == pytest.approx({"segmentation_reward/format": 0.5, "segmentation_reward/mask": 0.75})
    assert segmentation_reward.__name__ == "segmentation_reward" and mask_reward.__name__ == "mask_reward"
    assert segmentation_reward.with_threshold(0.5).__name__ == "segmentation_reward"
    assert segmentation_reward.confidence_threshold is None  # the module's default is never changed
    custom = SegmentationReward(format_weight=0.5, mask_weight=0.5, confidence_threshold=0.5)
    out = custom(completions=[CLEAN], pred_masks=[pred], pred_confidences=[conf], masks=[gt])
    assert out == pytest.approx([0.5 * 1.0 + 0.5 * 0.75])


def test_repeated_rle_rows_are_decoded_once(monkeypatch):
    from segcompass.training import targets as targets_module

    calls = []
    real = targets_module.decode_rle
    monkeypatch.setattr(targets_module, "decode_rle", lambda rle: calls.append(1) or real(rle))
    big_tl = np.zeros((4, 4), dtype=bool)
    big_tl[:2, :2] = True
    rows = [[_rle(big_tl)] for _ in range(4)]  # one prompt, four generations: separate but equal objects
    out = mask_reward(completions=["x"] * 4, pred_masks=[torch.tensor([TL])] * 4, masks=rows)
    assert out == pytest.approx([1.0] * 4) and len(calls) == 1


def test_training_modules_do_not_import_trl():
    """The training package stays import-light: none of its modules imports trl (the trainer is lazy)."""
    import ast
    from pathlib import Path

    import segcompass.training as training

    for path in Path(training.__file__).parent.glob("*.py"):
        if "trainer" in path.stem or path.stem == "grpo_config":  # subclasses trl.GRPOConfig  # the GRPO trainer module may import trl; it is not imported by __init__
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            assert not any(n == "trl" or n.startswith("trl.") for n in names), f"{path.name} imports {names}"


@pytest.mark.slow
def test_importing_training_package_does_not_load_trl():
    import subprocess
    import sys

    code = "import sys, segcompass.training; print('trl' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


# ----------------------------------------------------------------------------------------------- properties
# Hypothesis, deterministic (derandomize, no example database) and small: each property runs in about a second.
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROPERTY = settings(max_examples=60, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
UNIT = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def _rollout(draw, max_slots: int = 4, max_targets: int = 3):
    """``(pred (K, H, W), confidences (K,), gt (G, H, W))`` with probabilities in [0, 1] and binary ground truth."""
    k, g = draw(st.integers(0, max_slots)), draw(st.integers(0, max_targets))
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    pred = draw(st.lists(st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0]), min_size=k * h * w, max_size=k * h * w))
    gt = draw(st.lists(st.booleans(), min_size=g * h * w, max_size=g * h * w))
    conf = draw(st.lists(UNIT, min_size=k, max_size=k))
    return (torch.tensor(pred, dtype=torch.float32).reshape(k, h, w), torch.tensor(conf, dtype=torch.float32),
            torch.tensor(gt, dtype=torch.float32).reshape(g, h, w))


@PROPERTY
@given(_rollout(), st.sampled_from([None, True]), st.sampled_from(["matched", "max"]), UNIT, st.booleans())
def test_mask_score_is_a_fraction(rollout, multi_object, denominator, threshold, with_confidences):
    pred, conf, gt = rollout  # multi_object=None picks the single-object rule when K = G = 1
    score = mask_reward_score(pred, conf if with_confidences else None, gt, confidence_threshold=threshold,
                              multi_object=multi_object, denominator=denominator)
    assert 0.0 <= score <= 1.0


@PROPERTY
@given(_rollout(max_targets=1), UNIT)
def test_single_object_score_is_a_fraction(rollout, threshold):
    pred, conf, gt = rollout
    if pred.shape[0] == 0:
        pred, conf = torch.zeros(1, *pred.shape[1:]), torch.zeros(1)
    score = mask_reward_score(pred, conf, gt, confidence_threshold=threshold, multi_object=False)
    assert 0.0 <= score <= 1.0


@PROPERTY
@given(_rollout(), st.floats(0.0, 0.99))
def test_both_empty_scores_one(rollout, below):
    """No slot kept (every confidence below the threshold) and no target -> 1.0, whatever the maps hold."""
    pred, _, _ = rollout
    conf = torch.full((pred.shape[0],), below)
    empty = torch.zeros(0, *pred.shape[1:])
    assert mask_reward_score(pred, conf, empty, confidence_threshold=1.0, multi_object=True) == 1.0
    assert mask_reward_score(torch.zeros(0, *pred.shape[1:]), None, empty) == 1.0


@PROPERTY
@given(_rollout(), st.randoms(use_true_random=False), st.sampled_from(["matched", "max"]))
def test_mask_score_is_invariant_to_slot_and_instance_order(rollout, random, denominator):
    pred, conf, gt = rollout
    slots, instances = list(range(pred.shape[0])), list(range(gt.shape[0]))
    random.shuffle(slots)
    random.shuffle(instances)
    kwargs = {"multi_object": True, "denominator": denominator}
    expected = mask_reward_score(pred, conf, gt, **kwargs)
    assert mask_reward_score(pred[slots], conf[slots], gt[instances], **kwargs) == pytest.approx(expected, abs=1e-6)


@PROPERTY
@given(st.lists(st.sampled_from(["<think>", "</think>", "<REF_POS>", "the mug", " ", "\n", "<|im_end|>", "x" * 50]),
                max_size=8))
def test_format_score_takes_three_values(parts):
    text = "".join(parts)
    assert format_reward_score(text) in (0.0, 0.9, 1.0)
    assert format_reward(completions=[text, [{"role": "assistant", "content": text}]]) == [format_reward_score(text)] * 2


@PROPERTY
@given(st.text(alphabet="abcXYZ019 .,;\n\t", min_size=1, max_size=40).filter(str.strip))
def test_clean_format_scores_one(content):
    assert format_reward_score(f"<think>{content}</think><REF_POS>") == 1.0


@PROPERTY
@given(UNIT, UNIT, UNIT)
def test_combined_score_is_a_fraction_and_monotone(format_score, mask_score, format_weight):
    mask_weight = 1.0 - format_weight
    value = combined_reward_score(format_score, mask_score, format_weight=format_weight, mask_weight=mask_weight)
    assert -1e-12 <= value <= 1.0 + 1e-12
    assert combined_reward_score(1.0, mask_score) >= combined_reward_score(format_score, mask_score) - 1e-12
    assert combined_reward_score(format_score, 1.0) >= combined_reward_score(format_score, mask_score) - 1e-12


def test_duplicate_slots_are_dropped_as_evaluation_drops_them():
    """A kept slot copying a more confident one (IoU >= duplicate_iou) is one instance, not two: under the authors'
    max(K', G) rule it no longer costs a share; the trainer fills in the model's duplicate_iou with the threshold."""
    a, b = torch.zeros(8, 8), torch.zeros(8, 8)
    a[:4, :4], b[4:, 4:] = 1.0, 1.0
    copy_of_a = a.clone()
    copy_of_a[4, :4] = 1.0  # IoU 16/20 with a
    pred, gt, conf = torch.stack([a, copy_of_a, b]), torch.stack([a, b]), torch.tensor([0.9, 0.8, 0.7])
    score = functools.partial(mask_reward_score, pred, conf, gt, confidence_threshold=0.5, multi_object_rule="max")
    assert score() == pytest.approx(2 / 3)
    assert score(duplicate_iou=0.5) == pytest.approx(1.0)
    assert score(duplicate_iou=0.9) == pytest.approx(2 / 3)  # IoU 0.8 < 0.9: two instances
    resolved = MaskReward(multi_object_rule="max").with_threshold(0.5, 0.5)
    assert (resolved.confidence_threshold, resolved.duplicate_iou) == (0.5, 0.5)
    out = resolved(completions=["x"], pred_masks=[pred], pred_confidences=[conf], masks=[gt])
    assert out == pytest.approx([1.0])
    assert MaskReward(duplicate_iou=0.9).with_threshold(0.5, 0.5).duplicate_iou == 0.9  # its own rule wins
    assert MaskReward(confidence_threshold=0.3).with_threshold(0.5, 0.5).duplicate_iou is None
    assert SegmentationReward().with_threshold(0.5, 0.5).mask.duplicate_iou == 0.5
    with pytest.raises(ValueError, match=r"`duplicate_iou` must be None .* got 0"):
        MaskReward(duplicate_iou=0)


def test_instance_limits_keep_as_many_slots_as_the_answer_names():
    """``pred_instance_limits`` (the model's ``instance_limits``, passed by the trainer) limit the kept slots as the
    evaluation limits them: an answer naming one object keeps only its most confident slot."""
    a, b = torch.zeros(8, 8), torch.zeros(8, 8)
    a[:4, :4], b[4:, 4:] = 1.0, 1.0
    pred, conf, gt = torch.stack([a, b]), torch.tensor([0.9, 0.8]), torch.stack([a])
    assert mask_reward_score(pred, conf, gt, confidence_threshold=0.5) == pytest.approx(0.5)  # b is a false positive
    assert mask_reward_score(pred, conf, gt, confidence_threshold=0.5, max_instances=1) == pytest.approx(1.0)
    reward = MaskReward(confidence_threshold=0.5)
    out = reward(completions=["x", "y", "z"], pred_masks=[pred] * 3, pred_confidences=[conf] * 3, masks=[gt] * 3,
                 pred_instance_limits=[1, None, 0])
    assert out == pytest.approx([1.0, 0.5, 0.0])
    both = SegmentationReward().with_threshold(0.5)
    limited = both(completions=["x"], pred_masks=[pred], pred_confidences=[conf], masks=[gt], pred_instance_limits=[1])
    assert limited[0] > both(completions=["x"], pred_masks=[pred], pred_confidences=[conf], masks=[gt])[0]
    with pytest.raises(ValueError, match="pred_instance_limits"):
        reward(completions=["x"], pred_masks=[pred], pred_confidences=[conf], masks=[gt], pred_instance_limits=[1, 1])
