"""The one ground-truth reader (segcompass.training.targets) and the scoring helpers of reward_scores."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from segcompass.training import reward_scores
from segcompass.training.reward_scores import mask_stack
from segcompass.training.targets import decode_masks, ground_truth_on_grid, masks_on_grid, rle_key
from segcompass.utils.masks import encode_rle


def _instances(height=6, width=10):
    masks = np.zeros((2, height, width), dtype=bool)
    masks[0, :3, :4] = True
    masks[1, 2:, 5:] = True
    return masks  # (G, H, W)


def test_rle_and_array_give_the_same_targets():
    masks = _instances()
    forms = {
        "rle list": [encode_rle(m) for m in masks],
        "bool array": masks,
        "uint8 0/255": masks.astype(np.uint8) * 255,
        "tensor": torch.from_numpy(masks),
        "bf16 tensor": torch.from_numpy(masks).bfloat16(),
        "list of arrays": list(masks),
        "mixed": [encode_rle(masks[0]), masks[1]],
        "nested lists": masks.astype(int).tolist(),
    }
    expected = decode_masks(forms["rle list"])
    assert expected.shape == (2, 6, 10) and expected.dtype == np.float32
    for name, form in forms.items():
        np.testing.assert_array_equal(decode_masks(form), expected, err_msg=name)
        for letterbox in (True, False):
            torch.testing.assert_close(masks_on_grid(form, (8, 8), letterbox=letterbox),
                                       masks_on_grid(forms["rle list"], (8, 8), letterbox=letterbox), msg=name)
        torch.testing.assert_close(ground_truth_on_grid(form, (6, 10), (8, 8)),
                                   masks_on_grid(forms["rle list"], (8, 8)), msg=name)


def test_layouts_empty_and_soft_masks():
    wide = np.zeros((2, 4), dtype=bool)
    wide[:, :2] = True  # left half of a 2×4 image
    letterboxed = masks_on_grid([encode_rle(wide)], (4, 4))  # (1, 4, 4): image in the top 2 rows
    stretched = masks_on_grid([encode_rle(wide)], (4, 4), letterbox=False)  # image stretched to 4×4
    assert letterboxed.shape == stretched.shape == (1, 4, 4)
    assert float(letterboxed.sum()) == 4.0 and float(letterboxed[0, 2:].sum()) == 0.0
    assert float(stretched.sum()) == 8.0
    assert masks_on_grid([], (4, 4)).shape == (0, 4, 4) and decode_masks([]).shape == (0, 0, 0)
    soft = np.full((4, 4), 0.25)
    torch.testing.assert_close(masks_on_grid(soft, (4, 4)), torch.full((1, 4, 4), 0.25))  # at the grid: as is
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        decode_masks(np.full((1, 4, 4), 2.0))
    with pytest.raises(ValueError, match="different sizes"):
        decode_masks([np.zeros((4, 4)), np.zeros((4, 5))])
    with pytest.raises(ValueError, match="None"):
        decode_masks(None)
    with pytest.raises(ValueError, match="original resolution"):
        ground_truth_on_grid([np.zeros((4, 5))], (4, 4), (4, 4))


def test_rle_key_and_the_decode_cache(monkeypatch):
    from segcompass.training import targets

    masks = _instances()
    rows = [[encode_rle(m) for m in masks] for _ in range(3)]  # equal annotations, separate objects
    assert rle_key(rows[0]) == rle_key(rows[1]) is not None
    assert rle_key(masks) is None and rle_key([]) is None
    assert rle_key(encode_rle(masks[0])) == rle_key([encode_rle(masks[0])])
    calls = []
    real = targets.decode_rle
    monkeypatch.setattr(targets, "decode_rle", lambda rle: calls.append(1) or real(rle))
    cache: dict = {}
    out = [masks_on_grid(row, (4, 4), cache=cache) for row in rows]
    assert len(calls) == 2 and len(cache) == 1  # two instances, decoded once for the three rows
    assert all(torch.equal(out[0], o) for o in out[1:])
    masks_on_grid(rows[0], (4, 4))  # no cache: decoded again
    assert len(calls) == 4


def test_mask_stack_forms_and_errors():
    assert mask_stack(np.zeros((2, 3)), "x").shape == (1, 2, 3)
    assert mask_stack([[[1, 0]], [[0, 1]]], "x").shape == (2, 1, 2)
    assert mask_stack(torch.ones(2, 2, 2, dtype=torch.bool), "x").dtype == torch.float32
    with pytest.raises(ValueError, match=r"`x` must have shape \(G, H, W\)"):
        mask_stack(np.zeros((1, 1, 2, 2)), "x", "G")
    with pytest.raises(ValueError, match="tensor, numpy array or nested list"):
        mask_stack("mask", "x")


def test_reward_scores_docstring_examples():
    result = doctest.testmod(reward_scores, extraglobs={"torch": torch}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
