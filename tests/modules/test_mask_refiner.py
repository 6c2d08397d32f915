"""MaskRefiner: starts as the identity, reads each mask cell's own pixel block, trains, and rejects bad shapes."""

import pytest
import torch

from segcompass.modules.mask_refiner import LOGIT_BOUND, MaskRefiner


def inputs(batch=2, slots=3, grid=8, scale=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = 12 * torch.randn(batch, slots, grid, grid, generator=generator)
    pixels = torch.randn(batch, 3, scale * grid, scale * grid, generator=generator)
    return logits, pixels


def test_a_new_refiner_returns_the_bounded_logits_with_their_signs():
    torch.manual_seed(0)
    refiner = MaskRefiner(pixel_scale=2, hidden_size=8)
    logits, pixels = inputs()
    out = refiner(logits, pixels)
    assert out.shape == logits.shape
    torch.testing.assert_close(out, LOGIT_BOUND * torch.tanh(logits / LOGIT_BOUND))
    assert torch.equal(out > 0, logits > 0) and out.abs().max() < LOGIT_BOUND


def test_each_mask_cell_reads_its_own_pixel_block():
    """Space-to-depth, not resampling: changing the pixels of one r x r block moves the output only within the
    receptive field (1 + 2 * sum(dilations) cells) around that block's cell."""
    torch.manual_seed(0)
    refiner = MaskRefiner(pixel_scale=2, hidden_size=8, dilations=(1, 1))
    torch.nn.init.normal_(refiner.layers[-1].weight)
    logits, pixels = inputs(batch=1, slots=1, grid=12)
    base = refiner(logits, pixels)
    moved = pixels.clone()
    moved[..., 10:12, 4:6] += 5.0  # the block of mask cell (5, 2)
    changed = (refiner(logits, moved) - base).abs()[0, 0] > 1e-6  # (12, 12)
    rows, cols = torch.nonzero(changed, as_tuple=True)
    assert changed[5, 2]
    assert rows.min() >= 3 and rows.max() <= 7 and cols.min() >= 0 and cols.max() <= 4


def test_the_refiner_learns_to_move_a_mask_onto_the_bright_block():
    """A few dozen steps teach it to follow the pixels: the target is where the image is bright, the input mask is
    shifted by one cell."""
    torch.manual_seed(0)
    refiner = MaskRefiner(pixel_scale=2, hidden_size=16, dilations=(1, 2))
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.Adam(refiner.parameters(), lr=1e-2)

    def batch():
        target = torch.zeros(8, 1, 12, 12)
        for b in range(8):
            y, x = torch.randint(1, 8, (2,), generator=generator).tolist()
            target[b, 0, y:y + 3, x:x + 3] = 1
        pixels = torch.nn.functional.interpolate(target, scale_factor=2.0).expand(-1, 3, -1, -1)
        logits = 6 * (2 * torch.roll(target, 1, dims=-1) - 1)
        return logits, pixels, target

    def iou(out, target):
        pred = out > 0
        return float((pred & (target > 0)).sum() / (pred | (target > 0)).sum())

    logits, pixels, target = batch()
    before = iou(refiner(logits, pixels), target)
    for _ in range(60):
        logits_, pixels_, target_ = batch()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(refiner(logits_, pixels_), target_)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert before < 0.55 and iou(refiner(logits, pixels), target) > 0.9


def test_bad_shapes_and_settings_raise():
    refiner = MaskRefiner(pixel_scale=2, hidden_size=4)
    logits, pixels = inputs()
    with pytest.raises(ValueError, match=r"\(B, C, 16, 16\) = 2 x the 8x8 mask grid .* got \(2, 3, 32, 32\)"):
        refiner(logits, torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="for 2 images"):
        refiner(logits, pixels[:1])
    with pytest.raises(ValueError, match="dilations=\\[\\]"):
        MaskRefiner(pixel_scale=2, hidden_size=4, dilations=())
