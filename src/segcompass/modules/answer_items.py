"""Concepts grouped by answer item: slot k reads the SAE concepts of the k-th object its answer names.

The paper pools one support set S(z) over the whole prompt + reasoning and lets all K slots attend to it. When an
answer names several objects ("target : small yellow diamond at top right , big red circle at center ."), that bag
no longer says which colour goes with which kind or place, and the words of the reasoning's other sentences (the
reference object, the candidates it rejected) are in it too. With ``SegCompassConfig.concept_grouping =
"answer_items"`` the answer list (the tokens after the last *open* token before the last reference token, up to the
next *close* token) is split at the *separator* tokens, and slot k pools its own support set over the tokens of item k:
the k-th slot's concepts, heatmap and mask then come from the k-th named object, and the provenance of a slot is the
words of that one item.

Which tokens open, separate and close the list is ``SegCompassConfig.answer_item_token_ids`` (``[open, separator,
close]``; ``:``, ``,`` and ``.`` in the synthetic reasoning). A sequence without an open token (a malformed answer)
falls back to the paper's pooling for slot 0 (every valid token) and no concepts for the other slots. Items past the
K-th are not read. ``concept_grouping = "answer"`` keeps one support set for all slots, pooled over every item of the
list (:func:`answer_mask`): the objects the reasoning mentioned and rejected stay out of it.

The same list also says how many objects the answer names (:func:`answer_item_counts`); with
``SegCompassConfig.limit_instances_to_answer`` the prediction keeps at most that many slots.
"""

from __future__ import annotations

import torch

from ..sae.outputs import PooledConcepts

CONCEPT_GROUPINGS = ("sequence", "answer", "answer_items")
"""``SegCompassConfig.concept_grouping``: one support set over the sequence (the paper), one over the answer list, or
one per answer item."""


def check_concept_grouping(grouping: str) -> str:
    """``grouping`` if it is one of :data:`CONCEPT_GROUPINGS`, else a ValueError naming it and the choices. The one
    check of ``SegCompassConfig.concept_grouping`` and ``TinyRecipeConfig.concept_grouping``."""
    if grouping not in CONCEPT_GROUPINGS:
        raise ValueError(f"`concept_grouping` must be one of {list(CONCEPT_GROUPINGS)}, got {grouping!r}.")
    return grouping


