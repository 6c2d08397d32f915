"""refine_sam_grid: the same SAM input in smaller patches, every weight carried over, the refiner started again."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

from segcompass import SegCompassForReasoningSegmentation
from segcompass.modules.mask_refiner import LOGIT_BOUND
from segcompass.testing import tiny_segcompass_config, tiny_text_inputs
from segcompass.training.sam_grid import refine_sam_grid, resample_relative_positions

ENCODER = "vision_encoder.vision_encoder."


def build(**overrides):
    torch.manual_seed(0)
    return SegCompassForReasoningSegmentation(tiny_segcompass_config(**overrides)).eval()


def test_resampled_tables_read_the_old_table_at_the_scaled_distance():
    table = torch.arange(7.0)[:, None].repeat(1, 2) ** 2  # distances -3..3, value (d + 3)^2
    new = resample_relative_positions(table, 2, 15)  # distances -7..7 in half patches
    torch.testing.assert_close(new[7 + 2 * torch.arange(-3, 4)], table)  # even distances: the old entries exactly
    torch.testing.assert_close(new[8], (table[3] + table[4]) / 2)  # half a patch: halfway (linear)
    torch.testing.assert_close(new[[0, 14]], table[[0, 6]])  # beyond the old ends: clamped


def test_a_refined_grid_carries_every_weight_and_round_trips(tmp_path):
    model = build(mask_refiner_hidden_size=8, mask_confidence_hidden_size=8)
    torch.nn.init.normal_(model.mask_refiner.layers[-1].weight, std=0.5)  # a trained refiner
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    refined = refine_sam_grid(model, 4)
    for name, tensor in model.state_dict().items():  # the given model is untouched
        assert torch.equal(tensor, before[name]), name
    config, old = refined.config, model.config
    assert (old.image_embedding_size, old.mask_size, config.image_embedding_size, config.mask_size) == (8, 32, 16, 64)
    assert config.sam_input_size == 64 and config.sam_config.vision_config.window_size == 8
    assert config.sam_config.prompt_encoder_config.image_embedding_size == 16
    assert not refined.training and refined.mask_refiner.pixel_scale == 1

    # the patch projection on a patch == the old one on the patch upsampled twice (nearest)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    new_projection = refined.vision_encoder.vision_encoder.patch_embed.projection
    old_projection = model.vision_encoder.vision_encoder.patch_embed.projection
    with torch.no_grad():
        torch.testing.assert_close(new_projection(pixels),
                                   old_projection(F.interpolate(pixels, scale_factor=2, mode="nearest")))
    state = refined.state_dict()
    assert state[ENCODER + "pos_embed"].shape == (1, 16, 16, 32)
    for layer, old_length, new_length in ((0, 7, 15), (1, 15, 31)):  # windowed (4 -> 8 patches), global (8 -> 16)
        name = f"{ENCODER}layers.{layer}.attn.rel_pos_h"
        assert before[name].shape[0] == old_length and state[name].shape[0] == new_length
        centre, old_centre = (new_length - 1) // 2, (old_length - 1) // 2
        steps = torch.arange(-old_centre, old_centre + 1)
        torch.testing.assert_close(state[name][centre + 2 * steps], before[name][old_centre + steps])
    converted = ("patch_embed.projection.weight", "pos_embed", "rel_pos_h", "rel_pos_w")
    for name, tensor in before.items():
        if not name.startswith("mask_refiner.") and not name.endswith(converted):
            assert torch.equal(state[name], tensor), name

    # the refiner starts again as the identity at the new pixel block; the model runs at the new grid
    ids, mask = tiny_text_inputs(config, [7, 5])
    with torch.no_grad():
        out = refined(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
        plain = refine_sam_grid(model, 4, mask_refiner_hidden_size=0)(
            input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
    assert out.mask_logits.shape == (2, 3, 64, 64) and out.image_embeddings.shape == (2, 32, 16, 16)
    torch.testing.assert_close(out.mask_logits, LOGIT_BOUND * torch.tanh(plain.mask_logits / LOGIT_BOUND))
    refined.save_pretrained(tmp_path)
    reloaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and reloaded.config.mask_size == 64
    with torch.no_grad():
        again = reloaded.eval()(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
    assert torch.equal(again.mask_logits, out.mask_logits)


@pytest.mark.parametrize("bad", [8, 3, 16, 0, 2.0, True])
def test_patch_sizes_that_do_not_refine_the_grid_are_refused(bad):
    with pytest.raises(ValueError, match=r"`patch_size` must be an int that divides the current SAM patch side 8 and "
                                         r"is smaller \(e\.g\. 4 for twice the grid\), got "):
        refine_sam_grid(build(), bad)


def test_a_model_without_a_sam_encoder_is_refused():
    with pytest.raises(ValueError, match="refine_sam_grid needs a SegCompass model with a SAM image encoder, got "
                                         "Linear"):
        refine_sam_grid(torch.nn.Linear(2, 2), 4)
