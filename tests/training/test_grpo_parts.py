"""The trl-free parts of SegCompass GRPO, tested directly: grpo_data (prompt rule, rollout targets), grpo_rollout
(padding, image-input slicing) and grpo_checkpoint (reference policy, trainer state)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from segcompass.training.grpo_checkpoint import (
    REF_WEIGHTS_NAME,
    checkpoint_global_step,
    load_reference_policy,
    save_reference_policy,
)
from segcompass.training.grpo_data import is_conversational_prompt, rollout_targets
from segcompass.training.grpo_rollout import backbone_image_kwargs, left_pad, right_pad
from segcompass.training.targets import ground_truth_on_grid
from segcompass.utils.masks import encode_rle


def test_conversational_prompt_rule_matches_trl():
    trl_data = pytest.importorskip("trl.data_utils")
    prompts = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "the mug"}]}],
        [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}],
        [{"content": "no role"}],
        "plain text",
        ["a", "b"],
        None,
    ]
    for prompt in prompts:
        assert is_conversational_prompt(prompt) == trl_data.is_conversational({"prompt": prompt}), prompt
    assert not is_conversational_prompt([])  # (trl raises IndexError on an empty list)


def test_rollout_targets_decode_each_prompt_once(monkeypatch):
    from segcompass.training import grpo_data

    mask = np.zeros((6, 8), dtype=bool)
    mask[:3] = True
    image = Image.new("RGB", (8, 6))
    row = {"prompt": [], "image": image, "masks": [encode_rle(mask)]}
    other = {"prompt": [], "image": image, "masks": []}
    calls = []
    real = grpo_data.ground_truth_on_grid
    monkeypatch.setattr(grpo_data, "ground_truth_on_grid", lambda *a: calls.append(1) or real(*a))
    rows = [row, dict(row), other, other]  # G = 2 rollouts of two prompts
    targets = rollout_targets(rows, (4, 4))
    assert len(calls) == 2 and [t.shape for t in targets] == [(1, 4, 4), (1, 4, 4), (0, 4, 4), (0, 4, 4)]
    torch.testing.assert_close(targets[0], ground_truth_on_grid([encode_rle(mask)], (6, 8), (4, 4)))
    with pytest.raises(ValueError, match=r"batch row 1 lacks the column\(s\) \['masks'\]"):
        rollout_targets([row, {"prompt": [], "image": image}], (4, 4))


def test_padding_and_image_input_slices():
    ids, mask = left_pad([[1, 2, 3], [4], []], 0)  # (B, T) = (3, 3)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4], [0, 0, 0]] and mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert right_pad([[1, 2], [3]], 9).tolist() == [[1, 2], [3, 9]]
    assert right_pad([[], []], 9).shape == (2, 1)  # at least one column
    pixel_values = torch.arange(10).float()[:, None]  # (Σ patches, D): rows of 2, 4 and 4 patches
    fields = {"pixel_values": pixel_values, "image_grid_thw": torch.tensor([[1, 1, 2], [1, 2, 2], [1, 2, 2]])}
    sliced = backbone_image_kwargs(fields, 1, 3)
    assert sliced["pixel_values"].flatten().tolist() == list(range(2, 10))
    assert sliced["image_grid_thw"].tolist() == [[1, 2, 2], [1, 2, 2]]
    plain = backbone_image_kwargs({"pixel_values": torch.zeros(3, 3, 4, 4)}, 0, 2)  # (B, C, H, W), e.g. LLaVA
    assert set(plain) == {"pixel_values"} and plain["pixel_values"].shape == (2, 3, 4, 4)


def test_reference_policy_and_trainer_state_files(tmp_path):
    pytest.importorskip("safetensors")
    reference = torch.nn.Linear(3, 2)
    assert not load_reference_policy(reference, str(tmp_path))  # no file
    save_reference_policy(reference, str(tmp_path / "missing"))  # no such checkpoint directory: nothing written
    assert not (tmp_path / "missing").exists()
    save_reference_policy(reference, str(tmp_path))
    assert (tmp_path / REF_WEIGHTS_NAME).is_file()
    fresh = torch.nn.Linear(3, 2)
    assert load_reference_policy(fresh, str(tmp_path)) and torch.equal(fresh.weight, reference.weight)
    assert not load_reference_policy(None, str(tmp_path))  # PEFT / beta = 0: ignored
    assert checkpoint_global_step(str(tmp_path)) is None
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 7}))
    assert checkpoint_global_step(str(tmp_path)) == 7


def test_rollout_decoding_returns_each_rows_instance_limit(monkeypatch):
    """``decode_rollout_masks`` hands the reward functions the model's ``instance_limits`` row by row (in chunks):
    the objects each completion's answer names under ``limit_instances_to_answer``, None when the option is off."""
    from segcompass import SegCompassForReasoningSegmentation
    from segcompass.testing import tiny_segcompass_config
    from segcompass.training import grpo_rollout
    from segcompass.training.grpo_rollout import decode_rollout_masks

    monkeypatch.setattr(grpo_rollout, "backbone_image_kwargs", lambda fields, start, end: {})  # text-only rows
    OPEN, SEP, CLOSE, REF = 7, 8, 9, 100
    torch.manual_seed(0)
    model = SegCompassForReasoningSegmentation(tiny_segcompass_config(
        num_slots=2, answer_item_token_ids=[OPEN, SEP, CLOSE], limit_instances_to_answer=True)).eval()
    slots = model.config.slot_token_ids
    ids = torch.tensor([[11, OPEN, 12, SEP, 13, CLOSE, REF, *slots], [0, 0, 11, OPEN, 12, CLOSE, REF, *slots],
                        [0, 0, 0, 0, 11, 12, REF, *slots]])
    scoring = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    m0 = model.config.mask_size  # the valid region: the whole grid
    with torch.no_grad():
        embeddings = model.get_image_embeddings(torch.zeros(3, 3, 64, 64))
        masks, confidences, limits = decode_rollout_masks(model, scoring, {}, embeddings, torch.tensor([[m0, m0]] * 3),
                                                          chunk=2, device="cpu")
    m = model.config.mask_size
    assert masks.shape == (3, 2, m, m) and confidences.shape == (3, 2)
    assert limits == [2, 1, None]  # two items, one item, no list
    model.config.limit_instances_to_answer = False
    with torch.no_grad():
        assert decode_rollout_masks(model, scoring, {}, embeddings, torch.tensor([[m0, m0]] * 3), chunk=2,
                                    device="cpu")[2] == [None] * 3
