"""The recipe's reasoning stage: more next-token training after the heads, so the model writes better reasoning
while the SAE's input (and the mask path reading it) stays as the heads were trained on."""

from __future__ import annotations

import copy

import numpy as np
import torch

from .config import TinyRecipeConfig
from .data import LazySplit, PositionProbe, Sample, backbone_kwargs
from .diagnostics import decision_positions
from .stages import merged_image_tokens, next_token_steps

__all__ = ["reasoning_stage"]


def reasoning_stage(model, processor, config: TinyRecipeConfig, generator) -> dict:
    """Stage 4a: next-token loss on ``reasoning_samples`` training samples the heads were not trained on (indices from
    ``num_train`` on), ``reasoning_steps`` steps.

    With ``reasoning_anchor_weight=0`` it trains only the decoder layers above the SAE's hook layer (and the final
    norm): the vision tower, the token embeddings (tied to the LM head) and layers ``0 .. L-1`` stay frozen, so
    ``hidden_states[L]`` of any token sequence, hence the SAE's concepts, do not change; with
    ``slot_query_inputs="concepts"`` (the slots read the reasoning only through them) neither does the mask path,
    and only which reasoning the model writes changes.

    With ``reasoning_anchor_weight > 0`` the vision tower (with the model's ``image_positions``, where it has them)
    and every decoder layer train too (not the embeddings), and
    that weight times :func:`~segcompass.training.freezing.hook_state_anchor_loss` keeps ``hidden_states[L]`` of the
    text tokens (prompt and reasoning) where a frozen copy of the backbone at the start of the stage puts them: the
    image tokens' states are free, so perception can improve, while the concepts of a given reasoning text (and the
    mask path) stay close to what the heads were trained on.

    With ``reasoning_decision_weight > 0`` that weight times the next-token loss of each reference reasoning's
    decision and target line alone (:func:`~segcompass.recipes.tiny.diagnostics.decision_positions`) is added to the
    loss, over the same weights.

    Raises:
        ValueError: the model's slot queries also read the last layer's slot-token states (e_k, which this stage
            moves) and no concept stage follows to retrain the heads on the concepts alone.
    """
    from ...training.freezing import (freeze_backbone_through_hook_layer, policy_modules, policy_parameters,
                                      restored_requires_grad)

    steps = config.reasoning_steps
    if steps <= 0:
        return {"steps": 0}
    if model.config.slot_query_inputs != "concepts" and config.concept_steps <= 0:
        raise ValueError(
            f"reasoning_steps={steps} trains the layers that compute the slot embeddings e_k, which this model's "
            f"slot queries read (slot_query_inputs={model.config.slot_query_inputs!r}), and concept_steps=0 leaves "
            "its heads as they are; run a concept stage after it (concept_steps > 0) or set reasoning_steps=0."
        )
    # made on access: each rank makes only its shard of each batch, and nothing is kept
    samples = LazySplit("train", config.reasoning_samples, config, start=config.num_train, dense=False)
    anchored = config.reasoning_anchor_weight > 0
    anchors: list[float] = []
    with restored_requires_grad(model):
        if anchored:
            for module in policy_modules(model):  # the backbone and the image positions added to its image tokens
                module.requires_grad_(True)
        else:
            freeze_backbone_through_hook_layer(model)
        embeddings = model.get_input_embeddings().weight
        embeddings.requires_grad_(False)  # the slot rows may be open; the LM head is tied to them
        params = policy_parameters(model)
        extra_loss = _hook_anchor(model, config.reasoning_anchor_weight, anchors) if anchored else None
        probe_losses: list[float] = []
        handle = None
        if config.reasoning_position_probe_weight > 0:  # TinyRecipeConfig checks that the anchor is on
            extra_loss, probe, handle = _position_probe(model, config, extra_loss, probe_losses)
            params += list(probe.parameters())
        decision_losses: list[float] = []
        if config.reasoning_decision_weight > 0:
            extra_loss = _decision_loss(processor.tokenizer, config.reasoning_decision_weight, extra_loss,
                                        decision_losses)
        model.eval()
        (model.backbone if anchored else model.backbone.model.language_model).train()
        try:
            losses = next_token_steps(model, processor, samples, config, generator, params, steps=steps,
                                      learning_rate=config.reasoning_learning_rate, desc="Reasoning stage",
                                      extra_loss=extra_loss, hidden_states=anchored)
        finally:
            if handle is not None:
                handle.remove()
    model.eval()
    result = {"steps": steps, "samples": len(samples), "first_loss": float(np.mean(losses[:50])),
              "final_loss": float(np.mean(losses[-50:])), "learning_rate": config.reasoning_learning_rate,
              "trained_parameters": sum(p.numel() for p in params)}
    if anchored:
        result |= {"anchor_weight": config.reasoning_anchor_weight, "first_anchor": float(np.mean(anchors[:50])),
                   "final_anchor": float(np.mean(anchors[-50:]))}
    if decision_losses:
        result |= {"decision_weight": config.reasoning_decision_weight,
                   "first_decision_loss": float(np.mean(decision_losses[:50])),
                   "final_decision_loss": float(np.mean(decision_losses[-50:]))}
    if probe_losses:
        result |= {"position_probe_weight": config.reasoning_position_probe_weight,
                   "first_position_probe": float(np.mean(probe_losses[:50])),
                   "final_position_probe": float(np.mean(probe_losses[-50:]))}
    return result


