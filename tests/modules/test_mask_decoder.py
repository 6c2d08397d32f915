"""HeatmapMaskDecoder: parity with segment_anything.modeling, shapes, gradients, valid-region fill, batching."""

import pytest
import torch

from segcompass.convert.sam import convert_sam_state_dict, sam_state_dict_for_mask_path
from segcompass.modules.mask_decoder import (
    PADDING_LOGIT,
    HeatmapMaskDecoder,
    build_sam_image_encoder,
)
from segcompass.testing import segment_anything_modeling, tiny_sam_config

HIDDEN, GRID, MASK_IN_CHANS = 32, 8, 16  # C, h = w, mask_input_channels; heatmaps are 4h x 4w = 32 x 32


def _perturb_(module: torch.nn.Module) -> None:
    """Move every parameter off its init (LayerNorm 1/0, zero biases) so a swapped weight cannot go unnoticed."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))


@pytest.fixture(scope="module")
def original():
    """Tiny original SAM prompt encoder + mask decoder with perturbed weights, and our module with the same weights."""
    modeling = segment_anything_modeling() or pytest.skip("segment-anything is not installed (pip install .[test])")
    torch.manual_seed(1)
    prompt_encoder = modeling.PromptEncoder(
        embed_dim=HIDDEN, image_embedding_size=(GRID, GRID), input_image_size=(64, 64), mask_in_chans=MASK_IN_CHANS
    )
    mask_decoder = modeling.MaskDecoder(
        transformer_dim=HIDDEN,
        transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=HIDDEN, mlp_dim=64, num_heads=2),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=32,
    )
    _perturb_(prompt_encoder)
    _perturb_(mask_decoder)
    prompt_encoder.eval()
    mask_decoder.eval()

    original_state = {f"prompt_encoder.{k}": v for k, v in prompt_encoder.state_dict().items()}
    original_state |= {f"mask_decoder.{k}": v for k, v in mask_decoder.state_dict().items()}
    ours = HeatmapMaskDecoder(tiny_sam_config())
    ours.load_state_dict(sam_state_dict_for_mask_path(convert_sam_state_dict(original_state)), strict=True)
    ours.eval()
    return prompt_encoder, mask_decoder, ours


def _original_per_sample(prompt_encoder, mask_decoder, image_embeddings, heatmap_logits):
    """The authors' loop (official-implementation §1.8): per image, K dense mask prompts, no points or boxes."""
    masks, ious = [], []
    batch_size, num_slots = heatmap_logits.shape[:2]
    for b in range(batch_size):
        sparse, dense = prompt_encoder(points=None, boxes=None, masks=heatmap_logits[b].unsqueeze(1))
        # sparse (K, 0, C), dense (K, C, h, w)
        mask, iou = mask_decoder(
            image_embeddings=image_embeddings[b : b + 1],
            image_pe=prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )  # (K, 1, 4h, 4w), (K, 1)
        masks.append(mask[:, 0])
        ious.append(iou[:, 0])
    return torch.stack(masks), torch.stack(ious)  # (B, K, 4h, 4w), (B, K)


def _inputs(batch_size, num_slots, requires_grad=False):
    image_embeddings = torch.randn(batch_size, HIDDEN, GRID, GRID, requires_grad=requires_grad)
    heatmap_logits = (3 * torch.randn(batch_size, num_slots, 4 * GRID, 4 * GRID)).requires_grad_(requires_grad)
    return image_embeddings, heatmap_logits


