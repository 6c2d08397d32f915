"""Token types of a teacher-forced SegCompass sequence and the Qwen2.5-VL image-token geometry (paper §4.3).

Dimension glossary: ``B`` sequences, ``T`` tokens of one scored sequence, ``(H, W)`` original image size,
``(g_h, g_w)`` the grid of *merged* Qwen2.5-VL image tokens, ``n = g_h * g_w`` image tokens.

Token types (:data:`TOKEN_TYPES`), assigned by :func:`token_types` to every position of a scored sequence
``prompt + completion [+ <REF_POS>] [+ <SLOT_0> ... <SLOT_{K-1}>]``:

- ``"question"``: non-special tokens whose characters overlap the filled-in prompt template
  (``processor.prompt_template`` with the instruction inserted), i.e. the user's request and the instructions around
  it. The system prompt and chat headers are not part of it.
- ``"cot"``: non-special tokens of the *completion* whose characters overlap the interior of its first
  ``<think> ... </think>`` block (an unclosed ``<think>`` runs to the end of the completion). A token that merges a tag
  with reasoning text (e.g. ``">The"``) counts as ``cot``; tokens made only of tag characters are ``other``. The
  ``<think> </think>`` mentioned inside the prompt template is prompt text, never ``cot``.
- ``"instance"`` / ``"background"``: ``<|image_pad|>`` tokens. Qwen2.5-VL resizes the original ``(H, W)`` image
  (a plain stretch, no crop or padding) to ``(h', w') = (g_h * 28, g_w * 28)`` pixels (patch 14, merge 2), where
  ``image_grid_thw = (1, 2 g_h, 2 g_w)``; the n merged tokens are laid out row-major over the ``g_h x g_w`` grid, so
  token ``i * g_w + j`` covers the original pixels whose centres fall in rows ``[i H / g_h, (i + 1) H / g_h)`` and
  columns ``[j W / g_w, (j + 1) W / g_w)`` (:func:`patch_index_map`). A token is ``instance`` when more than
  ``min_overlap`` of its cell's pixels (default: any pixel) lie in the union ground-truth mask, else ``background``.
- ``"other"``: everything else: chat-template scaffolding, the system prompt, ``<|vision_start|>`` /
  ``<|vision_end|>``, special tokens anywhere (``<REF_POS>``, slot tokens, ``<|im_end|>``; the unknown token is
  treated as text), tag-only ``<think>`` / ``</think>`` tokens and padding.

Only the Qwen2.5-VL backbone is supported (LLaVA-1.5 center-crops the image to a fixed grid, a different mapping).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..answer_format import THINK_CLOSE, THINK_OPEN, append_slots_to_text
from ..utils.masks import to_binary_mask

TOKEN_TYPES = ("question", "cot", "instance", "background", "other")
"""The labels of :func:`token_types`, in the order the analyses report them."""


# ------------------------------------------------------------------------------------------------ patch geometry
def check_qwen(processor) -> None:
    """Raise unless ``processor`` is a Qwen2.5-VL processor (the only patch geometry these mappings model)."""
    backbone = getattr(processor, "backbone_type", None)
    if backbone != "qwen2_5_vl":
        raise ValueError(
            f"The interpretability analyses support the Qwen2.5-VL backbone only, got backbone_type={backbone!r}. "
            "LLaVA-1.5 center-crops images to a fixed patch grid, which these image-token/pixel mappings do not "
            "model; "
            "analyse a Qwen2.5-VL SegCompass checkpoint (SegCompassProcessor(backbone_type='qwen2_5_vl'))."
        )


def image_token_grid(image_grid_thw, merge_size: int = 2) -> tuple[int, int]:
    """``(g_h, g_w)``: the merged image-token grid of one image from its ``image_grid_thw`` row ``(3,)``
    ``(t, h_patches, w_patches)`` and the processor's ``merge_size``."""
    t, h, w = (int(v) for v in torch.as_tensor(image_grid_thw).reshape(-1)[:3])
    if t != 1:
        raise ValueError(
            f"image_grid_thw {(t, h, w)} has t={t} temporal patches; only still images (t=1) are supported. Pass "
            "images, not videos."
        )
    if h % merge_size or w % merge_size:
        raise ValueError(
            f"image_grid_thw {(t, h, w)} is not divisible by merge_size={merge_size}; pass the image_grid_thw "
            "produced by the same processor (its image_processor.merge_size)."
        )
    return h // merge_size, w // merge_size


