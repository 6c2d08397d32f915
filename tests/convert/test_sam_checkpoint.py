"""load_sam_checkpoint: an original (tiny) segment_anything Sam saved as .pth -> transformers SamModel, with parity."""

import argparse
from functools import partial

import pytest
import torch
from transformers import SamModel, SamVisionModel

from segcompass.convert.sam import (
    convert_sam_state_dict,
    infer_sam_config,
    load_sam_checkpoint,
    sam_state_dict_for_mask_path,
)
from segcompass.modules.mask_decoder import HeatmapMaskDecoder
from segcompass.testing import segment_anything_modeling, tiny_sam_config

IMAGE, PATCH, WIDTH, HIDDEN = 64, 8, 32, 32  # image side, patch, encoder width, prompt/decoder width
GRID = IMAGE // PATCH  # 8: embedding grid; heatmaps and masks are 4 * GRID = 32


@pytest.fixture(scope="module")
def original_sam():
    """A tiny original `Sam` (ImageEncoderViT + PromptEncoder + MaskDecoder) with every weight moved off its init."""
    modeling = segment_anything_modeling() or pytest.skip("segment-anything is not installed (pip install .[test])")
    torch.manual_seed(2)
    sam = modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, depth=2, num_heads=2, mlp_ratio=2.0, out_chans=HIDDEN,
            qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=4,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=HIDDEN, image_embedding_size=(GRID, GRID), input_image_size=(IMAGE, IMAGE), mask_in_chans=16
        ),
        mask_decoder=modeling.MaskDecoder(
            transformer_dim=HIDDEN,
            transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=HIDDEN, mlp_dim=64, num_heads=2),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=32,
        ),
    )
    with torch.no_grad():
        for parameter in sam.parameters():  # pos_embed / rel_pos start at 0, LayerNorms at 1 / 0
            parameter.add_(0.2 * torch.randn_like(parameter))
    return sam.eval()