def _answer_list(input_ids: torch.LongTensor, attention_mask: torch.Tensor, ref_token_id: int,
                 item_token_ids: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The answer list's tokens: ``span`` `(B, T)` bool (separators included), ``separators`` `(B, T)` bool and
    ``found`` `(B,)` bool (False when the sequence has no open token before the reference token)."""
    open_id, separator_id, close_id = item_token_ids
    batch, length = input_ids.shape
    valid = attention_mask.bool()  # (B, T)
    position = torch.arange(length, device=input_ids.device).expand(batch, -1)  # (B, T)
    is_ref = (input_ids == ref_token_id) & valid  # the prompt may name the token too: the answer ends at the last
    ref_at = torch.where(is_ref.any(1), torch.where(is_ref, position, -1).amax(1), length)  # (B,) last one, else T
    before_ref = position < ref_at[:, None]  # (B, T)
    opens = (input_ids == open_id) & before_ref & valid
    open_at = torch.where(opens, position, -1).amax(1)  # (B,) last open token, -1 when none
    after_open = position > open_at[:, None]
    closes = (input_ids == close_id) & after_open & before_ref
    close_at = torch.where(closes, position, length).amin(1).minimum(ref_at)  # (B,) first close after the open
    span = after_open & (position < close_at[:, None]) & valid  # (B, T) the answer list
    return span, (input_ids == separator_id) & span, open_at >= 0


def answer_item_masks(input_ids: torch.LongTensor, attention_mask: torch.Tensor, ref_token_id: int,
                      item_token_ids: tuple[int, int, int], num_slots: int) -> torch.Tensor:
    """Which tokens belong to each of the first K answer items.

    Args:
        input_ids (`(B, T)`); attention_mask (`(B, T)`): 1 on valid tokens (holes allowed; they belong to no item).
        ref_token_id (`int`): the reference token; the answer list is looked for before its last valid occurrence
            (the one that ends the reasoning: a prompt may also name the token), or in the whole sequence when it is
            absent.
        item_token_ids (`(open, separator, close)` ints): the list starts after the last ``open`` token before the
            reference token and ends at the first ``close`` token after that (or at the reference token); items are
            split at ``separator`` tokens, which belong to no item.
        num_slots (`int`): K.

    Returns:
        `(B, K, T)` masks in ``attention_mask``'s dtype: 1 where token t belongs to item k. A sequence with no open
        token gets every valid token in slot 0 and nothing in the others.
    """
    span, separators, found = _answer_list(input_ids, attention_mask, ref_token_id, item_token_ids)
    item = separators.long().cumsum(1)  # (B, T) index of the item each token is in
    in_item = span & ~separators
    slots = torch.arange(num_slots, device=input_ids.device)
    groups = in_item[:, None, :] & (item[:, None, :] == slots[None, :, None])  # (B, K, T)
    fallback = torch.zeros_like(groups)
    fallback[:, 0] = attention_mask.bool()  # the paper's pooling in slot 0 when no list was found
    groups = torch.where(found[:, None, None], groups, fallback)  # (B, K, T)
    return groups.to(attention_mask.dtype)


def answer_mask(input_ids: torch.LongTensor, attention_mask: torch.Tensor, ref_token_id: int,
                item_token_ids: tuple[int, int, int]) -> torch.Tensor:
    """The tokens of every answer item (``concept_grouping="answer"``): the list of :func:`answer_item_masks`
    without its separators, all items (not only the first K). A sequence with no open token keeps every valid token.

    Returns:
        `(B, T)` mask in ``attention_mask``'s dtype.
    """
    span, separators, found = _answer_list(input_ids, attention_mask, ref_token_id, item_token_ids)
    items = span & ~separators  # (B, T)
    return torch.where(found[:, None], items, attention_mask.bool()).to(attention_mask.dtype)


def answer_item_counts(input_ids: torch.LongTensor, attention_mask: torch.Tensor, ref_token_id: int,
                       item_token_ids: tuple[int, int, int]) -> torch.LongTensor:
    """How many objects each answer names: the items of the answer list of :func:`answer_item_masks` (separators + 1
    when the list holds a word, 0 for an empty list), or -1 where the sequence has no open token (no list, no count).
    The limit of ``SegCompassConfig.limit_instances_to_answer``.

    Returns:
        `(B,)` long.
    """
    span, separators, found = _answer_list(input_ids, attention_mask, ref_token_id, item_token_ids)
    words = (span & ~separators).any(1)  # (B,) the list names something
    counts = torch.where(words, separators.sum(1) + 1, torch.zeros_like(found, dtype=torch.long))  # (B,)
    return torch.where(found, counts, torch.full_like(counts, -1))


def flatten_groups(concepts: PooledConcepts, batch: int, num_slots: int) -> PooledConcepts:
    """Per-item concepts of ``B * K`` rows -> one list of ``K * N`` concepts per sample (slot k's at k·N ...).

    ``indices`` / ``values`` / ``mask`` `(B*K, N)` -> `(B, K*N)`; ``token_activations`` / ``active`` `(B*K, T, N)` ->
    `(B, T, K*N)`; ``pooled`` `(B*K, d_sae)` -> the max over the items `(B, d_sae)`.
    """
    def rows(x):
        return x.reshape(batch, -1)  # (B, K*N)

    def tokens(x):
        n = x.shape[-1]
        return x.reshape(batch, num_slots, -1, n).permute(0, 2, 1, 3).reshape(batch, x.shape[1], num_slots * n)

    return PooledConcepts(
        indices=rows(concepts.indices), values=rows(concepts.values), mask=rows(concepts.mask),
        token_activations=tokens(concepts.token_activations),
        pooled=None if concepts.pooled is None else concepts.pooled.reshape(batch, num_slots, -1).amax(1),
        active=None if concepts.active is None else tokens(concepts.active),
    )


def block_diagonal_provenance(provenance: torch.Tensor) -> torch.Tensor:
    """Slot k's attention over its own N concepts `(B, K, N)` -> over all K*N concepts `(B, K, K*N)` (0 elsewhere)."""
    batch, num_slots, n = provenance.shape
    eye = torch.eye(num_slots, dtype=provenance.dtype, device=provenance.device)  # (K, K)
    return (eye[None, :, :, None] * provenance[:, :, None, :]).reshape(batch, num_slots, num_slots * n)


__all__ = ["CONCEPT_GROUPINGS", "answer_item_counts", "answer_item_masks", "answer_mask", "block_diagonal_provenance",
           "check_concept_grouping", "flatten_groups"]