def test_parity_with_segment_anything_batched_vs_original_loop(original):
    prompt_encoder, mask_decoder, ours = original
    image_embeddings, heatmap_logits = _inputs(3, 6)
    with torch.no_grad():
        expected_masks, expected_ious = _original_per_sample(
            prompt_encoder, mask_decoder, image_embeddings, heatmap_logits
        )
        mask_logits, iou_scores = ours(image_embeddings, heatmap_logits)
    assert mask_logits.shape == expected_masks.shape == (3, 6, 4 * GRID, 4 * GRID)
    torch.testing.assert_close(mask_logits, expected_masks, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(iou_scores, expected_ious, atol=1e-5, rtol=1e-5)


def test_dense_positional_embedding_matches_original(original):
    prompt_encoder, _, ours = original
    torch.testing.assert_close(ours.get_dense_positional_embeddings(GRID, GRID), prompt_encoder.get_dense_pe())


@pytest.mark.parametrize(("batch_size", "num_slots"), [(1, 1), (3, 6), (1, 6), (3, 1)])
def test_shapes(original, batch_size, num_slots):
    _, _, ours = original
    image_embeddings, heatmap_logits = _inputs(batch_size, num_slots)
    mask_logits, iou_scores = ours(image_embeddings, heatmap_logits)
    assert mask_logits.shape == (batch_size, num_slots, 4 * GRID, 4 * GRID)
    assert iou_scores.shape == (batch_size, num_slots)


def test_batched_equals_per_sample(original):
    _, _, ours = original
    image_embeddings, heatmap_logits = _inputs(3, 6)
    valid_sizes = torch.tensor([[32, 32], [20, 32], [32, 9]])
    with torch.no_grad():
        batched, batched_iou = ours(image_embeddings, heatmap_logits, valid_sizes=valid_sizes)
        for b in range(3):
            one = slice(b, b + 1)
            single, single_iou = ours(image_embeddings[one], heatmap_logits[one], valid_sizes=valid_sizes[one])
            torch.testing.assert_close(batched[b : b + 1], single, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batched_iou[b : b + 1], single_iou, atol=1e-5, rtol=1e-5)


def test_gradients_reach_heatmaps_embeddings_and_decoder():
    ours = HeatmapMaskDecoder(tiny_sam_config())
    image_embeddings, heatmap_logits = _inputs(2, 3, requires_grad=True)
    mask_logits, iou_scores = ours(image_embeddings, heatmap_logits, valid_sizes=[[32, 20], [16, 32]])
    (mask_logits.sigmoid().mean() + iou_scores.mean()).backward()

    assert heatmap_logits.grad is not None and heatmap_logits.grad[0, :, :32, :20].abs().sum() > 0
    assert heatmap_logits.grad[0, :, :, 20:].abs().sum() == 0  # filled with PADDING_LOGIT: no gradient
    assert image_embeddings.grad is not None and image_embeddings.grad.abs().sum() > 0
    trainable = {name: p for name, p in ours.named_parameters() if p.requires_grad}
    assert "shared_embedding.positional_embedding" not in trainable  # a fixed random matrix in SAM
    missing = [name for name, p in trainable.items() if p.grad is None]
    assert not missing, missing
    for name in (
        "mask_embed.conv1.weight",
        "mask_decoder.transformer.layers.0.self_attn.q_proj.weight",
        "mask_decoder.output_hypernetworks_mlps.0.proj_out.weight",
        "mask_decoder.iou_prediction_head.proj_in.weight",
    ):
        assert trainable[name].grad.abs().sum() > 0, name


def test_valid_sizes_fill(original):
    _, _, ours = original
    image_embeddings, heatmap_logits = _inputs(2, 6)
    valid_sizes = torch.tensor([[24, 16], [32, 28]])
    before = heatmap_logits.clone()
    with torch.no_grad():
        out, iou = ours(image_embeddings, heatmap_logits, valid_sizes=valid_sizes)
        assert torch.equal(heatmap_logits, before)  # the caller's tensor is untouched

        changed = heatmap_logits.clone()
        changed[0, :, 24:, :] = 100.0
        changed[0, :, :, 16:] = -7.0
        changed[1, :, :, 28:] = 55.0
        out_changed, iou_changed = ours(image_embeddings, changed, valid_sizes=valid_sizes)
        torch.testing.assert_close(out_changed, out, atol=0, rtol=0)
        torch.testing.assert_close(iou_changed, iou, atol=0, rtol=0)

        filled = heatmap_logits.clone()
        filled[0, :, 24:, :] = PADDING_LOGIT
        filled[0, :, :, 16:] = PADDING_LOGIT
        filled[1, :, :, 28:] = PADDING_LOGIT
        torch.testing.assert_close(ours(image_embeddings, filled)[0], out, atol=0, rtol=0)

        full = ours(image_embeddings, heatmap_logits, valid_sizes=[[32, 32], [32, 32]])[0]
        torch.testing.assert_close(full, ours(image_embeddings, heatmap_logits)[0], atol=0, rtol=0)


def test_image_encoder_feeds_the_decoder():
    config = tiny_sam_config()
    encoder = build_sam_image_encoder(config)
    image_embeddings = encoder(torch.randn(2, 3, 64, 64)).last_hidden_state
    assert image_embeddings.shape == (2, HIDDEN, GRID, GRID)
    mask_logits, iou_scores = HeatmapMaskDecoder(config)(image_embeddings, torch.randn(2, 4, 4 * GRID, 4 * GRID))
    assert mask_logits.shape == (2, 4, 4 * GRID, 4 * GRID) and iou_scores.shape == (2, 4)


def test_input_errors(original):
    _, _, ours = original
    image_embeddings, heatmap_logits = _inputs(2, 3)
    with pytest.raises(ValueError, match="4x the embedding grid"):
        ours(image_embeddings, heatmap_logits[..., :16, :16])
    with pytest.raises(ValueError, match="image_embeddings"):
        ours(image_embeddings[:, :16], heatmap_logits)
    with pytest.raises(ValueError, match="heatmap_logits"):
        ours(image_embeddings, heatmap_logits[:1])
    with pytest.raises(ValueError, match="valid_sizes"):
        ours(image_embeddings, heatmap_logits, valid_sizes=[32, 32])
    with pytest.raises(ValueError, match="image_positional_embeddings"):
        ours(image_embeddings, heatmap_logits, image_positional_embeddings=torch.zeros(1, HIDDEN, 4, 4))


def test_inconsistent_config_is_rejected():
    config = tiny_sam_config()
    config.vision_config.output_channels = 64
    with pytest.raises(ValueError, match="output_channels"):
        HeatmapMaskDecoder(config)
    config = tiny_sam_config()
    config.prompt_encoder_config.mask_input_channels = 4  # one channel before a LayerNorm: heatmap ignored
    with pytest.raises(ValueError, match="mask_input_channels"):
        HeatmapMaskDecoder(config)


def test_heatmap_changes_the_masks(original):
    _, _, ours = original
    image_embeddings, heatmap_logits = _inputs(1, 2)
    heatmap_logits[0, 1] = heatmap_logits[0, 0].flip(-1)
    with torch.no_grad():
        mask_logits, _ = ours(image_embeddings, heatmap_logits)
    assert (mask_logits[0, 0] - mask_logits[0, 1]).abs().max() > 1e-2
