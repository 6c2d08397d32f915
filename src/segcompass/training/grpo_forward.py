"""One backbone forward per GRPO completion: TRL's policy log-probabilities and the segmentation heads' hidden states
come from the same forward (paper App. B "Training Workflow": one actor forward gives the policy log-probabilities and
the predicted masks, one backward).

The policy sequence TRL scores is ``[prompt | completion]`` (prompt left-padded, completion right-padded). The scoring
sequence the heads are trained on is ``prompt + completion cut at its first <REF_POS> (appended when missing) + the K
slot tokens`` (:func:`segcompass.answer_format.append_slot_ids`). Both fit in one causal sequence::

    [ prompt (P) | completion (C) | <REF_POS> or pad (1) | K slot tokens ]      (B, P + C + 1 + K)

with an attention mask that *hides* the completion tokens the scoring sequence does not hold (the tokens after the first
``<REF_POS>``, or, without one, from the first stop token on) and shows the extra ``<REF_POS>`` only when the completion
lacks one. Hidden keys change nothing the policy scores as long as no scored token follows a hidden one: a token's
log-probability is read at the position before it, and causal attention never looks ahead. The trainer makes that hold
by stopping generation at ``<REF_POS>`` (it is added to the stop tokens); rows where it does not hold are reported
(``exact``) and the trainer falls back to a separate segmentation forward. Qwen2.5-VL numbers its rotary positions over
the attention mask, so the slot tokens get the same positions as in the scoring sequence and the heads see the same
states up to rounding; LLaVA numbers positions by index (as TRL's own log-probability forward does), so there the slot
tokens sit ``gap`` positions further on.

Imports no ``trl``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..answer_format import answer_end

__all__ = ["PolicySegmentationInputs", "capture_hidden_states", "policy_segmentation_inputs", "shared_forward"]


@dataclass
class PolicySegmentationInputs:
    """The shared sequence of :func:`policy_segmentation_inputs`.

    Attributes:
        input_ids, attention_mask (`(B, P + C + 1 + K)`): the sequence and its mask (holes where the scoring sequence
            has no token).
        labels (`(B, P + C + 1 + K)`): the completion tokens TRL scores (its ``completion_mask``), -100 elsewhere.
        mm_token_type_ids (`(B, P + C + 1 + K)` or None): Qwen2.5-VL modality ids, zeros after the prompt.
        completion_start: P (the completion's log-probabilities are ``log_probs[:, P - 1 : P - 1 + C]`` of a forward
            whose LM head is shifted by one).
        malformed (`(B,)` bool): rows whose completion has no ``<REF_POS>``.
        exact (`(B,)` bool): rows where no scored token follows a hidden one (the policy log-probabilities are the
            plain ``[prompt | completion]`` ones).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    mm_token_type_ids: torch.Tensor | None
    completion_start: int
    malformed: torch.Tensor
    exact: torch.Tensor


def policy_segmentation_inputs(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    ref_token_id: int,
    slot_token_ids: Sequence[int] | torch.Tensor,
    stop_token_ids: Sequence[int],
    pad_token_id: int,
    mm_token_type_ids: torch.Tensor | None = None,
) -> PolicySegmentationInputs:
    """Build the shared policy + scoring sequence (see the module docstring).

    Args:
        prompt_ids, prompt_mask (`(B, P)`): TRL's left-padded prompts.
        completion_ids, completion_mask (`(B, C)`): TRL's right-padded completions and the mask of the tokens it
            scores (up to and including the first stop token).
        ref_token_id, slot_token_ids (K,): the model's ``<REF_POS>`` and concentration tokens.
        stop_token_ids: end-of-sequence ids other than ``<REF_POS>`` (an answer without ``<REF_POS>`` is cut at the first
            of them or at ``pad_token_id``, as :func:`~segcompass.answer_format.append_slot_ids` cuts it).
        mm_token_type_ids (`(B, P)` or `(B, P + C)`, *optional*): Qwen2.5-VL modality ids (completion part zeros).
    """
    if prompt_ids.shape != prompt_mask.shape or completion_ids.shape != completion_mask.shape:
        raise ValueError(
            f"ids and masks must match: prompt {tuple(prompt_ids.shape)} vs {tuple(prompt_mask.shape)}, completion "
            f"{tuple(completion_ids.shape)} vs {tuple(completion_mask.shape)}."
        )
    batch, width = completion_ids.shape
    device = completion_ids.device
    slots = torch.as_tensor(slot_token_ids, dtype=completion_ids.dtype, device=device)  # (K,)
    stops = {*stop_token_ids, pad_token_id}
    cuts = [answer_end(row, ref_token_id, stops) for row in completion_ids.tolist()]  # the scoring sequence's cut
    visible_end = torch.tensor([end for end, _ in cuts], device=device)  # (B,) visible completion tokens [0, end)
    has_ref = torch.tensor([found for _, found in cuts], device=device)  # (B,)
    index = torch.arange(width, device=device).expand(batch, -1)  # (B, C)
    visible = (index < visible_end[:, None]).long()  # (B, C); right padding is a stop token: always hidden

    # A hidden key changes the policy only where the token after it is scored.
    hidden = (completion_mask.bool() & ~visible.bool())  # (B, C)
    scored_next = torch.zeros_like(hidden)
    scored_next[:, :-1] = completion_mask[:, 1:].bool()
    exact = ~(hidden & scored_next).any(1)  # (B,)

    ref_column = torch.where(has_ref, pad_token_id, ref_token_id).to(completion_ids.dtype)[:, None]  # (B, 1)
    extra_ids = torch.cat([ref_column, slots.expand(batch, -1)], 1)  # (B, 1 + K)
    extra_mask = torch.cat([(~has_ref).long()[:, None], torch.ones_like(slots).expand(batch, -1).long()], 1)
    input_ids = torch.cat([prompt_ids, completion_ids, extra_ids], 1)  # (B, P + C + 1 + K)
    attention_mask = torch.cat([prompt_mask.long(), visible, extra_mask], 1)  # (B, P + C + 1 + K)
    labels = torch.full_like(input_ids, -100)
    start = prompt_ids.shape[1]
    labels[:, start:start + width] = completion_ids.masked_fill(~completion_mask.bool(), -100)

    mm = None
    if mm_token_type_ids is not None:
        mm = torch.cat([mm_token_type_ids, mm_token_type_ids.new_zeros((batch, input_ids.shape[1]
                                                                         - mm_token_type_ids.shape[1]))], 1)
    return PolicySegmentationInputs(input_ids, attention_mask, labels, mm, start, ~has_ref, exact)


