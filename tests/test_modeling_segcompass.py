"""SegCompassForReasoningSegmentation: shapes, gradients, concept-interface parity, round trips, bad input."""

import pytest
import torch
from transformers import AutoConfig, AutoModel

from segcompass import SegCompassConfig, SegCompassForReasoningSegmentation
from segcompass.modules.concept_interface import SparseConceptInterface
from segcompass.testing import tiny_segcompass_config, tiny_text_inputs


def build(num_slots=3, **overrides):
    torch.manual_seed(0)
    return SegCompassForReasoningSegmentation(tiny_segcompass_config(num_slots=num_slots, **overrides)).eval()


def sam_pixels(batch, seed=0):
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("num_slots", [1, 6])
def test_output_shapes(batch, num_slots):
    model = build(num_slots=num_slots)
    ids, mask = tiny_text_inputs(model.config, [7 + i for i in range(batch)])
    out = model(input_ids=ids, attention_mask=mask, sam_pixel_values=sam_pixels(batch))
    m, n = model.config.mask_size, model.config.max_concepts
    assert out.heatmap_logits.shape == (batch, num_slots, m, m)
    assert out.mask_logits.shape == (batch, num_slots, m, m)
    assert out.confidence_logits.shape == (batch, num_slots) and out.iou_scores.shape == (batch, num_slots)
    assert out.concept_indices.shape == (batch, n) and out.concept_mask.dtype == torch.bool
    assert out.slot_concept_attention.shape == (batch, num_slots, n)
    vocab = model.config.get_text_config().vocab_size
    assert out.logits.shape == (batch, 1, vocab)  # no labels: only the last position's logits
    full = model(input_ids=ids, attention_mask=mask, image_embeddings=out.image_embeddings, logits_to_keep=0)
    assert full.logits.shape == (batch, ids.shape[1], vocab)
    torch.testing.assert_close(full.logits[:, -1:], out.logits)
    torch.testing.assert_close(full.mask_logits, out.mask_logits)
    assert out.image_embeddings.shape == (batch, 32, 8, 8)
    # provenance: each slot's attention over real concepts is a distribution share; padding gets none
    assert (out.slot_concept_attention.masked_select(~out.concept_mask[:, None, :].expand_as(out.slot_concept_attention)) == 0).all()
    assert torch.isfinite(out.mask_logits).all()


def test_gradients_reach_heads_and_backbone_but_not_the_frozen_sae():
    model = build().train()
    ids, mask = tiny_text_inputs(model.config, [8, 6])
    out = model(input_ids=ids, attention_mask=mask, sam_pixel_values=sam_pixels(2))
    (out.mask_logits.mean() + out.heatmap_logits.mean() + out.confidence_logits.sum()).backward()

    def grad_norm(prefix):
        grads = [p.grad.abs().sum() for n, p in model.named_parameters() if n.startswith(prefix) and p.grad is not None]
        return float(sum(grads)) if grads else 0.0

    for prefix in ("concept_interface.codebook", "concept_interface.layers", "slot_mapper", "mask_decoder",
                   "backbone.model.language_model"):
        assert grad_norm(prefix) > 1e-6, prefix
    assert all(not p.requires_grad and p.grad is None for p in model.sae.parameters())
    assert not model.sae.training


