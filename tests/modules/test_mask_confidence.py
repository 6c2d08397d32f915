"""MaskConfidenceHead: starts as the identity, reads the mask detached, pools the right cells, learns a match."""

import pytest
import torch

from segcompass.modules.mask_confidence import MaskConfidenceHead, mask_geometry, mask_pooled


def inputs(batch=2, slots=3, grid=8, scale=2, concept_dim=6, image_dim=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return dict(
        confidence_logits=torch.randn(batch, slots, generator=generator),
        concept_slots=torch.randn(batch, slots, concept_dim, generator=generator),
        concept_indices=torch.randint(0, 10, (batch, 4), generator=generator),
        concept_values=torch.rand(batch, 4, generator=generator),
        concept_mask=torch.tensor([[True, True, True, False]] * batch),
        mask_logits=6 * torch.randn(batch, slots, grid, grid, generator=generator),
        image_embeddings=torch.randn(batch, image_dim, grid // 4, grid // 4, generator=generator),
        pixel_values=torch.randn(batch, 3, scale * grid, scale * grid, generator=generator),
    )


def test_a_new_head_returns_the_confidence_logits_unchanged():
    torch.manual_seed(0)
    head = MaskConfidenceHead(concept_dim=6, image_dim=5, hidden_size=8, pixel_scale=2, num_features=10)
    x = inputs()
    out = head(**x)
    assert out.shape == (2, 3)
    assert torch.equal(out, x["confidence_logits"])


def test_geometry_of_a_known_block():
    probabilities = torch.zeros(1, 2, 4, 8)
    probabilities[0, 0, 1:3, 4:8] = 1.0  # rows 1-2, columns 4-7: 8 of 32 cells
    out = mask_geometry(probabilities)  # (1, 2, 6)
    area, log_area, cy, cx, sy, sx = out[0, 0].tolist()
    assert area == pytest.approx(0.25) and log_area == pytest.approx(torch.log(torch.tensor(0.2501)).item())
    assert cy == pytest.approx(0.5) and cx == pytest.approx(0.75)  # cell centres (1.5, 2.5) / 4 and (4.5..7.5) / 8
    assert sy == pytest.approx(0.125) and sx == pytest.approx((1.25 / 64) ** 0.5)
    assert out[0, 1, 0] == 0 and out[0, 1, 2:].abs().sum() == 0  # an empty mask: no area, centre 0


def test_pooling_averages_the_covered_cells():
    features = torch.arange(2 * 2 * 2, dtype=torch.float).view(1, 2, 2, 2)  # (B, C, h, w)
    probabilities = torch.zeros(1, 1, 4, 4)
    probabilities[0, 0, 2:, :2] = 1.0  # the mask covers feature cell (1, 0) exactly
    assert mask_pooled(probabilities, features)[0, 0].tolist() == [2.0, 6.0]
    probabilities[0, 0, :2, 2:] = 1.0  # and cell (0, 1): the mean of the two
    assert mask_pooled(probabilities, features)[0, 0].tolist() == [1.5, 5.5]
    assert mask_pooled(torch.zeros(1, 1, 4, 4), features).abs().sum() == 0


def test_the_mask_is_read_detached_and_the_concepts_are_not():
    torch.manual_seed(0)
    head = MaskConfidenceHead(concept_dim=6, image_dim=5, hidden_size=8, pixel_scale=2, num_features=10)
    torch.nn.init.normal_(head.output.weight)
    x = inputs()
    for name in ("mask_logits", "concept_slots", "concept_values"):
        x[name].requires_grad_(True)
    head(**x).sum().backward()
    assert x["mask_logits"].grad is None
    assert x["concept_slots"].grad.abs().sum() > 0
    assert x["concept_values"].grad[:, :3].abs().sum() > 0 and x["concept_values"].grad[:, 3].abs().sum() == 0


def test_the_head_learns_whether_the_mask_covers_the_asked_colour():
    """Two coloured squares per image, one slot on each; the support set holds the asked colour's feature (0 red, 1
    blue; r_k carries nothing). A few hundred steps teach the head which slot matches (F_conf's logits: zeros)."""
    torch.manual_seed(0)
    head = MaskConfidenceHead(concept_dim=2, image_dim=4, hidden_size=16, pixel_scale=2, num_features=3)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)

    def batch(size=32):
        pixels = torch.zeros(size, 3, 16, 16)
        masks = torch.full((size, 2, 8, 8), -8.0)
        colours = torch.randint(0, 2, (size,), generator=generator)  # colour of the left square: 0 red, 1 blue
        pixels[torch.arange(size), colours, :, :8] = 1.0
        pixels[torch.arange(size), 1 - colours, :, 8:] = 1.0
        masks[:, 0, :, :4], masks[:, 1, :, 4:] = 8.0, 8.0  # slot 0 on the left square, slot 1 on the right one
        asked = torch.randint(0, 2, (size,), generator=generator)
        support = torch.stack([asked, torch.full_like(asked, 2)], dim=1)  # the asked colour and a feature in every sample
        target = torch.stack([colours == asked, colours != asked], dim=1).float()  # (size, 2)
        return dict(confidence_logits=torch.zeros(size, 2), concept_slots=torch.zeros(size, 2, 2),
                    concept_indices=support, concept_values=torch.ones(size, 2),
                    concept_mask=torch.ones(size, 2, dtype=torch.bool), mask_logits=masks,
                    image_embeddings=torch.zeros(size, 4, 2, 2), pixel_values=pixels), target

    for _ in range(300):
        x, target = batch()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(**x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, target = batch(200)
    with torch.no_grad():
        accuracy = ((head(**x) > 0).float() == target).float().mean().item()
    assert accuracy > 0.95


def test_bad_pixel_shape_and_sizes_raise():
    head = MaskConfidenceHead(concept_dim=6, image_dim=5, hidden_size=8, pixel_scale=2, num_features=10)
    x = inputs()
    x["pixel_values"] = x["pixel_values"][..., :8, :8]
    with pytest.raises(ValueError, match=r"`pixel_values` must have shape \(B, C, 16, 16\) .* got \(2, 3, 8, 8\)"):
        head(**x)
    with pytest.raises(ValueError, match="hidden_size=0"):
        MaskConfidenceHead(concept_dim=6, image_dim=5, hidden_size=0, pixel_scale=2, num_features=10)


def test_the_image_embedding_is_read_detached():
    """The confidence loss must not train the image encoder (that would move the masks it judges)."""
    torch.manual_seed(0)
    head = MaskConfidenceHead(concept_dim=6, image_dim=5, hidden_size=8, pixel_scale=2, num_features=10)
    torch.nn.init.normal_(head.output.weight)
    x = inputs()
    x["image_embeddings"].requires_grad_(True)
    head(**x).sum().backward()
    assert x["image_embeddings"].grad is None