def _position_probe(model, config: TinyRecipeConfig, anchor_loss, record: list[float]):
    """The anchor plus ``reasoning_position_probe_weight`` x a new :class:`PositionProbe`'s loss on the merged image
    tokens of the same forward (captured with a hook on the vision tower). Returns ``(extra_loss, probe, hook
    handle)``; the probe starts the same on every rank (seeded), and its steps are the backbone's."""
    visual = model.backbone.model.visual
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.data_seed)
        probe = PositionProbe(model.config.get_text_config().hidden_size,
                              config.backbone_image_side // (visual.patch_size * visual.spatial_merge_size))
    handle, take = merged_image_tokens(model)

    def extra_loss(batch: dict, chunk: list[Sample], out) -> torch.Tensor:
        loss = probe.loss(take(batch), chunk)
        record.append(loss.item())
        return anchor_loss(batch, chunk, out) + config.reasoning_position_probe_weight * loss

    return extra_loss, probe, handle


def _decision_loss(tokenizer, weight: float, inner, record: list[float]):
    """``inner`` (or nothing) plus ``weight`` x the next-token cross-entropy over the decision and target-line tokens of
    each reference reasoning (:func:`~segcompass.recipes.tiny.diagnostics.decision_positions`), from the logits of the
    stage's own forward; appends each step's value to ``record``."""

    def extra_loss(batch: dict, chunk: list[Sample], out) -> torch.Tensor:
        labels = batch["labels"]  # (B, T): the token at t, -100 where nothing is predicted
        chosen = decision_positions(labels, tokenizer)[:, 1:]  # (B, T-1): predicted from position t
        logits = out.logits[:, :-1]  # (B, T-1, V)
        if chosen.any():
            loss = torch.nn.functional.cross_entropy(logits[chosen].float(), labels[:, 1:][chosen])
        else:  # no reasoning of this shard has a target line
            loss = logits.sum() * 0.0
        record.append(loss.item())
        total = weight * loss
        return total if inner is None else inner(batch, chunk, out) + total

    return extra_loss


def _hook_anchor(model, weight: float, record: list[float]):
    """The reasoning stage's ``extra_loss``: ``weight`` x the hook-state anchor of the text tokens against a frozen copy
    of the backbone as it is now (the copy's forward runs on the same batch); appends each step's anchor to
    ``record``."""
    from ...training.freezing import hook_state_anchor_loss

    reference = copy.deepcopy(model.backbone).eval().requires_grad_(False)
    layer = model.config.sae_config.hook_layer
    image_token = model.backbone.config.image_token_id

    def extra_loss(batch: dict, chunk: list[Sample], out) -> torch.Tensor:
        with torch.no_grad():
            frozen = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               output_hidden_states=True, **backbone_kwargs(batch)).hidden_states[layer]  # (B, T, D)
        text = batch["attention_mask"].bool() & (batch["input_ids"] != image_token)  # (B, T)
        anchor = hook_state_anchor_loss(out.hidden_states[layer], frozen, text)
        record.append(anchor.item())
        return weight * anchor

    return extra_loss
