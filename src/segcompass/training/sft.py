"""Supervised warm-up before GRPO: teach the format (reasoning + ``<REF_POS>``) and the segmentation heads.

GRPO from a policy that never emits ``<REF_POS>`` has no format signal, so a short supervised stage comes first:
teacher-forced ``prompt + <think>reasoning</think><REF_POS> + slot tokens`` sequences, language-model loss on the
completion tokens (up to and including ``<REF_POS>``) plus the Hungarian-matched segmentation and confidence losses
(:func:`segmentation_losses`), one backward. The optimizer uses the same parameter groups and multipliers as the GRPO
trainer (:func:`build_param_groups`); the learning rate is constant.

The target completion of a row is its ``completion`` column when present, else
``<think>{reasoning}</think><REF_POS>`` from the ``reasoning`` column (the synthetic dataset has one).

This module imports no ``trl``. Ground truth on the mask grid lives in :mod:`segcompass.training.targets`, the
per-component optimizer groups in :mod:`segcompass.training.optim`; the GRPO trainer uses the same two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from ..answer_format import DEFAULT_REF_TOKEN, reference_completion
from ..sae.training import check_finite_loss
from ..sam_frame import valid_region_mask
from ..utils.logging import get_logger
from .freezing import freeze_backbone_through_hook_layer, train_token_embedding_rows
from .losses import check_loss_option, segmentation_losses
from .optim import build_param_groups
from .targets import ground_truth_on_grid, image_hw

if TYPE_CHECKING:
    pass

logger = get_logger(__name__)

__all__ = [
    "build_param_groups",
    "build_supervised_batch",
    "check_trainable_precision",
    "generate_completions",
    "ground_truth_on_grid",
    "supervised_warmup",
    "target_completion",
]


LOW_PRECISION_DTYPES = (torch.bfloat16, torch.float16)


def check_trainable_precision(named_parameters, where: str, fix: str | None = None) -> None:
    """Refuse trainable parameters stored in bfloat16 / float16.

    AdamW updates the weights it is given in place; on 16-bit weights with no fp32 master copy the update is
    rounded to the weight's precision (bfloat16 keeps 8 significant bits, so a 2e-6 step vanishes on any weight
    above about 1e-3) and training silently stalls. The fix is float32 parameters with bf16 autocast for compute.

    Args:
        named_parameters: ``(name, parameter)`` pairs of what will be trained (``requires_grad`` is checked here).
        where: what is being set up, for the message (e.g. ``"SegCompassGRPOTrainer"``).
        fix: the remedy to name (default: load in float32 / ``model.float()``).

    Raises:
        ValueError: naming the dtype, how many tensors and the first one, and the fix.
    """
    low = [(name, param.dtype) for name, param in named_parameters
           if param.requires_grad and param.dtype in LOW_PRECISION_DTYPES]
    if not low:
        return
    dtypes = sorted({str(dtype) for _, dtype in low})
    fix = fix or ("Load the model in float32 (`SegCompassForReasoningSegmentation.from_pretrained(path, "
                  "dtype=torch.float32)`) or call `model.float()` before training.")
    raise ValueError(
        f"{where}: {len(low)} trainable parameter tensor(s) are {' / '.join(dtypes)} (e.g. `{low[0][0]}`). "
        "AdamW on 16-bit weights has no fp32 master copy: updates smaller than the weights' precision (bfloat16 "
        "keeps 8 significant bits; a 2e-6 step vanishes on any weight above about 1e-3) are silently lost. "
        f"{fix}"
    )


def target_completion(row: dict, ref_token: str = DEFAULT_REF_TOKEN) -> str:
    """The supervised target of one row: ``row["completion"]``, else ``<think>{reasoning}</think>{ref_token}``
    (:func:`segcompass.answer_format.reference_completion`)."""
    if row.get("completion"):
        return row["completion"]
    return reference_completion((row.get("reasoning") or "").strip(), ref_token,
                                sample_id=str(row.get("sample_id", "?")))


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
    gt = [ground_truth_on_grid(row["masks"], image_hw(row["image"], f"row {i}"), grid, f"row {i}")
          for i, row in enumerate(rows)]
    data = dict(batch)
    data.pop("missing_ref_pos", None)
    data["labels"] = labels
    data["valid_mask_sizes"] = model.valid_mask_sizes(batch["reshaped_input_sizes"])
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
    lambda_mask_bce: float = 0.0,
    matching_source: str = "heatmap",
    confidence_targets: str = "matched",
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
        matching_source, confidence_targets: see :func:`~segcompass.training.losses.segmentation_losses`
            (``"mask"`` / ``"mask_iou"`` match on the decoder masks and teach each confidence its mask's IoU).
        train_vision_encoder: train SAM's image encoder too (its image keys are then computed with gradients).
        freeze_through_hook_layer: freeze the backbone weights that compute the SAE's input
            (:func:`~segcompass.training.freezing.freeze_backbone_through_hook_layer`), so the frozen SAE stays
            faithful; the layers above the hook keep training.
        train_slot_token_embeddings: train the concentration tokens' embedding rows (only those rows).
        generated_share: fraction of each batch whose mask path is trained on the model's own greedy reasoning
            (generated at that step, ``max_new_tokens`` at most) instead of the target; those rows carry no LM
            loss. The mask path then learns from what it sees at inference.

    Trainable parameters must be float32: bfloat16 / float16 ones raise a ValueError
    (:func:`check_trainable_precision`) instead of silently losing the small AdamW updates.

    Progress shows as one progress bar (``loss``, ``seg`` and ``lm`` of the last step); the first and last loss are
    logged once at the end.

    Returns:
        one dict per step: ``loss``, ``lm``, ``seg``, ``bce``, ``dice``, ``conf`` (+ ``matched_iou``).
    """
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}.")
    check_loss_option("matching_source", matching_source)
    check_loss_option("confidence_targets", confidence_targets)
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
    trained = {id(p) for group in groups for p in group["params"]}
    check_trainable_precision(((n, p) for n, p in model.named_parameters() if id(p) in trained),
                              "supervised_warmup",
                              "Load the model in float32 (`from_pretrained(path, dtype=torch.float32)`) or call "
                              "`model.float()` first; the warm-up computes in the parameters' dtype.")
    optimizer = torch.optim.AdamW(groups, lr=learning_rate)
    params = [p for group in groups for p in group["params"]]
    torch.manual_seed(seed)
    model.train()
    if not train_vision_encoder:
        model.vision_encoder.eval()
    history = []
    n = len(dataset)
    cached = None
    progress = tqdm(range(num_steps), desc="Supervised warm-up", unit="step")
    for step in progress:
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
                    image_embeddings=image_embeddings, sam_pixel_values=sam_pixel_values,
                    valid_mask_sizes=data["valid_mask_sizes"],
                    labels=data["labels"] if lambda_lm else None, **backbone_kwargs)
        grid = tuple(out.heatmap_logits.shape[-2:])
        losses = segmentation_losses(out.heatmap_logits, out.mask_logits, out.confidence_logits, data["gt_masks"],
                                     lambda_seg=lambda_seg, lambda_conf=lambda_conf, lambda_dice=lambda_dice,
                                     lambda_mask_bce=lambda_mask_bce,
                                     valid_mask=valid_region_mask(data["valid_mask_sizes"], grid),
                                     matching_source=matching_source, confidence_targets=confidence_targets)
        has_labels = bool((data["labels"] != -100).any())  # a batch of generated rows only has no LM target
        lm = out.loss if (lambda_lm and out.loss is not None and has_labels) else torch.zeros((), device=device)
        loss = lambda_lm * lm + losses.loss
        hint = "Check the training data (masks, images) for bad values, or lower the learning rate."
        check_finite_loss(loss, f"supervised warm-up step {step}", hint)  # NonFiniteLossError before any update
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            check_finite_loss(grad_norm, f"supervised warm-up step {step} (gradient norm)", hint)
        optimizer.step()
        record = {**losses.metrics(), "loss": float(loss.detach()), "lm": float(lm.detach()),
                  "seg_total": float(losses.loss.detach())}
        record.pop("num_matched", None)
        history.append(record)
        progress.set_postfix(loss=f"{record['loss']:.4g}", seg=f"{record['seg']:.4g}", lm=f"{record['lm']:.4g}",
                             refresh=False)
    progress.close()
    optimizer.zero_grad(set_to_none=True)  # no stale gradients for whatever trains next
    logger.info("supervised warm-up: %d steps, loss %.4g -> %.4g (seg %.4g -> %.4g, lm %.4g -> %.4g)", num_steps,
                history[0]["loss"], history[-1]["loss"], history[0]["seg"], history[-1]["seg"], history[0]["lm"],
                history[-1]["lm"])
    return history
