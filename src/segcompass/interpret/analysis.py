"""Interpretability analyses of a SegCompass model (paper §4.3, Figures 4 and 5; Appendix C.1, Figure 8 right).

Dimension glossary: ``B`` samples, ``T`` tokens of one scored sequence, ``D`` backbone hidden size, ``d_sae`` SAE
features, ``K`` slots, ``(H, W)`` original image size, ``(g_h, g_w)`` the grid of *merged* Qwen2.5-VL image tokens,
``n = g_h * g_w`` image tokens, ``P`` thresholds / fractions.

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

Every analysis runs one teacher-forced forward per sample over ``prompt + reference completion + <REF_POS> + slots``
(``processor(image, instruction, completions=[completion], append_slots=True)``); the reference completion is
``<think>{sample["reasoning"]}</think><REF_POS>`` unless ``completions`` are given. Results are plain dicts of
Python scalars and lists (:func:`to_jsonable` turns anything else, e.g. numpy arrays, into JSON-ready values).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..image_utils import load_image
from ..utils.logging import get_logger
from ..utils.masks import to_binary_mask, union_masks

logger = get_logger(__name__)

__all__ = [
    "TOKEN_TYPES",
    "activation_patterns",
    "heatmap_mask_agreement",
    "image_token_grid",
    "instance_coverage",
    "patch_index_map",
    "to_jsonable",
    "token_mask_overlap",
    "token_types",
]

TOKEN_TYPES = ("question", "cot", "instance", "background", "other")
"""The labels of :func:`token_types`, in the order the analyses report them."""

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


# ------------------------------------------------------------------------------------------------ patch geometry
def _check_qwen(processor) -> None:
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
    return rows[:, None] * grid_w + cols[None, :]


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
    inside = np.bincount(cells[binary], minlength=n).astype(np.int64)
    sizes = np.bincount(cells.reshape(-1), minlength=n).astype(np.int64)
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
        text += ("" if processor.ref_token in completion else processor.ref_token) + "".join(processor.slot_tokens)
    start = len(rendered)
    cot = None
    opened = completion.find(_THINK_OPEN)
    if opened >= 0:
        closed = completion.find(_THINK_CLOSE, opened + len(_THINK_OPEN))
        end = closed if closed >= 0 else len(completion)
        cot = (start + opened + len(_THINK_OPEN), start + end)
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
    _check_qwen(processor)
    if not hasattr(processor.tokenizer, "is_fast") or not processor.tokenizer.is_fast:
        raise ValueError(
            "token_types needs a fast tokenizer (character offsets); load the processor with use_fast=True."
        )
    if not 0.0 <= float(min_overlap) < 1.0:
        raise ValueError(f"min_overlap is a fraction in [0, 1), got {min_overlap}.")
    ids = torch.as_tensor(input_ids).cpu()
    squeeze = ids.ndim == 1
    ids = ids[None] if squeeze else ids
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be (B, T) or (T,), got shape {tuple(ids.shape)}.")
    batch, length = ids.shape
    valid = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else torch.as_tensor(attention_mask).cpu()
    valid = valid.reshape(batch, length).bool()
    instructions = _as_list(instructions, batch, "instructions")
    completions = [c or "" for c in _as_list(completions, batch, "completions")]
    if isinstance(masks, np.ndarray) and masks.ndim == 2 or len(masks) != batch:
        raise ValueError(f"masks must be a list of {batch} (H, W) union masks, one per sequence.")
    grids = torch.as_tensor(image_grid_thw).reshape(-1, 3)
    if grids.shape[0] != batch:
        raise ValueError(
            f"image_grid_thw has {grids.shape[0]} rows for {batch} sequences; pass one image per sequence."
        )

    tokenizer = processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids(processor.image_token)
    special = _special_ids(processor)
    merge = int(getattr(processor.image_processor, "merge_size", 2))
    labels = np.full((batch, length), "other", dtype="<U10")
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


# ------------------------------------------------------------------------------------------------ forwards
def _sample_fields(sample: Mapping[str, Any], index: int):
    for key in ("image", "instruction"):
        if key not in sample:
            raise ValueError(f"Sample {index} has no {key!r}; pass rows of the SegCompass dataset schema.")
    image = load_image(sample["image"])
    height, width = image.height, image.width
    instances = [to_binary_mask(m) for m in (sample.get("masks") or [])]
    for i, m in enumerate(instances):
        if m.shape != (height, width):
            raise ValueError(
                f"Sample {index}: mask {i} has shape {m.shape} but the image is {(height, width)}; masks must be at "
                "the original image size."
            )
    union = union_masks(instances, shape=(height, width)) if instances else np.zeros((height, width), dtype=bool)
    return image, instances, union


def _completion_for(sample: Mapping[str, Any], processor, index: int) -> str:
    reasoning = (sample.get("reasoning") or "").strip()
    if not reasoning:
        raise ValueError(
            f"Sample {index} ({sample.get('sample_id', '?')!r}) has no 'reasoning' to build the reference completion "
            "from; pass `completions=` (one '<think>...</think><REF_POS>' string per sample)."
        )
    return f"{_THINK_OPEN}{reasoning}{_THINK_CLOSE}{processor.ref_token}"


def _prepare(model, processor, samples, completions):
    _check_qwen(processor)
    backbone_type = getattr(model.config.backbone_config, "model_type", "")
    if not str(backbone_type).startswith("qwen2_5_vl"):
        raise ValueError(
            f"The model's backbone is {backbone_type!r}; the analyses support Qwen2.5-VL only. Load a Qwen2.5-VL "
            "SegCompass checkpoint."
        )
    samples = list(samples)
    if not samples:
        raise ValueError("`samples` is empty; pass at least one dataset row.")
    if completions is None:
        completions = [_completion_for(s, processor, i) for i, s in enumerate(samples)]
    else:
        completions = list(completions)
        if len(completions) != len(samples):
            raise ValueError(f"Got {len(completions)} completions for {len(samples)} samples; pass one per sample.")
    return samples, completions


def _encode(processor, image, instruction: str, completion: str, device, dtype):
    batch = processor(image, instruction, completions=[completion], append_slots=True)
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            batch[key] = value.to(dtype) if value.is_floating_point() else value
    return batch


class _EvalMode:
    """Run a block with the model in eval mode and without gradients; restores the previous mode."""

    def __init__(self, model):
        self.model, self.grad = model, torch.no_grad()

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        self.grad.__enter__()

    def __exit__(self, *exc):
        self.grad.__exit__(*exc)
        self.model.train(self.was_training)


def _sample_activations(
    model, processor, sample, completion: str, index: int, thresholds: Sequence[float], total_threshold: float = 0.0
):
    """One teacher-forced backbone forward + SAE encoding of one sample.

    Returns a dict: ``types`` (T,) names, ``counts`` (T, P) active features per token at each threshold,
    ``total`` (T,) activation summed over the features with ``|h| >= total_threshold``, ``grid`` (g_h, g_w),
    ``instances`` list of (H, W) masks, ``image_positions`` (n,) token positions of the image tokens in grid order.
    """
    image, instances, union = _sample_fields(sample, index)
    batch = _encode(processor, image, sample["instruction"], completion, model.device, model.dtype)
    names = processor.backbone_processor.model_input_names
    inputs = {k: batch[k] for k in names if k in batch and batch[k] is not None}
    out = model.backbone(**inputs, output_hidden_states=True, return_dict=True)
    hook = model.config.sae_config.hook_layer
    hidden = out.hidden_states[hook][0]  # (T, D)
    types = token_types(batch["input_ids"][0], processor, sample["instruction"], completion,
                        image_grid_thw=batch["image_grid_thw"], masks=[union])  # (T,)
    sparse = model.sae.encode_sparse(hidden, threshold=0.0)  # CSR over T tokens
    num_tokens = hidden.shape[0]
    rows = torch.repeat_interleave(torch.arange(num_tokens, device=sparse.offsets.device), sparse.offsets.diff())
    magnitude = sparse.values.abs().float()  # (nnz,)
    counts = torch.stack(
        [torch.bincount(rows[magnitude >= t], minlength=num_tokens) for t in thresholds], dim=1
    )  # (T, P)
    kept = magnitude >= total_threshold
    total = torch.zeros(num_tokens, dtype=torch.float32, device=rows.device)
    total.index_add_(0, rows[kept], sparse.values.float()[kept])
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    merge = int(getattr(processor.image_processor, "merge_size", 2))
    return {
        "types": types,
        "counts": counts.cpu().numpy(),
        "total": total.cpu().numpy(),
        "grid": image_token_grid(batch["image_grid_thw"][0], merge),
        "instances": instances,
        "image_positions": (batch["input_ids"][0] == image_id).nonzero().flatten().cpu().numpy(),
    }


def _check_values(values, name: str, low: float, high: float, low_open: bool) -> list[float]:
    values = [float(v) for v in values]
    if not values:
        raise ValueError(f"`{name}` is empty; pass at least one value.")
    for v in values:
        if not (low < v if low_open else low <= v) or v > high or math.isnan(v):
            bound = "(" if low_open else "["
            raise ValueError(f"`{name}` values must lie in {bound}{low}, {high}], got {v}.")
    return values


# ------------------------------------------------------------------------------------------------ Figure 4
def activation_patterns(
    model,
    processor,
    samples: Iterable[Mapping[str, Any]],
    thresholds: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.5),
    *,
    completions: Sequence[str] | None = None,
) -> dict:
    """Figure 4: mean number of active SAE features per token, per token type, at each threshold τ.

    A feature is active at a token when its SAE code ``h`` on ``hidden_states[L]`` is non-zero and ``|h| >= τ``
    (``model.sae.encode_sparse``). Means are over all tokens of a type, pooled across samples.

    Args:
        model: a Qwen2.5-VL [`SegCompassForReasoningSegmentation`].
        processor: its [`SegCompassProcessor`].
        samples: dataset rows (``image``, ``instruction``, ``masks``, ``reasoning``).
        thresholds: the P values of τ (>= 0).
        completions: optional teacher-forced completions (default ``<think>{reasoning}</think><REF_POS>``).

    Returns:
        ``{"thresholds": [P], "token_types": [...], "mean_active_features": {type: [P] or None when no token has
        the type}, "token_counts": {type: int}, "num_samples": int, "hook_layer": int, "d_sae": int}``.
    """
    thresholds = _check_values(thresholds, "thresholds", 0.0, math.inf, low_open=False)
    samples, completions = _prepare(model, processor, samples, completions)
    sums = {t: np.zeros(len(thresholds), dtype=np.float64) for t in TOKEN_TYPES}
    tokens = dict.fromkeys(TOKEN_TYPES, 0)
    with _EvalMode(model):
        for index, (sample, completion) in enumerate(zip(samples, completions)):
            acts = _sample_activations(model, processor, sample, completion, index, thresholds)
            for name in TOKEN_TYPES:
                chosen = acts["types"] == name
                sums[name] += acts["counts"][chosen].sum(0)
                tokens[name] += int(chosen.sum())
    means = {name: (sums[name] / tokens[name]).tolist() if tokens[name] else None for name in TOKEN_TYPES}
    logger.info("activation_patterns over %d samples: token counts %s", len(samples), tokens)
    return {
        "thresholds": thresholds,
        "token_types": list(TOKEN_TYPES),
        "mean_active_features": means,
        "token_counts": tokens,
        "num_samples": len(samples),
        "hook_layer": int(model.config.sae_config.hook_layer),
        "d_sae": int(model.config.sae_config.d_sae),
    }


# ------------------------------------------------------------------------------------------------ Figure 5
def _top_count(fraction: float, n: int) -> int:
    return max(1, min(n, math.ceil(round(fraction * n, 9))))


def instance_coverage(
    model,
    processor,
    samples: Iterable[Mapping[str, Any]],
    fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.4),
    seed: int = 0,
    *,
    random_repeats: int = 10,
    threshold: float = 0.0,
    completions: Sequence[str] | None = None,
) -> dict:
    """Figure 5: how much of each instance the top-K% most activated image tokens cover, vs random K%.

    Image tokens are ranked by their total SAE activation (sum over features with ``|h| >= threshold``); the top
    ``ceil(K * n)`` tokens (at least one) are kept and an instance's coverage is the fraction of its pixels whose
    cell (:func:`patch_index_map`) belongs to a kept token. The baseline keeps the same number of tokens chosen
    uniformly at random (``random_repeats`` draws per instance from ``numpy.random.default_rng(seed)``, averaged).
    Instances are the entries of ``sample["masks"]``; samples without any are skipped.

    Args:
        fractions: the P values of K, in (0, 1].
        seed: seed of the random baseline.

    Returns:
        ``{"fractions": [P], "top_k_coverage": [P], "random_coverage": [P]`` (means over instances, ``None`` when
        there is no instance), ``"per_instance_top_k": [num_instances][P]``, ``"per_instance_random":
        [num_instances][P]``, ``"instance_sample_index": [num_instances]``, ``"num_instances"``,
        ``"num_samples"``, ``"num_skipped_samples"}``.
    """
    fractions = _check_values(fractions, "fractions", 0.0, 1.0, low_open=True)
    threshold = _check_values([threshold], "threshold", 0.0, math.inf, low_open=False)[0]
    if not isinstance(random_repeats, int) or random_repeats < 1:
        raise ValueError(f"`random_repeats` must be a positive int, got {random_repeats!r}.")
    samples, completions = _prepare(model, processor, samples, completions)
    rng = np.random.default_rng(seed)
    top_rows, random_rows, owners, skipped = [], [], [], 0
    with _EvalMode(model):
        for index, (sample, completion) in enumerate(zip(samples, completions)):
            if not sample.get("masks"):
                skipped += 1
                continue
            acts = _sample_activations(model, processor, sample, completion, index, [threshold], threshold)
            scores = acts["total"][acts["image_positions"]]  # (n,)
            n = len(scores)
            order = np.argsort(-scores, kind="stable")  # (n,) highest first, ties by position
            for mask in acts["instances"]:
                inside, _ = token_mask_overlap(mask, acts["grid"])  # (n,)
                pixels = inside.sum()
                if pixels == 0:
                    continue
                top, rand = [], []
                for fraction in fractions:
                    k = _top_count(fraction, n)
                    top.append(float(inside[order[:k]].sum() / pixels))
                    draws = [inside[rng.permutation(n)[:k]].sum() / pixels for _ in range(random_repeats)]
                    rand.append(float(np.mean(draws)))
                top_rows.append(top)
                random_rows.append(rand)
                owners.append(index)
    top_mean = np.mean(top_rows, axis=0).tolist() if top_rows else None
    random_mean = np.mean(random_rows, axis=0).tolist() if random_rows else None
    logger.info("instance_coverage: %d instances from %d samples (%d skipped)", len(top_rows), len(samples), skipped)
    return {
        "fractions": fractions,
        "top_k_coverage": top_mean,
        "random_coverage": random_mean,
        "per_instance_top_k": top_rows,
        "per_instance_random": random_rows,
        "instance_sample_index": owners,
        "num_instances": len(top_rows),
        "num_samples": len(samples),
        "num_skipped_samples": skipped,
    }


# ------------------------------------------------------------------------------------------------ Figure 8 (right)
def _iou(prediction: np.ndarray, reference: np.ndarray) -> tuple[float, int, int]:
    intersection = int(np.count_nonzero(prediction & reference))
    union = int(np.count_nonzero(prediction | reference))
    return (intersection / union if union else 1.0), intersection, union


def _pearson_and_fit(x: list[float], y: list[float]) -> dict:
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(xs) < 2 or xs.std() == 0 or ys.std() == 0:
        return {"pearson_r": None, "ols_slope": None, "ols_intercept": None}
    slope, intercept = np.polyfit(xs, ys, 1)
    return {
        "pearson_r": float(np.corrcoef(xs, ys)[0, 1]),
        "ols_slope": float(slope),
        "ols_intercept": float(intercept),
    }


def heatmap_mask_agreement(
    model,
    processor,
    samples: Iterable[Mapping[str, Any]],
    *,
    completions: Sequence[str] | None = None,
    confidence_threshold: float | None = None,
    heatmap_threshold: float = 0.5,
    mask_threshold: float = 0.0,
) -> dict:
    """Figure 8 (right): per sample, IoU of the heatmap and of the mask with the ground truth, and their correlation.

    One teacher-forced ``model(...)`` forward per sample. Slots with ``σ(c_k) >= confidence_threshold`` (default
    ``model.config.confidence_threshold``) are kept; the heatmap prediction is the union over kept slots of
    ``σ(H_k) > heatmap_threshold`` and the mask prediction the union of ``mask_logits > mask_threshold``, both
    mapped to the original image size (``processor.post_process_masks``) and compared with the union of
    ``sample["masks"]``. IoU is 1.0 when prediction and ground truth are both empty (no-target samples).

    Returns:
        ``{"heatmap_iou": [B], "mask_iou": [B]`` (each in [0, 1]), ``"heatmap_ciou"``, ``"mask_ciou"`` (cumulative
        intersection / union over samples, ``None`` when every union is empty), ``"pearson_r"``, ``"ols_slope"``,
        ``"ols_intercept"`` (mask IoU regressed on heatmap IoU; ``None`` with fewer than two samples or zero
        variance), ``"num_kept_slots": [B]``, ``"sample_ids": [B]``, ``"num_samples"}``.
    """
    threshold = model.config.confidence_threshold if confidence_threshold is None else confidence_threshold
    _check_values([threshold, heatmap_threshold], "confidence_threshold / heatmap_threshold", 0.0, 1.0, low_open=False)
    samples, completions = _prepare(model, processor, samples, completions)
    heat_logit = math.log(heatmap_threshold / (1 - heatmap_threshold)) if 0 < heatmap_threshold < 1 else (
        -math.inf if heatmap_threshold == 0 else math.inf)
    heat_iou, mask_iou, kept, ids = [], [], [], []
    totals = np.zeros(4, dtype=np.int64)  # heatmap I, U, mask I, U
    with _EvalMode(model):
        for index, (sample, completion) in enumerate(zip(samples, completions)):
            image, _, union = _sample_fields(sample, index)
            batch = _encode(processor, image, sample["instruction"], completion, model.device, model.dtype)
            names = processor.backbone_processor.model_input_names
            inputs = {k: batch[k] for k in names if k in batch and batch[k] is not None}
            valid = processor.valid_mask_sizes(batch["reshaped_input_sizes"], model.config.mask_size).to(model.device)
            out = model(sam_pixel_values=batch["sam_pixel_values"], valid_mask_sizes=valid, **inputs)
            keep = (out.confidence_logits[0].float().sigmoid() >= threshold).cpu()  # (K,)
            sizes = (batch["original_sizes"].cpu(), batch["reshaped_input_sizes"].cpu())
            heat = processor.post_process_masks(out.heatmap_logits.float().cpu(), *sizes, threshold=heat_logit)[0]
            mask = processor.post_process_masks(out.mask_logits.float().cpu(), *sizes, threshold=mask_threshold)[0]
            heat_pred = heat[keep].any(0).numpy() if keep.any() else np.zeros_like(union)  # (H, W)
            mask_pred = mask[keep].any(0).numpy() if keep.any() else np.zeros_like(union)  # (H, W)
            h_iou, h_i, h_u = _iou(heat_pred, union)
            m_iou, m_i, m_u = _iou(mask_pred, union)
            totals += (h_i, h_u, m_i, m_u)
            heat_iou.append(h_iou)
            mask_iou.append(m_iou)
            kept.append(int(keep.sum()))
            ids.append(str(sample.get("sample_id", index)))
    result = {
        "heatmap_iou": heat_iou,
        "mask_iou": mask_iou,
        "heatmap_ciou": float(totals[0] / totals[1]) if totals[1] else None,
        "mask_ciou": float(totals[2] / totals[3]) if totals[3] else None,
        **_pearson_and_fit(heat_iou, mask_iou),
        "num_kept_slots": kept,
        "sample_ids": ids,
        "num_samples": len(samples),
    }
    logger.info("heatmap_mask_agreement over %d samples: pearson_r=%s", len(samples), result["pearson_r"])
    return result


# ------------------------------------------------------------------------------------------------ JSON
def to_jsonable(value: Any) -> Any:
    """A copy of ``value`` made of dicts, lists, str, int, float, bool and None (numpy / torch values converted,
    NaN and infinities as ``None``), ready for ``json.dumps``."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