@pytest.mark.parametrize("value_embedding", ["scale", "log"])
def test_concept_interface_equals_dense_reference(value_embedding):
    torch.manual_seed(0)
    d_sae, dim, k = 50, 16, 3
    module = SparseConceptInterface(d_sae, dim, k, num_layers=2, num_heads=2, ffn_dim=32,
                                    value_embedding=value_embedding).eval()
    indices = torch.tensor([[3, 17, 42, 0], [7, 7, 1, 2]])
    values = torch.tensor([[1.5, 0.5, 2.0, 0.0], [0.3, 0.9, 1.1, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, False]])
    slots, provenance = module(indices, values, mask)
    # dense reference: one-hot scatter of the sparse codes times the full codebook, then a hand-written encoder
    if value_embedding == "scale":  # h_j * C[j]
        dense_codes = torch.zeros(2, 4, d_sae).scatter(-1, indices[..., None], values[..., None])  # (B, N, d_sae)
        tokens = dense_codes @ module.codebook.weight  # (B, N, d)
    else:  # C[j] + MLP(log(1 + h_j))
        one_hot = torch.zeros(2, 4, d_sae).scatter(-1, indices[..., None], 1.0)  # (B, N, d_sae)
        features = torch.stack([torch.log1p(values), torch.zeros_like(values)], -1)  # no distances given
        tokens = one_hot @ module.codebook.weight + module.value_proj(features)
    x = torch.cat([module.slot_queries.expand(2, -1, -1), tokens], 1)
    keep = torch.cat([torch.ones(2, k, dtype=torch.bool), mask], 1)
    for layer in module.layers:
        h = layer.attn_norm(x)
        w_q, w_k, w_v = layer.attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = layer.attn.in_proj_bias.chunk(3)
        heads, hd = 2, dim // 2
        q = (h @ w_q.T + b_q).view(2, -1, heads, hd).transpose(1, 2)
        kk = (h @ w_k.T + b_k).view(2, -1, heads, hd).transpose(1, 2)
        v = (h @ w_v.T + b_v).view(2, -1, heads, hd).transpose(1, 2)
        att = (q @ kk.transpose(-1, -2)) / hd**0.5
        att = att.masked_fill(~keep[:, None, None, :], float("-inf")).softmax(-1)
        mixed = (att @ v).transpose(1, 2).reshape(2, -1, dim) @ layer.attn.out_proj.weight.T + layer.attn.out_proj.bias
        x = x + mixed
        x = x + layer.ffn(layer.ffn_norm(x))
        weights = att.mean(1)
    torch.testing.assert_close(slots, module.norm(x[:, :k]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(provenance, weights[:, :k, k:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("value_embedding,moves", [("scale", False), ("log", True)])
def test_activation_values_reach_the_concept_slots_only_with_the_log_embedding(value_embedding, moves):
    """The pre-norm encoder erases h_j in h_j * C[j] (DESIGN decision 3); the log value embedding keeps it."""
    torch.manual_seed(0)
    module = SparseConceptInterface(50, 16, 3, num_layers=1, num_heads=2, ffn_dim=32,
                                    value_embedding=value_embedding).eval()
    indices = torch.tensor([[3, 17, 42, 5]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    with torch.no_grad():
        slots, _ = module(indices, torch.tensor([[1.5, 0.5, 2.0, 4.0]]), mask)
        ones, _ = module(indices, torch.ones(1, 4), mask)
    change = float((slots - ones).norm() / slots.norm())
    assert (change > 1e-2) if moves else (change < 1e-4), change


def test_last_activation_distance_counts_back_from_the_last_valid_token():
    from segcompass.modules.concept_interface import last_activation_distance

    acts = torch.zeros(2, 6, 3)  # (B, T, N)
    acts[0, 1, 0] = acts[0, 4, 0] = 1.0  # feature 0 of sample 0 last fires at t = 4
    acts[0, 5, 1] = 2.0  # on the last token
    acts[1, 2, 0] = 1.0  # sample 1 is left-padded: valid tokens 2..4
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0]])
    distances = last_activation_distance(acts > 0, mask)
    assert distances.tolist() == [[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]
    # holes in the mask (tokens the GRPO policy sequence holds but the scoring sequence does not) are not counted,
    # and a feature firing only on a hidden token does not count as fired
    holes = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 0, 1]])
    acts[1, 3, 1] = 1.0  # fires on a hidden token only
    acts[1, 0, 2] = 1.0  # fires on valid token 0; valid tokens are 0, 2, 5 -> 2 valid tokens after it
    distances = last_activation_distance(acts > 0, holes)
    assert distances.tolist() == [[1.0, 0.0, 0.0], [1.0, 0.0, 2.0]]


def test_concept_window_pools_over_the_last_tokens_only():
    model = build(concept_window=3, concept_selection="pooled")
    ids, mask = tiny_text_inputs(model.config, [9, 6])  # left-padded rows of 9 and 6 valid tokens
    out = model(input_ids=ids, attention_mask=mask, sam_pixel_values=sam_pixels(2))
    active = (out.concept_token_activations != 0).any(-1)  # (B, T): tokens any kept concept came from
    for b in range(2):
        width = ids.shape[1]
        assert not active[b, : width - 3].any() and active[b, width - 3:].any()
    with pytest.raises(ValueError, match="concept_window"):
        tiny_segcompass_config(concept_window=0)


def test_slot_embedding_dropout_only_in_training():
    model = build(slot_embedding_dropout=0.5, concept_selection="pooled")  # nothing else varies between calls
    ids, mask = tiny_text_inputs(model.config, [8, 6])
    pixels = sam_pixels(2)
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels).heatmap_logits
        b = model(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels).heatmap_logits
        assert torch.equal(a, b)
        model.train()
        torch.manual_seed(1)
        outs = [model(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels).heatmap_logits for _ in range(4)]
    assert any(not torch.allclose(o, outs[0]) for o in outs[1:])
    with pytest.raises(ValueError, match="slot_embedding_dropout"):
        tiny_segcompass_config(slot_embedding_dropout=1.0)