@contextlib.contextmanager
def capture_hidden_states(module: nn.Module) -> Iterator[list]:
    """Record the ``hidden_states`` tuple of every forward of ``module`` (a transformers base model called with
    ``output_hidden_states=True``) while the context is open: yields the list the tuples are appended to."""
    captured: list = []

    def hook(_module, _inputs, output):
        states = getattr(output, "hidden_states", None)
        if states is not None:
            captured.append(states)

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def shared_forward(
    policy: nn.Module,
    segcompass,
    sequence: PolicySegmentationInputs,
    image_embeddings: torch.Tensor,
    valid_mask_sizes: torch.Tensor | None,
    *,
    completion_length: int,
    backbone_inputs: dict,
    compute_entropy: bool = False,
    compute_aux_loss: bool = False,
    autocast=contextlib.nullcontext,
    sam_pixel_values: torch.Tensor | None = None,
):
    """The one forward with gradients of a GRPO micro-batch.

    Args:
        policy: TRL's model (the backbone, or its ``PeftModel``) patched with TRL's fused LM head
            (``model(..., labels=..., fused_lm_head=True)`` returns per-token log-probabilities, never the logits).
        segcompass: the [`SegCompassForReasoningSegmentation`] whose ``backbone`` is (the base of) ``policy``.
        sequence: :func:`policy_segmentation_inputs`; completion_length: C.
        image_embeddings (`(B, C_sam, h, w)`), valid_mask_sizes (`(B, 2)`): the SAM branch.
        backbone_inputs: the backbone's image inputs of the B rows (``pixel_values``, ``image_grid_thw``).
        sam_pixel_values (`(B, 3, S, S)`, *optional*): the SAM input pixels (required by a mask refiner).

    Returns:
        ``(log_probs (B, C), entropy (B, C) or None, aux_loss or None, SegCompassOutput)``.
    """
    inputs = {"input_ids": sequence.input_ids, "attention_mask": sequence.attention_mask, **backbone_inputs,
              "output_hidden_states": True}
    if sequence.mm_token_type_ids is not None:
        inputs["mm_token_type_ids"] = sequence.mm_token_type_ids
    if compute_aux_loss:
        inputs["output_router_logits"] = True
    first = sequence.completion_start - 1  # the LM head is shifted: position t scores token t + 1
    with capture_hidden_states(segcompass.backbone.base_model) as captured, autocast():
        outputs = policy(**inputs, labels=sequence.labels, fused_lm_head=True)
    if len(captured) != 1:
        raise RuntimeError(f"expected one backbone forward, the hook saw {len(captured)}; transformers or TRL changed.")
    states = captured[0]  # L + 1 tensors (B, T, D)
    log_probs = outputs.log_probs[:, first:first + completion_length]  # (B, C)
    entropy = None
    if compute_entropy and outputs.entropy is not None:
        entropy = outputs.entropy[:, first:first + completion_length]  # (B, C)
    with autocast():
        seg = segcompass.segment_from_hidden_states(
            sequence.input_ids, sequence.attention_mask, states[segcompass.config.sae_config.hook_layer], states[-1],
            image_embeddings, valid_mask_sizes, sam_pixel_values=sam_pixel_values,
        )
    return log_probs, entropy, getattr(outputs, "aux_loss", None), seg
