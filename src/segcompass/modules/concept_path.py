"""The concept path from the SAE's hook-layer states to the K concept representations r_k (paper eq. 4, §3.2).

One support set S(z) per sample (``grouping="sequence"``, the paper; optionally over the last ``window`` tokens), one
over the answer list (``grouping="answer"``) or one per answer item (``grouping="answer_items"``; both in
:mod:`segcompass.modules.answer_items`), then the concept interface. Shared by every forward of [`SegCompassForReasoningSegmentation`] (pipeline, training, GRPO scoring).
"""

from __future__ import annotations

import torch

from ..sae.outputs import PooledConcepts
from .answer_items import answer_item_masks, answer_mask, block_diagonal_provenance, flatten_groups
from .concept_interface import SparseConceptInterface, last_activation_distance


def concept_path(
    sae, interface: SparseConceptInterface, input_ids: torch.LongTensor, attention_mask: torch.Tensor,
    hook_states: torch.Tensor, *, grouping: str, item_token_ids, ref_token_id: int | None, window: int | None,
    threshold: float, top_n: int, pooling: str, centered: bool,
) -> tuple[PooledConcepts, torch.Tensor, torch.Tensor]:
    """SAE support set(s) -> concept interface.

    Args:
        sae: the frozen [`SparseAutoencoder`] (its :meth:`pooled_concepts` selects and pools).
        interface: the [`SparseConceptInterface`] (K = ``interface.num_slots``).
        input_ids / attention_mask (`(B, T)`); hook_states (`(B, T, D)`): the SAE's hook-layer states.
        grouping (`str`): ``"sequence"``, ``"answer"`` or ``"answer_items"``; item_token_ids / ref_token_id: see
            :func:`answer_item_masks` (``"answer"`` and ``"answer_items"`` only).
        window (`int`, *optional*): ``"sequence"`` only: pool over the last ``window`` valid tokens.
        threshold / top_n / pooling: τ, N and the pooling of :meth:`SparseAutoencoder.pooled_concepts`.
        centered (`bool`): rank by pooled activation minus the interface's running baseline (updated in training).

    Returns:
        PooledConcepts with `(B, N')` rows, r_k `(B, K, d_c)` and provenance `(B, K, N')`; N' = N, or K·N with
        ``"answer_items"`` (slot k's concepts at k·N ... (k+1)·N - 1, its provenance 0 elsewhere).
    """
    grouped = grouping == "answer_items"
    batch, num_slots = input_ids.shape[0], interface.num_slots
    concept_mask = attention_mask  # (B, T)
    if grouping == "answer":  # one support set over the whole answer list (every valid token when there is none)
        concept_mask = answer_mask(input_ids, attention_mask, ref_token_id, item_token_ids)  # (B, T)
    elif grouped:
        concept_mask = answer_item_masks(input_ids, attention_mask, ref_token_id, item_token_ids,
                                         num_slots).flatten(0, 1)  # (B*K, T)
        hook_states = hook_states.repeat_interleave(num_slots, dim=0)  # (B*K, T, D)
    elif window is not None:  # only the last W valid tokens: the end of the reasoning
        from_end = attention_mask.flip(1).cumsum(1).flip(1)  # (B, T) valid tokens at or after t
        concept_mask = attention_mask * (from_end <= window)
    concepts = sae.pooled_concepts(
        hook_states, concept_mask, threshold=threshold, top_n=top_n, pooling=pooling,
        baseline=interface.baseline if centered and int(interface.baseline_batches) > 0 else None,
    )  # indices/values/mask (R, N), token_activations (R, T, N), pooled (R, d_sae); R = B or B*K
    if centered and interface.training:  # the heads' mode (GRPO switches the heads, not this module)
        interface.update_baseline(concepts.pooled[concept_mask.bool().any(1)] if grouped else concepts.pooled)
    distances = last_activation_distance(concepts.active, attention_mask if grouping == "sequence" else concept_mask)
    if not grouped:
        concept_slots, provenance = interface(concepts.indices, concepts.values, concepts.mask, distances)
        return concepts, concept_slots, provenance
    n = concepts.indices.shape[1]
    concept_slots, provenance = interface.forward_grouped(  # (B, K, d_c), (B, K, N)
        concepts.indices.view(batch, num_slots, n), concepts.values.view(batch, num_slots, n),
        concepts.mask.view(batch, num_slots, n), distances.view(batch, num_slots, n))
    return flatten_groups(concepts, batch, num_slots), concept_slots, block_diagonal_provenance(provenance)


__all__ = ["concept_path"]
