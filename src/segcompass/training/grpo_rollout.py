"""The SegCompass side of a GRPO rollout: TRL's generated ids made into the scoring sequences (prompt + completion
cut at its first ``<REF_POS>``, appended when missing, + the K slot tokens), SAM's image keys, and the no-grad
scoring forward that decodes every completion's K masks for the reward functions.

Imports no ``trl``: :class:`~segcompass.training.grpo_trainer.SegCompassGRPOTrainer` calls these from its
``_generate`` / ``segmentation_forward``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..prediction import instance_limit

if TYPE_CHECKING:
    from ..modeling_segcompass import SegCompassForReasoningSegmentation

__all__ = [
    "backbone_image_kwargs",
    "decode_rollout_masks",
    "left_pad",
    "right_pad",
    "sam_image_embeddings",
    "scoring_inputs",
]


def left_pad(rows: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of ids -> left-padded ``(B, T)`` ids and mask (T = the longest row)."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        if len(row):
            ids[b, width - len(row):] = torch.as_tensor(list(row), dtype=torch.long)
            mask[b, width - len(row):] = 1
    return ids, mask


def right_pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Lists of ids -> right-padded ``(B, T)`` ids (T = the longest row, at least 1)."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), max(width, 1)), value, dtype=torch.long)
    for b, row in enumerate(rows):
        if len(row):
            ids[b, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
    return ids


def scoring_inputs(
    segcompass: SegCompassForReasoningSegmentation,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    pad_token_id: int,
    eos_token_ids: Sequence[int],
    mm_token_type_ids: Sequence[Sequence[int]] | None = None,
) -> dict:
    """The scoring sequences of B rollouts from TRL's unpadded id lists (prompts left-padded, completions
    right-padded): :meth:`SegCompassForReasoningSegmentation.build_scoring_inputs`, i.e. ``input_ids`` /
    ``attention_mask`` (and ``mm_token_type_ids``) ``(B, T')``, ``completion_ids`` and ``malformed`` ``(B,)``."""
    prompt_tensor, prompt_mask = left_pad(prompt_ids, pad_token_id)  # (B, Tp)
    completion_tensor = right_pad(completion_ids, pad_token_id)  # (B, Tc)
    mm = None if mm_token_type_ids is None else left_pad(mm_token_type_ids, 0)[0]  # (B, Tp)
    return segcompass.build_scoring_inputs(
        prompt_tensor, prompt_mask, completion_tensor, pad_token_id, list(eos_token_ids), mm
    )


def backbone_image_kwargs(fields: dict, start: int, end: int) -> dict:
    """Slice the backbone image inputs (``pixel_values``, optional ``image_grid_thw``) of rows [start, end) (one
    image per row; Qwen2.5-VL's patches are concatenated over the rows)."""
    pixel_values = fields["pixel_values"]
    grid = fields.get("image_grid_thw")
    if grid is None:
        return {"pixel_values": pixel_values[start:end]}
    rows = grid.prod(-1).cumsum(0).tolist()
    first = 0 if start == 0 else int(rows[start - 1])
    return {"pixel_values": pixel_values[first: int(rows[end - 1])], "image_grid_thw": grid[start:end]}


@torch.no_grad()
def sam_image_embeddings(
    segcompass: SegCompassForReasoningSegmentation,
    sam_pixel_values: torch.Tensor,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> torch.Tensor:
    """SAM image keys ``(B, C, h, w)`` (float32, SAM's encoder in eval mode), encoding consecutive duplicates (the G
    rollouts of a prompt) once."""
    encoder = segcompass.vision_encoder
    was_training = encoder.training
    encoder.eval()
    out, cache = [], None
    for row in sam_pixel_values:
        if cache is None or not torch.equal(cache[0], row):
            with autocast():
                cache = (row, segcompass.get_image_embeddings(row[None]).float())
        out.append(cache[1])
    encoder.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def decode_rollout_masks(
    segcompass: SegCompassForReasoningSegmentation,
    scoring: dict,
    image_fields: dict,
    image_embeddings: torch.Tensor,
    valid_sizes: torch.Tensor,
    *,
    chunk: int,
    device: torch.device | str,
    autocast: Callable[[], Any] = contextlib.nullcontext,
    sam_pixel_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[int | None]]:
    """The no-grad SegCompass forward over the scoring sequences, ``chunk`` rows at a time (the heads' train / eval
    mode is the caller's).

    Args:
        scoring: :func:`scoring_inputs` (``input_ids`` / ``attention_mask`` ``(B, T')``, optional
            ``mm_token_type_ids``); image_fields: the backbone image inputs of the B rows
            (:func:`backbone_image_kwargs`); image_embeddings (`(B, C, h, w)`); valid_sizes (`(B, 2)`).

    Returns:
        mask probabilities ``(B, K, m, m)`` and slot confidence probabilities ``(B, K)``, float32, and each row's
        ``max_instances`` (:func:`segcompass.prediction.instance_limit` of ``outputs.instance_limits``; all None unless
        ``config.limit_instances_to_answer``).
    """
    batch = scoring["input_ids"].shape[0]
    masks, confidences, limits = [], [], []
    for start in range(0, batch, chunk):
        end = min(start + chunk, batch)
        kwargs = {k: v.to(device) for k, v in backbone_image_kwargs(image_fields, start, end).items()}
        if "mm_token_type_ids" in scoring:
            kwargs["mm_token_type_ids"] = scoring["mm_token_type_ids"][start:end].to(device)
        with autocast():
            out = segcompass(
                input_ids=scoring["input_ids"][start:end].to(device),
                attention_mask=scoring["attention_mask"][start:end].to(device),
                image_embeddings=image_embeddings[start:end],
                sam_pixel_values=None if sam_pixel_values is None else sam_pixel_values[start:end],
                valid_mask_sizes=valid_sizes[start:end], **kwargs,
            )
        masks.append(out.mask_logits.float().sigmoid())  # (b, K, m, m)
        confidences.append(out.confidence_logits.float().sigmoid())  # (b, K)
        limits += [instance_limit(out.instance_limits, b) for b in range(end - start)]
    return torch.cat(masks), torch.cat(confidences), limits
