"""Supervised warm-up before GRPO: teach the format (reasoning + ``<REF_POS>``) and the segmentation heads.

GRPO from a policy that never emits ``<REF_POS>`` has no format signal, so a short supervised stage comes first:
teacher-forced ``prompt + <think>reasoning</think><REF_POS> + slot tokens`` sequences, language-model loss on the
completion tokens (up to and including ``<REF_POS>``) plus the Hungarian-matched segmentation and confidence losses
(:func:`segmentation_losses`), one backward. The optimizer uses the same parameter groups and multipliers as the GRPO
trainer (:func:`build_param_groups`); the learning rate is constant.

The target completion of a row is its ``completion`` column when present, else
``<think>{reasoning}</think><REF_POS>`` from the ``reasoning`` column (the synthetic dataset has one).

This module imports no ``trl``; it also holds the helpers the GRPO trainer shares (ground truth on the mask grid,
per-component optimizer groups).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..utils.logging import get_logger
from ..utils.masks import is_rle
from .freezing import freeze_backbone_through_hook_layer, row_masked_parameters, train_token_embedding_rows
from .losses import resize_masks, segmentation_losses

if TYPE_CHECKING:
    from ..modeling_segcompass import SegCompassForReasoningSegmentation

logger = get_logger(__name__)

TRAINABLE_COMPONENTS = ("backbone", "concept_interface", "slot_mapper", "mask_decoder")
"""Components with an optimizer group (SAM's image encoder joins only when it is trained; the SAE never)."""

__all__ = [
    "build_param_groups",
    "build_supervised_batch",
    "generate_completions",
    "ground_truth_on_grid",
    "supervised_warmup",
    "target_completion",
]


# ------------------------------------------------------------------------------------------------ shared helpers
def _image_size(image: Any, where: str) -> tuple[int, int]:
    """(height, width) of a PIL image, an array (H, W[, C]) or anything :func:`load_image` reads."""
    if image is None:
        raise ValueError(f"{where}: the `image` is None; every row needs an image.")
    if isinstance(image, np.ndarray):
        return int(image.shape[0]), int(image.shape[1])
    if hasattr(image, "size") and isinstance(image.size, tuple):  # PIL: (W, H); the header is enough
        width, height = image.size
        return int(height), int(width)
    from ..image_utils import load_image

    width, height = load_image(image).size
    return int(height), int(width)


def _mask_items(masks: Any, where: str) -> list:
    """The instances of one row's ``masks`` as a list (RLE dicts and/or 2-D arrays)."""
    if masks is None:
        raise ValueError(f"{where}: `masks` is None; use [] for a sample without a target.")
    if is_rle(masks):
        return [masks]
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    if isinstance(masks, np.ndarray):
        if masks.ndim == 2:
            return [masks]
        if masks.ndim == 3:
            return list(masks)
        raise ValueError(f"{where}: an array of masks must have shape (G, H, W) or (H, W), got {masks.shape}.")
    if isinstance(masks, (list, tuple)):
        if masks and not is_rle(masks[0]) and np.asarray(masks[0]).ndim == 1:  # one nested-list (H, W) mask
            return [np.asarray(masks)]
        return list(masks)
    raise ValueError(f"{where}: `masks` must be a list of COCO RLE dicts or arrays, got {type(masks).__name__}.")


def _item_size(item: Any, where: str) -> tuple[int, int]:
    if is_rle(item):
        height, width = item["size"]
        return int(height), int(width)
    array = np.asarray(item)
    if array.ndim != 2:
        raise ValueError(f"{where}: each mask must be 2-D (H, W), got shape {array.shape}.")
    return int(array.shape[0]), int(array.shape[1])


def ground_truth_on_grid(
    masks: Any, image_size: tuple[int, int], grid: tuple[int, int], where: str = "row"
) -> torch.Tensor:
    """One row's instances as soft targets on SAM's letterboxed m × m frame: ``(G, m, m)`` float32 (G = 0 allowed).

    Args:
        masks: the row's ``masks`` (list of COCO RLE / arrays at the original image size; ``[]`` = no target).
        image_size: the image's (H, W).
        grid: (m, m), the model's mask grid.
    """
    from ..utils.masks import decode_rle

    arrays = []
    for j, item in enumerate(_mask_items(masks, where)):
        size = _item_size(item, f"{where} masks[{j}]")
        if size != tuple(image_size):
            raise ValueError(
                f"{where}: masks[{j}] has size {size} (H, W) but the image is {tuple(image_size)}. Ground-truth masks "
                "must be at the image's original resolution."
            )
        array = decode_rle(item) if is_rle(item) else np.asarray(item)
        arrays.append(np.asarray(array != 0, dtype=np.float32) if array.dtype != np.float32 else array)
    if not arrays:
        return torch.zeros(0, *grid)
    stacked = torch.as_tensor(np.stack(arrays))
    return resize_masks(stacked, tuple(grid), letterbox=True)


def build_param_groups(
    model: SegCompassForReasoningSegmentation,
    learning_rate: float,
    weight_decay: float,
    multipliers: dict[str, float],
    *,
    train_vision_encoder: bool = False,
    decay_parameter_names: set[str] | None = None,
) -> list[dict]:
    """AdamW parameter groups of a SegCompass model: one pair (decay / no decay) per component, each with
    ``lr = learning_rate · multiplier``. The SAE is never trained; SAM's image encoder only with
    ``train_vision_encoder`` (at the backbone's rate). A multiplier of 0 freezes the component.

    Args:
        multipliers: ``{"backbone": 1.0, "concept_interface": 25.0, "slot_mapper": 80.0, "mask_decoder": 10.0}``
            (missing names default to 1.0).
        decay_parameter_names: names (relative to ``model``) that get weight decay; default: parameters with at
            least 2 dimensions that are not norms.

    Returns:
        list of dicts with ``params``, ``lr``, ``weight_decay``, ``name`` (empty groups are left out).
    """
    model.sae.requires_grad_(False)
    components = list(TRAINABLE_COMPONENTS)
    if train_vision_encoder:
        components.append("vision_encoder")
        multipliers = {**multipliers, "vision_encoder": multipliers.get("backbone", 1.0)}
    else:
        model.vision_encoder.requires_grad_(False)
    groups = []
    for component in components:
        module = getattr(model, component)
        multiplier = float(multipliers.get(component, 1.0))
        if multiplier == 0:
            module.requires_grad_(False)
            continue
        decay, no_decay = [], []
        row_masked = row_masked_parameters(module)
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            full = f"{component}.{name}"
            if name in row_masked:  # rows opened one by one: weight decay would move the closed rows
                no_decay.append(param)
            elif decay_parameter_names is not None:
                (decay if full in decay_parameter_names else no_decay).append(param)
            else:
                (decay if param.ndim >= 2 and "norm" not in name.lower() else no_decay).append(param)
        lr = learning_rate * multiplier
        if decay:
            groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": f"{component}/decay"})
        if no_decay:
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{component}/no_decay"})
    if not groups:
        raise ValueError("No trainable parameters: every component is frozen (all lr multipliers are 0?).")
    return groups


def _valid_grid_mask(valid_sizes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, 2) valid (h, w) on the grid -> (B, m, m) bool mask of the unpadded region."""
    rows = torch.arange(grid[0], device=valid_sizes.device)
    cols = torch.arange(grid[1], device=valid_sizes.device)
    inside_rows = rows[None, :, None] < valid_sizes[:, 0, None, None]
    return inside_rows & (cols[None, None, :] < valid_sizes[:, 1, None, None])


def target_completion(row: dict, ref_token: str = "<REF_POS>") -> str:
    """The supervised target of one row: ``row["completion"]``, else ``<think>{reasoning}</think>{ref_token}``."""
    if row.get("completion"):
        return row["completion"]
    reasoning = (row.get("reasoning") or "").strip()
    if not reasoning:
        raise ValueError(
            "A supervised row needs a `completion` column or a non-empty `reasoning` column to build "
            f"'<think>...</think>{ref_token}'; row {row.get('sample_id', '?')!r} has neither."
        )
    return f"<think>{reasoning}</think>{ref_token}"


def build_supervised_batch(processor, rows: Sequence[dict], model, *,
                           completion_fn: Callable[[dict], str] | None = None,
                           stop_token_id: int | None = -1,
                           completions: Sequence[str | None] | None = None) -> dict[str, Any]:
    """Processor inputs + LM ``labels`` + ground truth on the mask grid for teacher forcing.

    The sequence is ``prompt + completion + slot tokens``; the labels cover the completion (up to and including
    ``<REF_POS>``) and, at the first slot position, ``stop_token_id``: the policy learns to end its answer right after
    ``<REF_POS>`` (the slot tokens are teacher-forced, never generated), as the format reward requires.

    Args:
        stop_token_id: the end-of-answer token; ``-1`` (default) uses ``processor.tokenizer.eos_token_id``;
            ``None`` leaves the first slot position unlabelled.
        completions: per row, a completion to use instead of the target (e.g. the model's own generated reasoning,
            so the mask path learns from what it will see at inference); such rows get no LM labels.

    Returns:
        dict with the processor outputs (``input_ids`` ``(B, T)`` ... ``sam_pixel_values``), ``labels`` ``(B, T)``
        (completion tokens incl. ``<REF_POS>``, then the stop token; prompt, padding and slot tokens are -100),
        ``valid_mask_sizes`` ``(B, 2)`` and ``gt_masks`` (list of B ``(G_b, m, m)``).
    """
    if stop_token_id == -1:
        stop_token_id = processor.tokenizer.eos_token_id
    completion_fn = completion_fn or (lambda row: target_completion(row, processor.ref_token))
    instructions = [row["instruction"] for row in rows]
    images = [row["image"] for row in rows]
    given = list(completions) if completions is not None else [None] * len(rows)
    if len(given) != len(rows):
        raise ValueError(f"`completions` has {len(given)} entries for {len(rows)} rows.")
    completions = [completion_fn(row) if text is None else text for row, text in zip(rows, given)]
    batch = processor(images, instructions, completions=completions, append_slots=True, padding_side="left")
    prompts = processor(images, instructions, padding_side="left")
    num_slots = processor.num_slots
    length = batch["input_ids"].shape[1]
    labels = torch.full_like(batch["input_ids"], -100)
    for b in range(len(rows)):
        if given[b] is not None:
            continue  # not the target: no LM labels
        total = int(batch["attention_mask"][b].sum())
        prompt_len = int(prompts["attention_mask"][b].sum())
        start, stop = length - total + prompt_len, length - num_slots
        labels[b, start:stop] = batch["input_ids"][b, start:stop]
        if stop_token_id is not None:
            labels[b, stop] = stop_token_id  # predicted after <REF_POS>, where the first slot token is fed
    grid = (model.config.mask_size, model.config.mask_size)
    gt = [ground_truth_on_grid(row["masks"], _image_size(row["image"], f"row {i}"), grid, f"row {i}")
          for i, row in enumerate(rows)]
    data = dict(batch)
    data.pop("missing_ref_pos", None)
    data["labels"] = labels
    data["valid_mask_sizes"] = processor.valid_mask_sizes(batch["reshaped_input_sizes"], grid)
    data["gt_masks"] = gt
    return data


@torch.no_grad()
def generate_completions(model, processor, rows: Sequence[dict], *, max_new_tokens: int = 256) -> list[str]:
    """The model's greedy answers to ``rows`` as completion strings, cut after (or ended with) ``<REF_POS>``.

    Returns:
        one ``<think>...</think><REF_POS>`` string per row (``<REF_POS>`` appended where the model did not emit it).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    prompts = processor([row["image"] for row in rows], [row["instruction"] for row in rows], padding_side="left")
    backbone = {k: prompts[k].to(device) for k in ("pixel_values", "image_grid_thw", "mm_token_type_ids")
                if k in prompts}
    tokenizer = processor.tokenizer
    scoring = model.generate_reasoning(prompts["input_ids"].to(device), prompts["attention_mask"].to(device),
                                       max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **backbone)
    model.train(was_training)
    return [tokenizer.decode(ids.tolist(), skip_special_tokens=False) for ids in scoring["completion_ids"]]


def supervised_warmup(
    model,
    processor,
    dataset,
    *,
    num_steps: int,
    batch_size: int = 2,
    learning_rate: float = 2e-6,
    multipliers: dict[str, float] | None = None,
    weight_decay: float = 0.01,
    max_grad_norm: float = 1.0,
    lambda_lm: float = 1.0,
    lambda_seg: float = 1.0,
    lambda_conf: float = 0.2,
    lambda_dice: float = 0.6,
    train_vision_encoder: bool = False,
    completion_fn: Callable[[dict], str] | None = None,
    stop_token_id: int | None = -1,
    fixed_batch: bool = False,
    freeze_through_hook_layer: bool = False,
    train_slot_token_embeddings: bool = False,
    generated_share: float = 0.0,
    max_new_tokens: int = 256,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> list[dict[str, float]]:
    """A small supervised loop: ``λ_lm · LM + λ_s · seg + λ_c · conf`` per step, AdamW with per-component groups.

    Args:
        model: a [`SegCompassForReasoningSegmentation`] (trained in place).
        processor: its [`SegCompassProcessor`].
        dataset: rows with ``image``, ``instruction``, ``masks`` and ``completion`` or ``reasoning``.
        num_steps: optimizer steps (0: nothing happens).
        batch_size: rows per step; rows are taken in order, cycling (``fixed_batch``: always the first rows).
        multipliers: lr multipliers per component (default: the paper's 1 / 25 / 80 / 10).
        stop_token_id: token the policy learns to emit after ``<REF_POS>`` (see :func:`build_supervised_batch`).
        train_vision_encoder: train SAM's image encoder too (its image keys are then computed with gradients).
        freeze_through_hook_layer: freeze the backbone weights that compute the SAE's input
            (:func:`~segcompass.training.freezing.freeze_backbone_through_hook_layer`), so the frozen SAE stays
            faithful; the layers above the hook keep training.
        train_slot_token_embeddings: train the concentration tokens' embedding rows (only those rows).
        generated_share: fraction of each batch whose mask path is trained on the model's own greedy reasoning
            (generated at that step, ``max_new_tokens`` at most) instead of the target; those rows carry no LM
            loss. The mask path then learns from what it sees at inference.

    Returns:
        one dict per step: ``loss``, ``lm``, ``seg``, ``bce``, ``dice``, ``conf`` (+ ``matched_iou``).
    """
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}.")
    if num_steps == 0:
        return []
    if dataset is None or len(dataset) == 0:
        raise ValueError("The supervised warm-up needs a non-empty dataset (rows with image, instruction, masks).")
    missing = [c for c in ("image", "instruction", "masks") if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The supervised warm-up dataset lacks the column(s) {missing}; it has {dataset.column_names}."
        )
    if not 0.0 <= generated_share <= 1.0:
        raise ValueError(f"`generated_share` is a fraction of each batch in [0, 1], got {generated_share}.")
    multipliers = multipliers or {"backbone": 1.0, "concept_interface": 25.0, "slot_mapper": 80.0,
                                  "mask_decoder": 10.0}
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    if freeze_through_hook_layer:
        freeze_backbone_through_hook_layer(model)
    if train_slot_token_embeddings:
        train_token_embedding_rows(model)
    groups = build_param_groups(model, learning_rate, weight_decay, multipliers,
                                train_vision_encoder=train_vision_encoder)
    optimizer = torch.optim.AdamW(groups, lr=learning_rate)
    params = [p for group in groups for p in group["params"]]
    torch.manual_seed(seed)
    model.train()
    if not train_vision_encoder:
        model.vision_encoder.eval()
    history = []
    n = len(dataset)
    cached = None
    for step in range(num_steps):
        if fixed_batch and cached is not None:
            data = cached
        else:
            start = 0 if fixed_batch else (step * batch_size) % n
            rows = [dataset[(start + i) % n] for i in range(min(batch_size, n))]
            generated = [None] * len(rows)
            num_generated = int(round(generated_share * len(rows)))
            if num_generated:
                generated[:num_generated] = generate_completions(model, processor, rows[:num_generated],
                                                                 max_new_tokens=max_new_tokens)
                model.train()
                if not train_vision_encoder:
                    model.vision_encoder.eval()
            data = build_supervised_batch(processor, rows, model, completion_fn=completion_fn,
                                          stop_token_id=stop_token_id, completions=generated)
            data = {k: (v.to(device) if isinstance(v, torch.Tensor) else [g.to(device) for g in v]
                        if k == "gt_masks" else v) for k, v in data.items()}
            if fixed_batch:
                cached = data
        sam_pixel_values = data["sam_pixel_values"]
        if train_vision_encoder:
            image_embeddings = model.get_image_embeddings(sam_pixel_values)
        else:
            with torch.no_grad():
                image_embeddings = model.get_image_embeddings(sam_pixel_values)
        backbone_kwargs = {k: data[k] for k in ("pixel_values", "image_grid_thw", "mm_token_type_ids") if k in data}
        out = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"],
                    image_embeddings=image_embeddings, valid_mask_sizes=data["valid_mask_sizes"],
                    labels=data["labels"] if lambda_lm else None, **backbone_kwargs)
        grid = tuple(out.heatmap_logits.shape[-2:])
        losses = segmentation_losses(out.heatmap_logits, out.mask_logits, out.confidence_logits, data["gt_masks"],
                                     lambda_seg=lambda_seg, lambda_conf=lambda_conf, lambda_dice=lambda_dice,
                                     valid_mask=_valid_grid_mask(data["valid_mask_sizes"], grid))
        has_labels = bool((data["labels"] != -100).any())  # a batch of generated rows only has no LM target
        lm = out.loss if (lambda_lm and out.loss is not None and has_labels) else torch.zeros((), device=device)
        loss = lambda_lm * lm + losses.loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"supervised warm-up step {step}: non-finite loss {float(loss)}; lower the lr.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        record = {**losses.metrics(), "loss": float(loss.detach()), "lm": float(lm.detach()),
                  "seg_total": float(losses.loss.detach())}
        record.pop("num_matched", None)
        history.append(record)
        logger.info("sft step %d: %s", step, {k: round(v, 4) for k, v in record.items()})
    optimizer.zero_grad(set_to_none=True)  # no stale gradients for whatever trains next
    return history
