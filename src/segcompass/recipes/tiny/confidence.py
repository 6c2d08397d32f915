"""The recipe's confidence stage (card 4d): train the mask confidence head alone on the frozen model.

The head's inputs (F_conf's logits, r_k, the support set, and :meth:`MaskConfidenceHead.describe` of the final masks)
do not depend on its own weights, so they are computed once per training sample, with the reference reasoning and,
for the pooled samples, with the model's own, and the head then trains for ``confidence_epochs`` epochs over them.
One forward per sample instead of one per step: on the tiny model 16 epochs take about as long as 1.5 epochs of
:func:`~segcompass.recipes.tiny.stages.head_stage`, which left the head far from converged (held-out BCE 0.49 after
1.5 epochs, 0.44 after 16).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from ...utils.logging import get_logger
from .config import TinyRecipeConfig
from .data import (Sample, backbone_kwargs, batch_inputs, cosine_schedule, gt_on_grid, index_batches, misdescribed,
                   slip_seeds)
from .distributed import quiet_rank, rank_and_world

logger = get_logger(__name__)

CONFIDENCE_BATCH = 256
"""Cached slot sets per step of the confidence stage."""

_ASK = ("concept_slots", "concept_indices", "concept_values", "concept_mask")
_CACHED = ("confidence_logits",) + _ASK + ("described",)
"""What :func:`cache_confidence_inputs` keeps of each forward (besides the targets)."""
_HEAD_ARGS = ("confidence_logits",) + _ASK + ("mask_logits", "image_embeddings", "pixel_values")
"""``MaskConfidenceHead.forward``'s arguments, in order."""


@torch.no_grad()
def cache_confidence_inputs(model, processor, samples: list[Sample], config: TinyRecipeConfig,
                            pool: dict[int, str] | None = None,
                            misdescriptions: dict[int, str] | None = None) -> dict[str, torch.Tensor]:
    """The mask confidence head's inputs and targets for every sample (reference reasoning), every pooled sample
    (generated reasoning) and every sample in ``misdescriptions`` (its reference with one target misdescribed):
    ``confidence_logits`` (M, K), r_k ``concept_slots`` (M, K, d_c), the support set
    ``concept_indices`` / ``concept_values`` / ``concept_mask`` (M, N), ``described`` (M, K, C + 9) and ``targets``
    (M, K), :func:`~segcompass.training.losses.confidence_targets_for` of ``config.confidence_stage_targets`` (each
    slot's mask IoU with its nearest target, or with ``"assigned_iou"`` only one slot's per target). Each rank
    computes its share; the shares are gathered on every rank, rank by rank (the same rows in the same order on
    every rank; the training shuffles them)."""
    from ...training.losses import confidence_targets_for

    head = model.mask_confidence
    captured: dict[str, torch.Tensor] = {}

    def capture(module, args, kwargs):
        values = dict(zip(_HEAD_ARGS, args)) | kwargs
        captured.update({name: values[name] for name in ("confidence_logits",) + _ASK})

    describe = head.describe

    def recording_describe(*args, **kwargs):  # the head's own describe() call, kept: computed once per forward
        captured["described"] = described = describe(*args, **kwargs)  # (b, K, C + 9)
        return described

    rank, world = rank_and_world()
    rows = [(i, None) for i in range(len(samples))] + [(i, text) for i, text in sorted((pool or {}).items())]
    rows += sorted((misdescriptions or {}).items())
    mine = rows[rank::world]
    parts: dict[str, list[torch.Tensor]] = {}
    model.eval()
    handle = head.register_forward_pre_hook(capture, with_kwargs=True)
    head.describe = recording_describe  # an instance attribute shadows the method for this pass only
    try:
        for start in tqdm(range(0, len(mine), config.eval_batch_size), desc="Confidence inputs", unit="batch",
                          disable=quiet_rank()):
            chunk_rows = mine[start:start + config.eval_batch_size]
            chunk = [samples[i] for i, _ in chunk_rows]
            batch = batch_inputs(processor, chunk, completions=True, append_slots=True,
                                 generated=[text for _, text in chunk_rows])
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        sam_pixel_values=batch["sam_pixel_values"], reshaped_input_sizes=batch["reshaped_input_sizes"],
                        **backbone_kwargs(batch))
            targets = confidence_targets_for(config.confidence_stage_targets, out.mask_logits,  # the masks users get
                                             gt_on_grid(chunk, model.config.mask_size))  # (b, K)
            for name in _CACHED:
                parts.setdefault(name, []).append(captured[name].detach().cpu())
            parts.setdefault("targets", []).append(targets.cpu())
    finally:
        handle.remove()
        del head.describe
    cache = {name: torch.cat(chunks) for name, chunks in parts.items()}
    if world > 1:
        import torch.distributed as dist

        gathered: list = [None] * world
        dist.all_gather_object(gathered, cache)
        cache = {name: torch.cat([part[name] for part in gathered if part]) for name in gathered[0]}
    return cache