def patch_index_map(height: int, width: int, grid: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` int64: the image token (row-major index over the ``(g_h, g_w)`` grid) whose cell holds each
    original pixel's centre (the processor's resize is a plain stretch, so cells are equal slices of the image)."""
    grid_h, grid_w = int(grid[0]), int(grid[1])
    if height < 1 or width < 1 or grid_h < 1 or grid_w < 1:
        raise ValueError(f"patch_index_map needs a positive image size and grid, got {(height, width)} / {grid}.")
    rows = np.minimum(((np.arange(height) + 0.5) * grid_h / height).astype(np.int64), grid_h - 1)  # (H,)
    cols = np.minimum(((np.arange(width) + 0.5) * grid_w / width).astype(np.int64), grid_w - 1)  # (W,)
    return rows[:, None] * grid_w + cols[None, :]  # (H, W)


def token_mask_overlap(mask, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per image token: ``(mask pixels in its cell (n,), all pixels in its cell (n,))``, both int64.

    Args:
        mask: ``(H, W)`` mask at the original image size (anything :func:`~segcompass.utils.masks.to_binary_mask`
            reads, RLE included).
        grid: ``(g_h, g_w)`` from :func:`image_token_grid`.
    """
    binary = to_binary_mask(mask)  # (H, W)
    cells = patch_index_map(binary.shape[0], binary.shape[1], grid)  # (H, W)
    n = int(grid[0]) * int(grid[1])
    inside = np.bincount(cells[binary], minlength=n).astype(np.int64)  # (n,)
    sizes = np.bincount(cells.reshape(-1), minlength=n).astype(np.int64)  # (H * W,) -> (n,)
    return inside, sizes


# ------------------------------------------------------------------------------------------------ token types
def _special_ids(processor) -> set[int]:
    tokenizer = processor.tokenizer
    ids = set(tokenizer.all_special_ids)
    ids.update(int(i) for i in tokenizer.added_tokens_decoder if tokenizer.added_tokens_decoder[i].special)
    ids.add(processor.ref_token_id)
    ids.update(processor.slot_token_ids)
    ids.add(tokenizer.convert_tokens_to_ids(processor.image_token))
    ids.discard(tokenizer.unk_token_id)  # an unknown word is still text of its span
    return ids


def _as_list(value, batch: int, name: str) -> list:
    items = [value] if isinstance(value, str) or value is None else list(value)
    if len(items) == 1 and batch > 1:
        items = items * batch
    if len(items) != batch:
        raise ValueError(f"Got {len(items)} {name} for {batch} sequences; pass one per sequence.")
    return items


def _sequence_text(processor, instruction: str, completion: str, appended_slots: bool, num_image_tokens: int):
    """The exact text the processor tokenized (image placeholder expanded) and its character spans."""
    rendered = processor.render_prompt(instruction)
    image_token = processor.image_token
    rendered = rendered.replace(image_token, image_token * num_image_tokens)
    filled = processor.prompt_template.replace("{instruction}", instruction.strip())
    q_start = rendered.find(filled)
    if q_start < 0:
        raise ValueError(
            "The rendered prompt does not contain the filled-in prompt template verbatim, so question tokens cannot "
            "be located; use a chat template that inserts the user text unchanged."
        )
    text = rendered + completion
    if appended_slots:
        text = rendered + append_slots_to_text(completion, processor.ref_token, processor.slot_tokens)[0]
    start = len(rendered)
    cot = None
    opened = completion.find(THINK_OPEN)
    if opened >= 0:
        closed = completion.find(THINK_CLOSE, opened + len(THINK_OPEN))
        end = closed if closed >= 0 else len(completion)
        cot = (start + opened + len(THINK_OPEN), start + end)
    return text, (q_start, q_start + len(filled)), cot


def token_types(
    input_ids,
    processor,
    instructions: str | Sequence[str],
    completions: str | Sequence[str] | None = None,
    *,
    image_grid_thw,
    masks: Sequence[Any],
    attention_mask=None,
    min_overlap: float = 0.0,
) -> np.ndarray:
    """Label every token of scored sequences with one of :data:`TOKEN_TYPES` (rules in the module docstring).

    The sequences are re-derived from their text: the rendered prompt + completion (+ ``<REF_POS>`` and the slot
    tokens when the row holds them) is tokenized with character offsets, and must reproduce the row's tokens exactly.

    Args:
        input_ids (`(B, T)` or `(T,)`): sequences from ``processor(images, instructions, completions=...)``.
        processor: a Qwen2.5-VL [`SegCompassProcessor`] (fast tokenizer).
        instructions: the B instructions (one string is shared by all rows).
        completions: the B completions appended after the prompt (``None``: none).
        image_grid_thw (`(B, 3)`): from the processor.
        masks: B union ground-truth masks ``(H_b, W_b)`` at the original image sizes (all-zero for no target).
        attention_mask (`(B, T)`, *optional*): 0 on padding (labelled ``"other"``).
        min_overlap: an image token is ``"instance"`` when the fraction of its cell's pixels inside the mask exceeds
            this (0.0: any pixel).

    Returns:
        `(B, T)` (or `(T,)` for 1-D input) numpy array of type names (``<U10``).
    """
    check_qwen(processor)
    if not hasattr(processor.tokenizer, "is_fast") or not processor.tokenizer.is_fast:
        raise ValueError(
            "token_types needs a fast tokenizer (character offsets); load the processor with use_fast=True."
        )
    if not 0.0 <= float(min_overlap) < 1.0:
        raise ValueError(f"min_overlap is a fraction in [0, 1), got {min_overlap}.")
    ids = torch.as_tensor(input_ids).cpu()
    squeeze = ids.ndim == 1
    ids = ids[None] if squeeze else ids  # (B, T)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be (B, T) or (T,), got shape {tuple(ids.shape)}.")
    batch, length = ids.shape
    valid = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else torch.as_tensor(attention_mask).cpu()
    valid = valid.reshape(batch, length).bool()  # (B, T)
    instructions = _as_list(instructions, batch, "instructions")
    completions = [c or "" for c in _as_list(completions, batch, "completions")]
    if isinstance(masks, np.ndarray) and masks.ndim == 2 or len(masks) != batch:
        raise ValueError(f"masks must be a list of {batch} (H, W) union masks, one per sequence.")
    grids = torch.as_tensor(image_grid_thw).reshape(-1, 3)  # (B, 3)
    if grids.shape[0] != batch:
        raise ValueError(
            f"image_grid_thw has {grids.shape[0]} rows for {batch} sequences; pass one image per sequence."
        )

    tokenizer = processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids(processor.image_token)
    special = _special_ids(processor)
    merge = int(getattr(processor.image_processor, "merge_size", 2))
    labels = np.full((batch, length), "other", dtype="<U10")  # (B, T)
    for b in range(batch):
        positions = valid[b].nonzero().flatten().numpy()
        row = ids[b, positions].numpy()
        grid = image_token_grid(grids[b], merge)
        num_image = grid[0] * grid[1]
        appended = bool(np.isin(processor.slot_token_ids, row).all())
        text, question, cot = _sequence_text(processor, instructions[b], completions[b], appended, num_image)
        bos = getattr(tokenizer, "bos_token", None)
        encoded = tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)), return_offsets_mapping=True)
        if list(encoded["input_ids"]) != row.tolist():
            raise ValueError(
                f"Row {b}: re-tokenizing the prompt + completion does not reproduce input_ids "
                f"({len(encoded['input_ids'])} vs {len(row)} tokens); pass the same instructions/completions the "
                "processor was called with."
            )
        offsets = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)  # (t, 2)
        is_special = np.isin(row, list(special))
        row_labels = np.full(len(row), "other", dtype="<U10")
        in_question = (offsets[:, 0] < question[1]) & (offsets[:, 1] > question[0]) & ~is_special
        row_labels[in_question] = "question"
        if cot is not None and cot[1] > cot[0]:
            in_cot = (offsets[:, 0] < cot[1]) & (offsets[:, 1] > cot[0]) & ~is_special
            row_labels[in_cot] = "cot"
        image_positions = np.flatnonzero(row == image_id)
        if len(image_positions) != num_image:
            raise ValueError(
                f"Row {b} has {len(image_positions)} image tokens but image_grid_thw {grids[b].tolist()} implies "
                f"{num_image}; pass the image_grid_thw of these input_ids."
            )
        inside, sizes = token_mask_overlap(masks[b], grid)
        fraction = inside / np.maximum(sizes, 1)
        row_labels[image_positions] = np.where((inside > 0) & (fraction > min_overlap), "instance", "background")
        labels[b, positions] = row_labels
    return labels[0] if squeeze else labels
