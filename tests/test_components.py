"""from_pretrained_components: separately pretrained backbone, SAE and SAM (HF or original .pth) assemble exactly."""

import pytest
import torch
from transformers import AutoModelForImageTextToText, SamConfig, SamModel

from segcompass import SegCompassForReasoningSegmentation, SparseAutoencoder, SparseAutoencoderConfig
from segcompass.testing import segment_anything_modeling, tiny_segcompass_config, tiny_text_inputs


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(1)
    config = tiny_segcompass_config()
    backbone = AutoModelForImageTextToText.from_config(config.backbone_config)
    sae = SparseAutoencoder(SparseAutoencoderConfig(d_in=64, d_sae=256, hook_layer=1))
    sam = SamModel(config.sam_config)
    with torch.no_grad():
        for p in sam.parameters():
            p.add_(0.01 * torch.randn_like(p))  # move away from init so a missed copy is visible
    return config, backbone, sae, sam


def _assert_same(module_a, module_b):
    a, b = module_a.state_dict(), module_b.state_dict()
    for key in b:
        assert torch.equal(a[key], b[key]), key


def test_objects_and_paths_assemble(parts, tmp_path):
    config, backbone, sae, sam = parts
    overrides = dict(num_slots=3, ref_token_id=config.ref_token_id, slot_token_ids=config.slot_token_ids)
    model = SegCompassForReasoningSegmentation.from_pretrained_components(backbone, sae, sam, config_overrides=overrides)
    _assert_same(model.backbone, backbone)
    _assert_same(model.sae, sae)
    assert torch.equal(model.vision_encoder.state_dict()["vision_encoder.patch_embed.projection.weight"],
                       sam.state_dict()["vision_encoder.patch_embed.projection.weight"])
    report = model.component_loading_report
    assert report["backbone"] == {"missing_keys": [], "unexpected_keys": []}
    assert report["vision_encoder"]["missing_keys"] == [] and report["mask_decoder"]["missing_keys"] == []
    # same thing from directories (SAE in SAELens layout)
    backbone.save_pretrained(tmp_path / "backbone")
    sae.save_saelens(tmp_path / "sae")
    sam.save_pretrained(tmp_path / "sam")
    again = SegCompassForReasoningSegmentation.from_pretrained_components(
        tmp_path / "backbone", tmp_path / "sae", tmp_path / "sam", config_overrides=overrides)
    ids, mask = tiny_text_inputs(again.config, [6])
    pixels = torch.randn(1, 3, 64, 64)
    torch.manual_seed(0)
    a = model.eval()(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
    b = again.eval()(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
    torch.testing.assert_close(a.image_embeddings, b.image_embeddings)
    assert torch.equal(a.concept_indices, b.concept_indices)


def test_original_sam_pth(parts, tmp_path):
    config, backbone, sae, _ = parts
    modeling = segment_anything_modeling() or pytest.skip("segment-anything is not installed (pip install .[test])")
    torch.manual_seed(2)
    original = modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, out_chans=32,
            use_rel_pos=True, window_size=4, global_attn_indexes=(1,),
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=32, image_embedding_size=(8, 8), input_image_size=(64, 64), mask_in_chans=8
        ),
        mask_decoder=modeling.MaskDecoder(
            transformer_dim=32, iou_head_hidden_dim=32,
            transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2),
        ),
    ).eval()
    torch.save(original.state_dict(), tmp_path / "sam_vit_tiny.pth")
    overrides = dict(num_slots=3, ref_token_id=config.ref_token_id, slot_token_ids=config.slot_token_ids)
    with pytest.raises(ValueError, match="config"):
        SegCompassForReasoningSegmentation.from_pretrained_components(
            backbone, sae, tmp_path / "sam_vit_tiny.pth", config_overrides=overrides)
    model = SegCompassForReasoningSegmentation.from_pretrained_components(
        backbone, sae, tmp_path / "sam_vit_tiny.pth", sam_config=SamConfig(**config.sam_config.to_dict()),
        config_overrides=overrides).eval()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = model.get_image_embeddings(pixels)
        reference = original.image_encoder(pixels)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
    assert model.component_loading_report["mask_decoder"]["missing_keys"] == []
