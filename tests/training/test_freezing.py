"""Library training options: freeze the SAE's input, train only the slot-token rows, train SAM's encoder, and train
the mask path on the model's own reasoning (supervised loop and GRPO trainer)."""

from __future__ import annotations

import math

import pytest
import torch

import segcompass  # noqa: F401  (registers the Auto classes)
from segcompass.modeling_segcompass import SegCompassForReasoningSegmentation
from segcompass.testing import tiny_grpo_config
from segcompass.training.freezing import (freeze_backbone_through_hook_layer, hook_state_anchor_loss,
                                         restored_requires_grad, train_token_embedding_rows)
from segcompass.training.sft import build_supervised_batch, generate_completions, supervised_warmup


def _hook_states(model, data):
    with torch.no_grad():
        kwargs = {k: data[k] for k in ("pixel_values", "image_grid_thw", "mm_token_type_ids") if k in data}
        out = model.backbone(input_ids=data["input_ids"], attention_mask=data["attention_mask"],
                             output_hidden_states=True, **kwargs)
    return out.hidden_states[model.config.sae_config.hook_layer]


def test_restored_requires_grad_restores_every_flag_also_on_error():
    """Flags changed inside the block, either way, are as on entry afterwards, also when the block raises."""
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    module[1].bias.requires_grad_(False)
    before = {n: p.requires_grad for n, p in module.named_parameters()}
    with restored_requires_grad(module):
        module[0].requires_grad_(False)
        module[1].bias.requires_grad_(True)
        assert not module[0].weight.requires_grad and module[1].bias.requires_grad
    assert before == {n: p.requires_grad for n, p in module.named_parameters()}
    with pytest.raises(RuntimeError, match="inside"), restored_requires_grad(module):
        module.requires_grad_(False)
        raise RuntimeError("inside")
    assert before == {n: p.requires_grad for n, p in module.named_parameters()}


def test_hook_state_anchor_loss_counts_only_the_chosen_tokens():
    """Relative squared distance on the chosen tokens: 0 for equal states, the hand-computed value otherwise,
    unchanged by any difference on tokens left out (the image tokens), gradient only into ``hidden``."""
    reference = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])  # (1, 3, 2)
    mask = torch.tensor([[True, True, False]])  # (1, 3): the third token (an image token) is free
    assert float(hook_state_anchor_loss(reference.clone(), reference, mask)) == 0.0
    hidden = reference.clone()
    hidden[0, 0, 0] = 2.0  # error 1 on a chosen token
    hidden[0, 2] = -100.0  # any error on the free token
    hidden.requires_grad_(True)
    loss = hook_state_anchor_loss(hidden, reference, mask)
    assert math.isclose(float(loss.detach()), 1.0 / (1.0 + 4.0), rel_tol=1e-6)
    loss.backward()
    assert hidden.grad[0, 2].abs().sum() == 0 and hidden.grad[0, 0, 0] > 0
    assert float(hook_state_anchor_loss(hidden, reference, torch.zeros(1, 3))) == 0.0
    with pytest.raises(ValueError, match=r"must both be \(B, T, D\)"):
        hook_state_anchor_loss(hidden, reference[:, :2], mask)
    with pytest.raises(ValueError, match=r"`token_mask` must be \(B, T\) = \(1, 3\), got \(3,\)"):
        hook_state_anchor_loss(hidden, reference, mask[0])


def test_freeze_through_hook_keeps_the_sae_input_and_trains_only_slot_rows(tiny):
    directory, processor, dataset = tiny
    torch.manual_seed(0)
    model = SegCompassForReasoningSegmentation.from_pretrained(directory)
    hook = model.config.sae_config.hook_layer
    rows = [dataset[0], dataset[1]]
    # the prompt without slot tokens: the slot rows are the only embedding rows that train
    prompts = dict(processor([r["image"] for r in rows], [r["instruction"] for r in rows], padding_side="left"))
    before_states = _hook_states(model, prompts)
    embedding = model.get_input_embeddings().weight.detach().clone()
    layers = model.backbone.model.language_model.layers
    above = {n: p.detach().clone() for n, p in layers[hook].named_parameters()}
    history = supervised_warmup(model, processor, dataset, num_steps=3, batch_size=2, learning_rate=1e-3,
                                weight_decay=0.1, freeze_through_hook_layer=True, train_slot_token_embeddings=True)
    assert len(history) == 3
    assert all(not p.requires_grad for p in layers[:hook].parameters())
    assert all(not p.requires_grad for p in model.backbone.model.visual.parameters())
    torch.testing.assert_close(_hook_states(model, prompts), before_states, rtol=0, atol=0)
    after = model.get_input_embeddings().weight.detach()
    changed = (after != embedding).any(-1).nonzero().flatten().tolist()
    assert changed and set(changed) <= set(model.config.slot_token_ids)  # weight decay spared the closed rows
    assert any(not torch.equal(above[n], p) for n, p in layers[hook].named_parameters())  # above the hook trains


