"""ImagePositionEmbedding: absolute cell positions added to Qwen2.5-VL's merged image tokens (a hook on its vision
tower), zero at initialisation, saved with the model, frozen with the vision tower, copied with the backbone."""

import copy
import math

import pytest
import torch
from transformers import AutoModel

from segcompass import SegCompassConfig
from segcompass.modules.image_positions import ImagePositionEmbedding, cell_centres
from segcompass.testing import tiny_backbone_image_inputs
from segcompass.training.freezing import freeze_backbone_through_hook_layer, policy_parameters
from segcompass.training.optim import build_param_groups


def test_cell_centres_are_row_major_per_image_and_frame():
    grid = torch.tensor([[1, 4, 6], [2, 2, 2]])  # 2 x 3 merged cells; then 2 frames of 1 x 1
    centres = cell_centres(grid, merge=2)
    assert centres.shape == (6 + 2, 2)
    expected = [[0.25, 1 / 6], [0.25, 0.5], [0.25, 5 / 6], [0.75, 1 / 6], [0.75, 0.5], [0.75, 5 / 6],
                [0.5, 0.5], [0.5, 0.5]]
    torch.testing.assert_close(centres, torch.tensor(expected))


def test_embedding_adds_a_projection_of_fourier_features():
    module = ImagePositionEmbedding(hidden_size=5, num_frequencies=2)
    tokens = torch.randn(6, 5)
    grid = torch.tensor([[1, 4, 6]])
    assert torch.equal(module(tokens, grid, 2), tokens)  # zero-initialised
    torch.nn.init.normal_(module.proj.weight)
    y, x = 0.25, 1 / 6  # the first cell
    angles = torch.tensor([math.pi * y, 2 * math.pi * y, math.pi * x, 2 * math.pi * x])
    features = torch.cat([angles[:2].sin(), angles[:2].cos(), angles[2:].sin(), angles[2:].cos()])
    torch.testing.assert_close(module(tokens, grid, 2)[0], tokens[0] + module.proj.weight @ features)
    with pytest.raises(ValueError, match=r"image_grid_thw \[\[1, 4, 4\]\] describes 4 merged image tokens but the "
                                         r"vision tower returned 6"):
        module(tokens, torch.tensor([[1, 4, 4]]), 2)
    with pytest.raises(ValueError, match="`num_frequencies` must be >= 1, got 0"):
        ImagePositionEmbedding(hidden_size=5, num_frequencies=0)


def test_a_model_with_image_positions_starts_as_the_backbone_and_learns_where_tokens_are(
        tiny_checkpoint, tiny_processor, tmp_path):
    plain = AutoModel.from_pretrained(tiny_checkpoint).eval()
    grown, info = AutoModel.from_pretrained(tiny_checkpoint, image_position_frequencies=3, output_loading_info=True)
    grown.eval()
    assert set(info["missing_keys"]) == {"image_positions.proj.weight"}
    assert torch.equal(grown.image_positions.proj.weight, torch.zeros(grown.config.get_text_config().hidden_size, 12))
    inputs = tiny_backbone_image_inputs(tiny_processor)
    with torch.no_grad():
        before = plain.backbone(**inputs).logits
        torch.testing.assert_close(grown.backbone(**inputs).logits, before, rtol=0, atol=0)
        torch.nn.init.normal_(grown.image_positions.proj.weight)
        moved = grown.backbone(**inputs).logits
        assert not torch.allclose(moved, before)
        text_only = {"input_ids": inputs["input_ids"][:, -4:], "attention_mask": inputs["attention_mask"][:, -4:]}
        torch.testing.assert_close(grown.backbone(**text_only).logits, plain.backbone(**text_only).logits)
        # a frozen copy of the backbone (the anchor's and GRPO's reference) keeps the positions it was copied with
        reference = copy.deepcopy(grown.backbone)
        torch.nn.init.zeros_(grown.image_positions.proj.weight)
        torch.testing.assert_close(reference(**inputs).logits, moved)
        torch.testing.assert_close(grown.backbone(**inputs).logits, before)
        torch.nn.init.normal_(grown.image_positions.proj.weight)
        moved = grown.backbone(**inputs).logits
    grown.save_pretrained(tmp_path)
    reloaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and reloaded.config.image_position_frequencies == 3
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval().backbone(**inputs).logits, moved)


def test_image_positions_train_with_the_backbone_and_freeze_with_the_vision_tower(tiny_checkpoint):
    model = AutoModel.from_pretrained(tiny_checkpoint, image_position_frequencies=2)
    positions = model.image_positions.proj.weight
    assert any(p is positions for p in policy_parameters(model))
    groups = build_param_groups(model, 1e-4, 0.01, {"backbone": 0.5, "slot_mapper": 80.0})
    group = [g for g in groups if any(p is positions for p in g["params"])]
    assert [g["name"] for g in group] == ["image_positions/decay"] and group[0]["lr"] == pytest.approx(0.5e-4)
    freeze_backbone_through_hook_layer(model)
    assert not positions.requires_grad and not any(p is positions for p in policy_parameters(model))


@pytest.mark.parametrize("value,match", [(-1, r"got -1"), (True, r"got True"), (1.5, r"got 1\.5")])
def test_config_refuses_bad_frequencies(value, match):
    with pytest.raises(ValueError, match=r"`image_position_frequencies` must be an int >= 0 .*" + match):
        SegCompassConfig.from_preset("tiny", image_position_frequencies=value)


def test_config_refuses_image_positions_on_llava():
    with pytest.raises(ValueError, match=r"`image_position_frequencies=2` is for a Qwen2.5-VL backbone.*'llava'"):
        SegCompassConfig.from_preset("tiny-llava", image_position_frequencies=2)