@pytest.fixture(scope="module")
def checkpoint(original_sam, tmp_path_factory):
    path = tmp_path_factory.mktemp("sam") / "sam_vit_tiny.pth"
    torch.save(original_sam.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def converted(checkpoint):
    state_dict, config = load_sam_checkpoint(checkpoint, config=tiny_sam_config())
    model = SamModel(config).eval()
    result = model.load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model, state_dict, config


def test_image_embeddings_match_original(original_sam, converted):
    model, state_dict, config = converted
    pixel_values = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        expected = original_sam.image_encoder(pixel_values)  # (2, C, h, w)
        vision = SamVisionModel(config.vision_config).eval()
        vision.load_state_dict({k: v for k, v in state_dict.items() if k.startswith("vision_encoder.")}, strict=True)
        from_vision_model = vision(pixel_values).last_hidden_state
    from_sam_model = model.get_image_embeddings(pixel_values)
    assert expected.shape == (2, HIDDEN, GRID, GRID)
    torch.testing.assert_close(from_sam_model, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(from_vision_model, expected, atol=1e-4, rtol=1e-4)


def test_point_prompts_match_original(original_sam, converted):
    """Full SamModel (point/box embeddings, no-mask embedding, multimask) against the original components."""
    model, _, _ = converted
    pixel_values = torch.randn(2, 3, IMAGE, IMAGE)
    points = torch.rand(2, 3, 2) * IMAGE  # (B, N, 2) in input-image pixels
    labels = torch.tensor([[1, 0, 1], [1, 1, 0]])
    with torch.no_grad():
        embeddings = original_sam.image_encoder(pixel_values)
        outputs = model(pixel_values=pixel_values, input_points=points[:, None], input_labels=labels[:, None])
        for b in range(2):  # the original decoder takes one image at a time
            one = slice(b, b + 1)
            sparse, dense = original_sam.prompt_encoder(points=(points[one], labels[one]), boxes=None, masks=None)
            expected_masks, expected_iou = original_sam.mask_decoder(
                embeddings[one], original_sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True
            )  # (1, 3, 4h, 4w), (1, 3)
            torch.testing.assert_close(outputs.pred_masks[b, 0], expected_masks[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(outputs.iou_scores[b, 0], expected_iou[0], atol=1e-4, rtol=1e-4)


def test_mask_path_matches_original(original_sam, converted):
    _, state_dict, config = converted
    decoder = HeatmapMaskDecoder(config).eval()
    report = decoder.load_sam_state_dict(state_dict)
    assert not report.missing_keys and not report.unexpected_keys
    image_embeddings = torch.randn(2, HIDDEN, GRID, GRID)
    heatmap_logits = 3 * torch.randn(2, 6, 4 * GRID, 4 * GRID)
    with torch.no_grad():
        mask_logits, iou_scores = decoder(image_embeddings, heatmap_logits)
        for b in range(2):
            sparse, dense = original_sam.prompt_encoder(points=None, boxes=None, masks=heatmap_logits[b].unsqueeze(1))
            expected, expected_iou = original_sam.mask_decoder(
                image_embeddings[b : b + 1], original_sam.prompt_encoder.get_dense_pe(), sparse, dense, False
            )  # (K, 1, 4h, 4w), (K, 1)
            torch.testing.assert_close(mask_logits[b], expected[:, 0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(iou_scores[b], expected_iou[:, 0], atol=1e-5, rtol=1e-5)


def test_mask_path_from_original_names_without_image_encoder(original_sam, converted):
    """A state dict with only prompt_encoder.* / mask_decoder.* in original names (the authors' refseg_modules.pt)."""
    _, state_dict, config = converted
    partial_original = {k: v for k, v in original_sam.state_dict().items() if not k.startswith("image_encoder.")}
    from_original = sam_state_dict_for_mask_path(partial_original)
    assert from_original.keys() == sam_state_dict_for_mask_path(state_dict).keys()
    HeatmapMaskDecoder(config).load_state_dict(from_original, strict=True)


def test_mask_path_reports_missing_and_unexpected(converted, caplog):
    _, state_dict, _ = converted
    broken = {k: v for k, v in state_dict.items() if not k.startswith("prompt_encoder.mask_embed.conv1.")}
    with pytest.raises(ValueError, match="mask_embed.conv1.weight"):
        sam_state_dict_for_mask_path(broken)
    extra = dict(state_dict, **{"segcompass_head.weight": torch.zeros(1)})
    selected = sam_state_dict_for_mask_path(extra)
    assert "segcompass_head.weight" not in selected and not any(k.startswith("vision_encoder.") for k in selected)


@pytest.mark.parametrize(
    ("width", "depth", "name", "heads", "global_attn"),
    [
        (768, 12, "vit_b", 12, [2, 5, 8, 11]),
        (1024, 24, "vit_l", 16, [5, 11, 17, 23]),
        (1280, 32, "vit_h", 16, [7, 15, 23, 31]),
    ],
)
def test_infer_variant(width, depth, name, heads, global_attn):
    # Only shapes matter for inference: a (width, 1, 1, 1) patch-embed weight and one key per block.
    state_dict = {"image_encoder.patch_embed.proj.weight": torch.zeros(width, 1, 1, 1)}
    state_dict |= {f"image_encoder.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(depth)}
    config = infer_sam_config(state_dict)
    vision = config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (width, depth, heads)
    assert list(vision.global_attn_indexes) == global_attn
    assert (vision.image_size, vision.patch_size, vision.output_channels) == (1024, 16, 256)
    assert config.mask_decoder_config.layer_norm_eps == 1e-5


def test_unknown_size_needs_config(checkpoint):
    with pytest.raises(ValueError, match="config=SamConfig"):
        load_sam_checkpoint(checkpoint)


def test_config_mismatch(checkpoint):
    config = tiny_sam_config()
    config.vision_config.num_hidden_layers = 3
    with pytest.raises(ValueError, match="depth"):
        load_sam_checkpoint(checkpoint, config=config)


def test_missing_file(tmp_path):
    path = tmp_path / "sam_vit_h_4b8939.pth"
    with pytest.raises(ValueError, match="does not exist") as error:
        load_sam_checkpoint(path)
    assert str(path) in str(error.value)


def test_not_a_sam_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match="image_encoder") as error:
        load_sam_checkpoint(path)
    assert str(path) in str(error.value)


def test_not_weights_only_loadable(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1), "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_sam_checkpoint(path)


def test_unknown_keys_are_rejected():
    with pytest.raises(ValueError, match="not part of the original SAM"):
        convert_sam_state_dict({"mask_decoder.hf_token.weight": torch.zeros(1)})
