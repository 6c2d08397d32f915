"""The SAM frame (segcompass.sam_frame): valid mask sizes, letterbox, back to the original size — round trips."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import SamImageProcessorPil

from segcompass.sam_frame import (
    letterbox_size,
    masks_to_original_size,
    resize_masks,
    valid_mask_sizes,
    valid_region_mask,
)


def test_valid_mask_sizes_is_the_exact_ceiling():
    # the authors' rule at 1024 -> 256: ceil(h' / 4)
    assert valid_mask_sizes([[1024, 768], [1023, 5]], 256, 1024).tolist() == [[256, 192], [256, 2]]
    assert valid_mask_sizes([[33, 64]], (16, 16), 64).tolist() == [[9, 16]]
    assert valid_mask_sizes(torch.tensor([64, 32]), 48, (96, 96)).tolist() == [[32, 16]]  # one (2,) size
    brute = [[-(-h * 48 // 96), -(-w * 48 // 96)] for h in range(1, 97, 7) for w in range(1, 97, 5)]
    sizes = [[h, w] for h in range(1, 97, 7) for w in range(1, 97, 5)]
    assert valid_mask_sizes(sizes, 48, 96).tolist() == brute


@pytest.mark.parametrize("bad", [[[0, 10]], [[97, 10]], [[1, 2, 3]]])
def test_valid_mask_sizes_rejects_sizes_outside_the_frame(bad):
    with pytest.raises(ValueError, match="reshaped_input_sizes"):
        valid_mask_sizes(bad, 48, 96)


def test_valid_region_mask_marks_the_top_left_block():
    region = valid_region_mask(torch.tensor([[2, 3], [4, 1]]), (4, 4))
    assert region.shape == (2, 4, 4) and region.dtype == torch.bool
    assert region[0].sum() == 6 and region[0, :2, :3].all() and region[1, :, :1].all() and region[1].sum() == 4


@pytest.mark.parametrize("size", [(40, 80), (60, 30), (96, 96)])
def test_ground_truth_to_grid_and_back_round_trips(size):
    """A mask at the original size -> letterboxed grid (resize_masks) -> back (masks_to_original_size) ~ itself,
    and the frame geometry agrees with SAM's own image processor."""
    height, width = size
    frame, grid = 96, 48
    sam = SamImageProcessorPil(size={"longest_edge": frame}, pad_size={"height": frame, "width": frame})
    reshaped = sam(Image.new("RGB", (width, height)), return_tensors="pt")["reshaped_input_sizes"]  # (1, 2)
    assert tuple(reshaped[0].tolist()) == letterbox_size(height, width, (frame, frame))
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[height // 4 : 3 * height // 4, width // 5 : 4 * width // 5] = True
    on_grid = resize_masks(mask[None], (grid, grid), letterbox=True)  # (1, m, m) soft
    valid = valid_mask_sizes(reshaped, grid, frame)[0]
    assert float(on_grid[0, valid[0]:, :].sum()) == 0 and float(on_grid[0, :, valid[1]:].sum()) == 0  # padding
    logits = torch.logit(on_grid.clamp(1e-4, 1 - 1e-4))  # (1, m, m)
    back = masks_to_original_size(logits, reshaped[0], (height, width), frame)[0] > 0  # (H, W)
    iou = float((back & mask).sum() / (back | mask).sum())
    assert back.shape == (height, width) and iou > 0.9


def test_masks_to_original_size_matches_sam_post_processing():
    frame = 64
    sam = SamImageProcessorPil(size={"longest_edge": frame}, pad_size={"height": frame, "width": frame})
    logits = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0))
    ours = masks_to_original_size(logits, (32, 64), (40, 80), frame)
    (theirs,) = sam.post_process_masks([logits[None]], [[40, 80]], [[32, 64]], binarize=False,
                                       pad_size={"height": frame, "width": frame})
    torch.testing.assert_close(ours, theirs[0])
    with pytest.raises(ValueError, match="SAM frame"):
        masks_to_original_size(logits, (65, 10), (40, 80), frame)
    with pytest.raises(ValueError, match="slots, m, m"):
        masks_to_original_size(logits[0], (32, 64), (40, 80), frame)


def test_letterbox_keeps_the_aspect_ratio():
    assert letterbox_size(480, 640, (256, 256)) == (192, 256)
    assert np.isclose(letterbox_size(1000, 10, (96, 96))[1], 1)