def test_train_token_rows_rejects_unknown_ids_and_replaces_its_hook(tiny):
    model = SegCompassForReasoningSegmentation.from_pretrained(tiny[0])
    with pytest.raises(ValueError, match="inside the embedding matrix"):
        train_token_embedding_rows(model, [10**9])
    weight = model.get_input_embeddings().weight
    first = train_token_embedding_rows(model, [3])
    second = train_token_embedding_rows(model, [4])  # replaces the first mask, does not stack on it
    assert len(weight._backward_hooks) == 1 and first.id not in weight._backward_hooks
    weight.grad = None
    (weight.double().sum()).backward()
    assert weight.grad.abs().sum(-1).nonzero().flatten().tolist() == [4]
    second.remove()
    assert freeze_backbone_through_hook_layer(model) > 0
    assert freeze_backbone_through_hook_layer(model) == 0  # idempotent


def test_generated_share_trains_the_mask_path_on_generated_reasoning(tiny):
    directory, processor, dataset = tiny
    model = SegCompassForReasoningSegmentation.from_pretrained(directory)
    rows = [dataset[0], dataset[1]]
    texts = generate_completions(model, processor, rows, max_new_tokens=6)
    assert all(t.endswith(processor.ref_token) for t in texts)
    batch = build_supervised_batch(processor, rows, model, completions=[texts[0], None])
    assert (batch["labels"][0] == -100).all()  # the model's own text is never an LM target
    assert (batch["labels"][1] != -100).any()
    history = supervised_warmup(model, processor, dataset, num_steps=2, batch_size=2, learning_rate=1e-3,
                                generated_share=0.5, max_new_tokens=6)
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["seg"])) for h in history)
    # a batch of generated rows only has no LM target: the step trains the mask path, it does not fail
    history = supervised_warmup(model, processor, dataset, num_steps=1, batch_size=2, generated_share=1.0,
                                max_new_tokens=4)
    assert history[0]["lm"] == 0.0 and math.isfinite(history[0]["loss"])
    with pytest.raises(ValueError, match="generated_share"):
        supervised_warmup(model, processor, dataset, num_steps=1, generated_share=1.5)


@pytest.mark.parametrize("freeze", [True, False])
def test_sft_vision_encoder_trains_only_when_asked(tiny, freeze):
    directory, processor, dataset = tiny
    model = SegCompassForReasoningSegmentation.from_pretrained(directory)
    before = {n: p.detach().clone() for n, p in model.vision_encoder.named_parameters()}
    supervised_warmup(model, processor, dataset, num_steps=2, batch_size=2, learning_rate=1e-3,
                      train_vision_encoder=not freeze)
    moved = any(not torch.equal(before[n], p) for n, p in model.vision_encoder.named_parameters())
    assert moved != freeze


def test_grpo_honours_the_freezing_options(tiny, tmp_path):
    pytest.importorskip("trl")
    from segcompass.training.grpo_data import prepare_grpo_dataset
    from segcompass.training.grpo_trainer import SegCompassGRPOTrainer

    directory, processor, dataset = tiny
    model = SegCompassForReasoningSegmentation.from_pretrained(directory)
    args = tiny_grpo_config(tmp_path, freeze_vision_encoder=False, freeze_backbone_through_hook_layer=True,
                            train_slot_token_embeddings=True)
    trainer = SegCompassGRPOTrainer(model, args=args, train_dataset=prepare_grpo_dataset(dataset, processor),
                                    processing_class=processor)
    vision = {n: p.detach().clone() for n, p in model.vision_encoder.named_parameters()}
    embedding = model.get_input_embeddings().weight.detach().clone()
    hook = model.config.sae_config.hook_layer
    below = {n: p.detach().clone() for n, p in model.backbone.model.language_model.layers[:hook].named_parameters()}
    trainer.train()
    assert any(not torch.equal(vision[n], p) for n, p in model.vision_encoder.named_parameters())
    assert all(torch.equal(below[n], p) for n, p in model.backbone.model.language_model.layers[:hook].named_parameters())
    changed = (model.get_input_embeddings().weight.detach() != embedding).any(-1).nonzero().flatten().tolist()
    assert changed and set(changed) <= set(model.config.slot_token_ids)