def confidence_stage(model, processor, train: list[Sample], config: TinyRecipeConfig, generator,
                     pool: dict[int, str] | None = None) -> dict:
    """Stage e'''' (the card's 4d): only the mask confidence head trains, ``config.confidence_epochs`` epochs of
    batches of :data:`CONFIDENCE_BATCH` over :func:`cache_confidence_inputs` (confidence BCE, AdamW at
    ``confidence_learning_rate`` with a cosine schedule; ``ceil(rows / CONFIDENCE_BATCH)`` steps per epoch, drawn by
    :func:`~segcompass.recipes.tiny.data.index_batches`). Every rank holds the whole cache and draws the same batches,
    so the ranks take identical steps."""
    from .stages import optimizer_step

    if config.confidence_epochs <= 0:
        return {"steps": 0}
    head = model.mask_confidence
    if head is None:
        raise ValueError(f"confidence_epochs={config.confidence_epochs} but the model has no mask confidence head; "
                         "build it with mask_confidence_hidden_size > 0.")
    slips = slip_seeds(generator, len(train), config.misdescription_share)  # the same on every rank
    misdescriptions = {i: text for i, seed in enumerate(slips)
                       if seed is not None and (text := misdescribed(train[i], seed)) is not None}
    cache = cache_confidence_inputs(model, processor, train, config, pool, misdescriptions)
    count = len(cache["targets"])
    per_epoch = math.ceil(count / CONFIDENCE_BATCH)
    steps = config.confidence_epochs * per_epoch
    params = list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.confidence_learning_rate, weight_decay=0.01)
    scheduler = cosine_schedule(optimizer, steps, max(1, steps // 20))
    order_generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    losses: list[float] = []
    model.eval()
    head.train()
    bar = tqdm(index_batches(count, CONFIDENCE_BATCH, steps, order_generator), total=steps, desc="Confidence stage",
               unit="step", disable=quiet_rank())
    for rows in bar:
        rows = torch.tensor(rows)  # (b,) cached rows, epoch by epoch
        asked = head.ask(*(cache[name][rows] for name in _ASK))  # (b, K, hidden)
        logits = head.score(cache["confidence_logits"][rows], asked, cache["described"][rows])  # (b, K)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, cache["targets"][rows])
        optimizer_step(optimizer, scheduler, loss, params)
        losses.append(loss.item())
        bar.set_postfix(bce=f"{np.mean(losses[-20:]):.4f}")
    bar.close()
    head.eval()
    result = {"steps": steps, "epochs": config.confidence_epochs, "batch": CONFIDENCE_BATCH, "targets": config.confidence_stage_targets,
              "cached_slot_sets": count,
              "generated_slot_sets": len(pool or {}), "misdescribed_slot_sets": len(misdescriptions),
              "first_epoch_bce": float(np.mean(losses[:per_epoch])),
              "final_epoch_bce": float(np.mean(losses[-per_epoch:]))}
    logger.info("confidence stage: %s", result)
    return result


__all__ = ["CONFIDENCE_BATCH", "cache_confidence_inputs", "confidence_stage"]