@pytest.mark.parametrize("inputs", ["embeddings_and_concepts", "concepts"])
def test_slot_query_inputs_decide_whether_e_k_reaches_the_masks(inputs):
    """``"concepts"``: the slot queries read the reasoning only through r_k - changing the last-layer states (e_k)
    changes nothing, changing the concepts does; the paper's default reads both."""
    model = build(slot_query_inputs=inputs, concept_selection="pooled")
    ids, mask = tiny_text_inputs(model.config, [8, 6])
    with torch.no_grad():
        embeddings = model.get_image_embeddings(sam_pixels(2))
        states = model.backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        hook, last = states[model.config.sae_config.hook_layer], states[-1]

        def heatmaps(hook_states, last_states):
            return model.segment_from_hidden_states(ids, mask, hook_states, last_states, embeddings).heatmap_logits

        base = heatmaps(hook, last)
        other_e_k = heatmaps(hook, last + torch.randn_like(last))
        other_concepts = heatmaps(hook + 3 * torch.randn_like(hook), last)
    assert torch.equal(base, other_e_k) == (inputs == "concepts")
    assert not torch.allclose(base, other_concepts)
    with pytest.raises(ValueError, match="slot_query_inputs"):
        tiny_segcompass_config(slot_query_inputs="slots")


def test_centered_selection_keeps_features_that_tell_samples_apart():
    """A feature that fires in every sample ranks first under "pooled"; the running baseline (updated in training
    mode) pushes it out of the top-N under "centered"."""
    model = build(max_concepts=2, concept_selection="centered")
    ids, mask = tiny_text_inputs(model.config, [8, 6])
    pixels = sam_pixels(2)
    with torch.no_grad():
        model.sae.b_enc[7] = 1e3  # feature 7 is on at every token of every sample, far above the rest
    model.eval()
    before = model(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
    assert (before.concept_indices[:, 0] == 7).all()  # no baseline yet: plain pooled ranking
    model.train()
    model(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
    assert int(model.concept_interface.baseline_batches) == 1 and model.concept_interface.baseline[7] > 100
    model.eval()
    after = model(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
    assert not (after.concept_indices == 7).any()
    pooled_model = build(max_concepts=2, concept_selection="pooled").train()
    with torch.no_grad():
        pooled_model.sae.b_enc[7] = 1e3
    pooled_model(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
    assert int(pooled_model.concept_interface.baseline_batches) == 0


def test_class_defaults_are_the_papers_concept_path_and_presets_opt_in():
    """A config.json saved before the concept-path options existed must load as the same model."""
    from segcompass.presets import CONCEPT_PATH

    plain = SegCompassConfig.from_dict({k: v for k, v in tiny_segcompass_config().to_dict().items()
                                        if k not in CONCEPT_PATH})
    assert (plain.concept_selection, plain.concept_value_embedding, plain.slot_mapper_positional_keys) == (
        "pooled", "scale", False)
    for name in ("tiny", "qwen2.5-vl-7b", "llava-1.5-7b"):
        config = SegCompassConfig.from_preset(name)
        assert {k: getattr(config, k) for k in CONCEPT_PATH} == CONCEPT_PATH, name


def test_baseline_ignores_empty_batches_and_random_sae_ablation_restores_it():
    from segcompass.interpret.ablations import ablate

    model = build(concept_selection="centered")
    interface = model.concept_interface
    interface.update_baseline(torch.zeros(0, model.config.sae_config.d_sae))
    assert int(interface.baseline_batches) == 0 and torch.isfinite(interface.baseline).all()
    interface.update_baseline(torch.ones(2, model.config.sae_config.d_sae))
    with ablate(model, "random_sae"):
        assert int(interface.baseline_batches) == 0  # a random SAE's features have no trained baseline
    assert int(interface.baseline_batches) == 1 and interface.baseline.eq(1).all()


def test_save_reload_and_automodel_give_identical_outputs(tmp_path):
    model = build()
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, SegCompassConfig) and config.slot_token_ids == model.config.slot_token_ids
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, SegCompassForReasoningSegmentation)
    ids, mask = tiny_text_inputs(model.config, [9, 5])
    a = model(input_ids=ids, attention_mask=mask, sam_pixel_values=sam_pixels(2))
    b = reloaded(input_ids=ids, attention_mask=mask, sam_pixel_values=sam_pixels(2))
    for key in ("mask_logits", "heatmap_logits", "confidence_logits", "concept_indices", "slot_concept_attention"):
        assert torch.equal(a[key], b[key]), key


def test_reloaded_model_keeps_the_sae_frozen(tmp_path):
    """transformers' loader re-creates every weight with requires_grad=True; the SAE must come back frozen (a loop
    over model.parameters() once fine-tuned it: FVE on its own input fell from 0.97 to -0.90)."""
    model = build()
    assert not any(p.requires_grad for p in model.sae.parameters())
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert not any(p.requires_grad for p in reloaded.sae.parameters())
    assert all(p.requires_grad for p in reloaded.slot_mapper.parameters())  # only the SAE is frozen
    with_info, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(p.requires_grad for p in with_info.sae.parameters()) and not info["missing_keys"]


def test_batch_equals_single_calls():
    model = build()
    ids, mask = tiny_text_inputs(model.config, [9, 5, 7])
    pixels = sam_pixels(3)
    batched = model(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
    for b in range(3):
        valid = mask[b].bool()
        single = model(input_ids=ids[b : b + 1, valid], sam_pixel_values=pixels[b : b + 1])
        torch.testing.assert_close(single.mask_logits[0], batched.mask_logits[b], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(single.confidence_logits[0], batched.confidence_logits[b], atol=1e-4, rtol=1e-4)
        assert torch.equal(single.concept_indices[0][single.concept_mask[0]],
                           batched.concept_indices[b][batched.concept_mask[b]])


def test_precomputed_image_embeddings_match_pixels():
    model = build()
    ids, mask = tiny_text_inputs(model.config, [6])
    pixels = sam_pixels(1)
    a = model(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
    b = model(input_ids=ids, attention_mask=mask, image_embeddings=model.get_image_embeddings(pixels))
    assert torch.equal(a.mask_logits, b.mask_logits)


def test_lora_on_the_language_model_trains():
    peft = pytest.importorskip("peft")
    model = build().train()
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)",
                           modules_to_save=["concept_interface", "slot_mapper", "mask_decoder"])
    wrapped = peft.get_peft_model(model, lora)
    lora_b = [p for n, p in wrapped.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.requires_grad for p in lora_b)
    before = [p.detach().clone() for p in lora_b]
    optim = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2)
    ids, mask = tiny_text_inputs(model.config, [8, 8])
    for _ in range(2):
        out = wrapped(input_ids=ids, attention_mask=mask, sam_pixel_values=sam_pixels(2))
        loss = out.mask_logits.sigmoid().mean() + out.confidence_logits.sigmoid().mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, lora_b))


def test_missing_ref_token_and_slot_tokens_raise():
    model = build()
    ids, mask = tiny_text_inputs(model.config, [6])
    no_ref = ids.clone()
    no_ref[no_ref == model.config.ref_token_id] = 11
    with pytest.raises(ValueError, match=r"<REF_POS>` is missing from input_ids rows \[0\]"):
        model(input_ids=no_ref, attention_mask=mask, sam_pixel_values=sam_pixels(1))
    no_slot = ids[:, :-1]
    with pytest.raises(ValueError, match="exactly once"):
        model(input_ids=no_slot, attention_mask=mask[:, :-1], sam_pixel_values=sam_pixels(1))


def test_wrong_image_embeddings_shape_and_missing_sam_input():
    model = build()
    ids, mask = tiny_text_inputs(model.config, [6])
    with pytest.raises(ValueError, match=r"must have shape \(1, 32, 8, 8\)"):
        model(input_ids=ids, attention_mask=mask, image_embeddings=torch.zeros(1, 16, 8, 8))
    with pytest.raises(ValueError, match="sam_pixel_values"):
        model(input_ids=ids, attention_mask=mask)


def test_mask_refiner_starts_as_the_identity_needs_the_pixels_and_round_trips(tmp_path):
    from segcompass.modules.mask_refiner import LOGIT_BOUND

    plain, refined = build(), build(mask_refiner_hidden_size=8, mask_refiner_dilations=[1, 2])
    missing, unexpected = refined.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(name.startswith("mask_refiner.") for name in missing)
    assert plain.mask_refiner is None and refined.mask_refiner.pixel_scale == 2  # 64 px SAM input, 32 x 32 masks
    ids, mask = tiny_text_inputs(plain.config, [7, 5])
    pixels = sam_pixels(2)
    a = plain(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
    b = refined(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
    torch.testing.assert_close(b.mask_logits, LOGIT_BOUND * torch.tanh(a.mask_logits / LOGIT_BOUND))
    torch.testing.assert_close(b.confidence_logits, a.confidence_logits)
    with pytest.raises(ValueError, match=r"pass `sam_pixel_values` \(B, 3, 64, 64\) .* also when passing precomputed"):
        refined(input_ids=ids, attention_mask=mask, image_embeddings=b.image_embeddings)
    c = refined(input_ids=ids, attention_mask=mask, image_embeddings=b.image_embeddings, sam_pixel_values=pixels)
    assert torch.equal(c.mask_logits, b.mask_logits)
    # the pixels matter once the refiner has trained (here: a random output layer)
    torch.nn.init.normal_(refined.mask_refiner.layers[-1].weight, std=0.5)
    d = refined(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
    e = refined(input_ids=ids, attention_mask=mask, image_embeddings=d.image_embeddings,
                sam_pixel_values=pixels.flip(-1))
    assert not torch.allclose(d.mask_logits, e.mask_logits)
    refined.save_pretrained(tmp_path)
    reloaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and reloaded.config.mask_refiner_dilations == [1, 2]
    assert torch.equal(reloaded.eval()(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels).mask_logits,
                       d.mask_logits)


def test_mask_logit_bias_shifts_the_returned_masks_only(tmp_path):
    """The bias is added to the returned mask logits after the refiner and the confidence head have read them: the
    masks move by exactly the bias, the confidences and heatmaps not at all; it survives save / load."""
    plain = build(mask_refiner_hidden_size=8, mask_confidence_hidden_size=8)
    torch.nn.init.normal_(plain.mask_confidence.output.weight, std=0.5)  # a head that reads the masks
    shifted = build(mask_refiner_hidden_size=8, mask_confidence_hidden_size=8, mask_logit_bias=0.75)
    shifted.load_state_dict(plain.state_dict())
    ids, mask = tiny_text_inputs(plain.config, [7, 5])
    pixels = sam_pixels(2)
    with torch.no_grad():
        a = plain.eval()(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
        b = shifted.eval()(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
    torch.testing.assert_close(b.mask_logits, a.mask_logits + 0.75)
    assert torch.equal(b.confidence_logits, a.confidence_logits) and torch.equal(b.heatmap_logits, a.heatmap_logits)
    shifted.save_pretrained(tmp_path)
    assert AutoModel.from_pretrained(tmp_path).config.mask_logit_bias == 0.75


def test_a_refiner_added_to_a_saved_model_starts_as_the_identity(tmp_path):
    """Continuing a checkpoint saved without a refiner: the new refiner's weights are missing and start at zero
    output, so the masks keep their signs."""
    plain = build()
    plain.save_pretrained(tmp_path)
    grown = AutoModel.from_pretrained(tmp_path, mask_refiner_hidden_size=8).eval()
    ids, mask = tiny_text_inputs(plain.config, [6])
    a = plain(input_ids=ids, attention_mask=mask, sam_pixel_values=sam_pixels(1)).mask_logits
    b = grown(input_ids=ids, attention_mask=mask, sam_pixel_values=sam_pixels(1)).mask_logits
    assert torch.equal(a > 0, b > 0) and grown.mask_refiner.layers[-1].weight.abs().sum() == 0


def test_mask_confidence_head_starts_as_the_identity_reads_the_final_mask_and_round_trips(tmp_path):
    plain = build(mask_refiner_hidden_size=8)
    judged = build(mask_refiner_hidden_size=8, mask_confidence_hidden_size=16)
    missing, unexpected = judged.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(name.startswith("mask_confidence.") for name in missing)
    ids, mask = tiny_text_inputs(plain.config, [7, 5])
    pixels = sam_pixels(2)
    a = plain(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
    b = judged(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
    assert torch.equal(b.confidence_logits, a.confidence_logits) and torch.equal(b.mask_logits, a.mask_logits)
    with pytest.raises(ValueError, match=r"mask_confidence_hidden_size=16\): pass `sam_pixel_values` \(B, 3, 64, 64\)"):
        build(mask_confidence_hidden_size=16)(input_ids=ids, attention_mask=mask, image_embeddings=b.image_embeddings)
    torch.nn.init.normal_(judged.mask_confidence.output.weight, std=0.5)  # a trained head: the final masks matter
    c = judged(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
    torch.nn.init.normal_(judged.mask_refiner.layers[-1].weight, std=0.5)  # other masks, same scores
    d = judged(input_ids=ids, attention_mask=mask, image_embeddings=c.image_embeddings, sam_pixel_values=pixels)
    assert not torch.allclose(c.confidence_logits, d.confidence_logits)
    judged.save_pretrained(tmp_path)
    reloaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and reloaded.config.mask_confidence_hidden_size == 16
    saved = judged.state_dict()
    assert all(torch.equal(value, saved[name]) for name, value in reloaded.state_dict().items())  # bit for bit
    out = reloaded.eval()(input_ids=ids, attention_mask=mask, sam_pixel_values=pixels)
    # two forward passes of the same weights: on some BLAS kernels (AMD EPYC) the head's logits differ by ~3e-8
    torch.testing.assert_close(out.confidence_logits, d.confidence_logits, rtol=1e-6, atol=1e-6)


def test_heads_added_to_a_saved_model_are_initialised(tmp_path):
    """Loading a checkpoint saved without a mask confidence head builds one from `_init_weights`: its slot attention's
    packed projection and its feature embedding bag are no nn.Linear / nn.Embedding, and must not keep the
    uninitialised memory transformers allocates for missing weights (that gave NaN confidences)."""
    build().save_pretrained(tmp_path)
    grown = AutoModel.from_pretrained(tmp_path, mask_confidence_hidden_size=16)
    head = grown.mask_confidence
    assert all(torch.isfinite(p).all() for p in head.parameters())
    bound = (6 / (16 + 48)) ** 0.5  # xavier-uniform bound of the (48, 16) packed projection
    assert 0 < head.slot_attention.in_proj_weight.abs().max() <= bound
    assert head.slot_attention.in_proj_bias.abs().sum() == 0
    assert 0.5 < head.feature_embedding.weight.std() < 1.5  # N(0, 1), as nn.EmbeddingBag starts
    assert head.output.weight.abs().sum() == 0


def test_special_ids_must_be_configured():
    model = SegCompassForReasoningSegmentation(SegCompassConfig.from_preset("tiny"))
    ids = torch.randint(10, 90, (1, 5))
    with pytest.raises(ValueError, match="slot_token_ids are not set"):
        model(input_ids=ids, sam_pixel_values=sam_pixels(1))


@pytest.mark.parametrize("preset", ["qwen2.5-vl-7b", "llava-1.5-7b", "llava-1.5-13b"])
def test_full_size_presets_are_consistent(preset):
    config = SegCompassConfig.from_preset(preset)
    hidden = {"qwen2.5-vl-7b": 3584, "llava-1.5-7b": 4096, "llava-1.5-13b": 5120}[preset]
    assert config.sae_config.d_in == hidden == config.get_text_config().hidden_size
    assert config.sae_config.hook_layer == (13 if preset.startswith("qwen") else 16)
    assert config.mask_size == 256 and config.num_slots == 6


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(sae_config=dict(d_in=32, d_sae=64)), "sae_config.d_in=32"),
        (dict(sae_config=dict(d_in=64, d_sae=64, hook_layer=9)), "hook_layer=9"),
        (dict(num_slots=0), "num_slots"),
        (dict(concept_pooling="median"), "concept_pooling"),
        (dict(confidence_threshold=2.0), "confidence_threshold"),
        (dict(duplicate_iou=0.0), r"`duplicate_iou` must be None .* got 0\.0"),
        (dict(mask_refiner_hidden_size=-1), r"`mask_refiner_hidden_size` must be an int >= 0 .* got -1"),
        (dict(mask_refiner_dilations=[1, 0]), r"`mask_refiner_dilations` .* got \[1, 0\]"),
        (dict(mask_confidence_hidden_size=-2), r"`mask_confidence_hidden_size` must be an int >= 0 .* got -2"),
        (dict(mask_logit_bias=float("nan")), r"`mask_logit_bias` must be a finite number .* got nan"),
        (dict(mask_logit_bias="0.5"), r"`mask_logit_bias` must be a finite number .* got '0.5'"),
    ],
)
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        SegCompassConfig.from_preset("tiny", **overrides)


def test_unknown_preset():
    with pytest.raises(ValueError, match="Unknown preset 'gpt'"):
        SegCompassConfig.from_preset("gpt")
