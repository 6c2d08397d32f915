"""The recipe's training stages: vision probes, LM warm-up, SAE, generated-reasoning pool, joint training, the
concept stage, GRPO (the reasoning stage: :mod:`segcompass.recipes.tiny.reasoning`)."""

from __future__ import annotations

import copy
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ...utils.logging import get_logger
from .config import TinyRecipeConfig
from .data import (Sample, TokenProbe, backbone_kwargs, batch_inputs, cosine_schedule, gt_on_grid, index_batches,
                   make_split, misdescribed, slip_seeds)
from .distributed import average_gradients, quiet_rank, rank_and_world, shard

logger = get_logger(__name__)


def optimizer_step(optimizer, scheduler, loss: torch.Tensor, params: list, max_grad_norm: float = 1.0) -> None:
    """One step of every training loop here: backward, gradients averaged over the ranks, clipped, AdamW, schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(params)
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()


def merged_image_tokens(model):
    """A forward hook on the backbone's vision tower that keeps the merged image tokens of its last forward. Returns
    ``(handle, take)``: ``take(batch)`` gives them as B × (g*g, D), one tensor per image of ``batch`` (split by its
    ``image_grid_thw``), and forgets them; ``handle.remove()`` ends the capture."""
    visual = model.backbone.model.visual
    merge = visual.spatial_merge_size
    captured: list[torch.Tensor] = []
    handle = visual.register_forward_hook(lambda module, inputs, output: captured.append(output.pooler_output))

    def take(batch: dict) -> list[torch.Tensor]:
        sizes = (batch["image_grid_thw"].prod(-1) // merge**2).tolist()  # merged tokens per image
        features = list(torch.split(captured[-1], sizes))  # B × (g*g, D)
        captured.clear()
        return features

    return handle, take


def lm_warmup(model, processor, train: list[Sample], config: TinyRecipeConfig, generator,
               token_probe: TokenProbe | None = None) -> dict:
    """Stage c: next-token loss on the reference completions (backbone only), plus ``probe_weight`` x the token
    probe's loss on the merged image tokens of the same forward (captured with a hook; no second ViT pass)."""
    from ...training.freezing import policy_parameters

    steps = config.lm_warmup_steps
    params = policy_parameters(model)
    handle, extra_loss = None, None
    if token_probe is not None and config.probe_weight > 0:
        params += list(token_probe.parameters())
        handle, take = merged_image_tokens(model)  # no second ViT pass

        def extra_loss(batch: dict, chunk: list[Sample], out) -> torch.Tensor:
            return config.probe_weight * token_probe.loss(take(batch), chunk)

    learning_rate = config.learning_rate if config.lm_learning_rate is None else config.lm_learning_rate
    model.train()
    try:
        losses = next_token_steps(model, processor, train, config, generator, params, steps=steps,
                                  learning_rate=learning_rate, desc="LM warm-up", extra_loss=extra_loss)
    finally:
        if handle is not None:
            handle.remove()
    return {"final_loss": float(np.mean(losses[-50:])) if losses else float("nan"), "steps": steps,
            "learning_rate": learning_rate}


def next_token_steps(model, processor, samples: list[Sample], config: TinyRecipeConfig, generator, params: list, *,
                     steps: int, learning_rate: float, desc: str, extra_loss=None,
                     hidden_states: bool = False) -> list[float]:
    """The next-token training loop of :func:`lm_warmup` and :func:`reasoning_stage`: ``steps`` AdamW steps (batch
    ``config.batch_size``, sharded over the ranks; cosine schedule) of the backbone's loss on the reference
    completions of ``samples``, plus ``extra_loss(batch, chunk, out)`` when given (``out``: the backbone's output,
    with ``hidden_states`` when asked for), on ``params``. The caller sets the train / eval modes. Returns the
    next-token loss of every step."""
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    scheduler = cosine_schedule(optimizer, steps, max(1, steps // 20))
    losses: list[float] = []
    bar = tqdm(index_batches(len(samples), config.batch_size, steps, generator), total=steps, desc=desc, unit="step",
               disable=quiet_rank())
    for step, indices in enumerate(bar):
        chunk = [samples[i] for i in shard(indices)]
        batch = batch_inputs(processor, chunk, completions=True, append_slots=False)
        out = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"], output_hidden_states=hidden_states, **backbone_kwargs(batch))
        loss = out.loss if extra_loss is None else out.loss + extra_loss(batch, chunk, out)
        optimizer_step(optimizer, scheduler, loss, params)
        losses.append(out.loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if (step + 1) % 100 == 0:
            logger.info("%s step %d/%d: loss %.4f", desc, step + 1, steps, np.mean(losses[-100:]))
    return losses


@torch.no_grad()
def collect_activations(model, processor, samples: list[Sample], config: TinyRecipeConfig):
    """hidden_states[L] of teacher-forced prompt + completion + slots: (n_tokens, D) and per-sequence lengths."""
    model.eval()
    acts, lengths = [], []
    for start in tqdm(range(0, len(samples), config.eval_batch_size), desc="Caching activations", unit="batch",
                      disable=quiet_rank()):
        chunk = samples[start:start + config.eval_batch_size]
        batch = batch_inputs(processor, chunk, completions=True, append_slots=True)
        states = model.get_hook_states(batch["input_ids"], batch["attention_mask"], **backbone_kwargs(batch))  # (B, T, D)
        for b in range(states.shape[0]):
            valid = batch["attention_mask"][b].bool()
            acts.append(states[b][valid].float())
            lengths.append(int(valid.sum()))
    return torch.cat(acts), torch.tensor(lengths)


def train_sae(model, processor, train: list[Sample], config: TinyRecipeConfig, work_dir: Path, seed: int) -> dict:
    """Stage d: ReLU SAE on hidden_states[L]; copies the result into ``model.sae`` (frozen)."""
    from ...sae import SparseAutoencoder
    from ...sae.activations import ActivationStore
    from ...sae.training import SAETrainer, SAETrainingArguments

    acts, lengths = collect_activations(model, processor, train[: config.sae_sequences], config)
    centred = acts - acts.mean(0)
    rms = float(centred.pow(2).sum(-1).mean().sqrt())
    sae_config = copy.deepcopy(model.config.sae_config)
    sae_config.l1_coefficient = config.sae_l1_ratio * rms
    torch.manual_seed(seed)
    sae = SparseAutoencoder(sae_config)
    sae_dir = work_dir / ("sae" if rank_and_world()[0] == 0 else f"sae-rank{rank_and_world()[0]}")
    args = SAETrainingArguments(
        output_dir=str(sae_dir), learning_rate=2e-3, batch_size=16, num_epochs=config.sae_epochs,
        eval_fraction=0.1, logging_steps=50, seed=seed, resume=False, save_total_limit=1,
    )
    metrics = SAETrainer(sae, args, ActivationStore.from_tensor(acts, lengths)).train()
    model.sae.load_state_dict(sae.state_dict())
    model.config.sae_config.l1_coefficient = sae_config.l1_coefficient
    model.sae.config.l1_coefficient = sae_config.l1_coefficient
    model.sae.requires_grad_(False)
    shutil.rmtree(sae_dir, ignore_errors=True)
    result = {k: float(metrics[k]) for k in ("fve", "l0", "mse", "dead_fraction") if k in metrics}
    result.update(tokens=int(acts.shape[0]), sequences=int(lengths.numel()), d_sae=sae_config.d_sae,
                  hook_layer=sae_config.hook_layer, l1_coefficient=sae_config.l1_coefficient)
    logger.info("SAE: FVE %.3f, L0 %.1f (held-out)", result.get("fve", float("nan")), result.get("l0", float("nan")))
    return result


def probe_pretrain(params: list, loss_fn, train: list[Sample], config: TinyRecipeConfig, generator, steps: int,
                    desc: str) -> dict:
    """``steps`` AdamW steps (batch ``2 * batch_size``, cosine schedule) on ``loss_fn(samples) -> scalar``."""
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.01)
    scheduler = cosine_schedule(optimizer, steps, max(1, steps // 20))
    losses = []
    bar = tqdm(index_batches(len(train), 2 * config.batch_size, steps, generator), total=steps, desc=desc, unit="step",
               disable=quiet_rank())
    for indices in bar:
        loss = loss_fn([train[i] for i in shard(indices)])
        optimizer_step(optimizer, scheduler, loss, params)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    logger.info("%s: probe loss %.4f -> %.4f", desc, np.mean(losses[:20]), np.mean(losses[-20:]))
    return {"steps": steps, "probe_loss": float(np.mean(losses[-20:]))}


def sam_encoder_pretrain(model, processor, train: list[Sample], config: TinyRecipeConfig, probe, generator) -> dict:
    """Stage b': dense colour / kind / size classification from the SAM image embedding (SAM encoder + probe)."""
    if config.vision_pretrain_steps <= 0:
        return {"steps": 0}
    model.vision_encoder.train()

    def loss_fn(chunk: list[Sample]) -> torch.Tensor:
        pixels = processor.sam_image_processor([s.image for s in chunk], return_tensors="pt")["pixel_values"]
        return probe.loss(model.get_image_embeddings(pixels), chunk, config.image_size)

    params = list(model.vision_encoder.parameters()) + list(probe.parameters())
    return probe_pretrain(params, loss_fn, train, config, generator, config.vision_pretrain_steps,
                           "SAM encoder pretraining")


def backbone_vit_pretrain(model, processor, train: list[Sample], config: TinyRecipeConfig, generator,
                              probe: TokenProbe) -> dict:
    """Stage b'': multi-label probe of the backbone ViT's merged image tokens (what is in each token's cell)."""
    from ...training.freezing import image_position_modules

    if config.backbone_vision_pretrain_steps <= 0:
        return {"steps": 0}
    model.backbone.train()

    def loss_fn(chunk: list[Sample]) -> torch.Tensor:
        images = processor.image_processor([s.image for s in chunk], return_tensors="pt")
        features = model.backbone.get_image_features(images["pixel_values"], images["image_grid_thw"]).pooler_output
        return probe.loss(features, chunk)  # features: B × (g*g, D)

    vision = (model.backbone.model.visual, *image_position_modules(model))
    params = [p for module in vision for p in module.parameters()] + list(probe.parameters())
    return probe_pretrain(params, loss_fn, train, config, generator, config.backbone_vision_pretrain_steps,
                           "Backbone ViT pretraining")


def generate_reasoning_pool(model, processor, train: list[Sample],
                            config: TinyRecipeConfig) -> tuple[dict[int, str], dict]:
    """The model's own greedy reasoning for the first ``generated_pool`` training samples: ``(index -> completion,
    {"samples", "exact_match"})``. Each rank generates its share; the pool is gathered on every rank."""
    from ...training.sft import generate_completions

    count = min(config.generated_pool, len(train)) if config.generated_share > 0 else 0
    rank, world = rank_and_world()
    mine: dict[int, str] = {}
    indices = list(range(rank, count, world))
    for start in tqdm(range(0, len(indices), config.eval_batch_size), desc="Generating reasoning", unit="batch",
                      disable=quiet_rank()):
        chunk = indices[start:start + config.eval_batch_size]
        rows = [{"image": train[i].image, "instruction": train[i].instruction} for i in chunk]
        texts = generate_completions(model, processor, rows, max_new_tokens=config.max_new_tokens)
        mine.update(zip(chunk, texts))
    if world > 1:
        import torch.distributed as dist

        parts: list = [None] * world
        dist.all_gather_object(parts, mine)
        mine = {k: v for part in parts for k, v in part.items()}
    exact = sum(mine[i].replace(" ", "") == train[i].completion.replace(" ", "") for i in mine)
    summary = {"samples": len(mine), "exact_match": exact / len(mine) if mine else None}
    logger.info("generated reasoning for %d training samples (%.1f %% equal to the reference)", len(mine),
                100 * exact / max(1, len(mine)))
    return mine, summary


def joint_training(model, processor, train: list[Sample], config: TinyRecipeConfig, generator, probe=None,
           pool: dict[int, str] | None = None, desc: str = "Joint training", train_only=None) -> dict:
    """Stage e: segmentation + confidence losses on teacher-forced completions + slots, plus the LM loss (and the
    dense probe loss on the SAM embedding when ``probe`` is given). Samples in ``pool`` are fed, with probability
    ``generated_share``, with the model's own reasoning instead (mask path only); the others, with probability
    ``misdescription_share``, with one target misdescribed (:func:`~.data.misdescribed`, mask path only, the true
    masks as targets). ``train_only`` (a submodule): the
    rest of the model stays in eval mode (no running statistics move)."""
    from ...training.freezing import restored_requires_grad

    with restored_requires_grad(model):
        if model.mask_confidence is not None:  # it trains only in its own stage (confidence.py), on the final masks
            model.mask_confidence.requires_grad_(False)  # these stages move: no gradients kept for it here
        return _joint_steps(model, processor, train, config, generator, probe, pool or {}, desc, train_only)


def _joint_steps(model, processor, train: list[Sample], config: TinyRecipeConfig, generator, probe,
                 pool: dict[int, str], desc: str, train_only) -> dict:
    """:func:`joint_training`'s loop over the parameters that require gradients."""
    from ...training.freezing import row_masked_parameters
    from ...training.losses import instance_snap_loss, segmentation_losses

    steps, mask_size = config.joint_steps, model.config.mask_size
    row_masked = {f"backbone.{n}" for n in row_masked_parameters(model.backbone)}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    backbone_params = [p for n, p in trainable if n.startswith("backbone.") and n not in row_masked]
    rows_params = [p for n, p in trainable if n in row_masked]  # slot-token rows: no weight decay on the rest
    head_params = [p for n, p in trainable if not n.startswith("backbone.")]
    if probe is not None:
        head_params += list(probe.parameters())
    optimizer = torch.optim.AdamW(
        [{"params": backbone_params, "lr": config.learning_rate * 0.5}, {"params": head_params},
         {"params": rows_params, "weight_decay": 0.0}],
        lr=config.learning_rate, weight_decay=0.01,
    )
    coin = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    scheduler = cosine_schedule(optimizer, steps, max(1, steps // 20))
    if train_only is None:
        model.train()
    else:
        model.eval()
        train_only.train()
    history: list[dict] = []
    bar = tqdm(index_batches(len(train), config.batch_size, steps, generator), total=steps, desc=desc,
               unit="step", disable=quiet_rank())
    for step, indices in enumerate(bar):
        draws = torch.rand(len(indices), generator=coin).tolist()  # same draws on every rank
        generated = [pool.get(i) if u < config.generated_share else None for i, u in zip(indices, draws)]
        slips = slip_seeds(coin, len(indices), config.misdescription_share)  # same draws on every rank
        generated, indices, slips = shard(generated), shard(indices), shard(slips)
        chunk = [train[i] for i in indices]
        generated = [misdescribed(sample, seed) if text is None and seed is not None else text
                     for sample, text, seed in zip(chunk, generated, slips)]
        batch = batch_inputs(processor, chunk, completions=True, append_slots=True, generated=generated)
        labels = batch["labels"] if config.lm_loss_weight > 0 else None  # no vocabulary logits without an LM loss
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    sam_pixel_values=batch["sam_pixel_values"], reshaped_input_sizes=batch["reshaped_input_sizes"],
                    labels=labels, **backbone_kwargs(batch))
        seg = segmentation_losses(out.heatmap_logits, out.mask_logits, out.confidence_logits,
                                  gt_on_grid(chunk, mask_size), lambda_conf=config.lambda_conf,
                                  matching_source=config.matching_source,
                                  confidence_targets=config.confidence_targets,
                                  lambda_mask_bce=config.lambda_mask_bce)
        lm = out.loss if labels is not None and bool((labels != -100).any()) else out.heatmap_logits.new_zeros(())
        loss = seg.loss + config.lm_loss_weight * lm
        snap_logs = {}
        if config.lambda_snap:
            snap, snap_logs = instance_snap_loss(out.mask_logits, gt_on_grid(chunk, mask_size, every_instance=True))
            loss = loss + config.lambda_snap * snap
        probe_loss = None
        if probe is not None and config.probe_weight > 0:
            probe_loss = probe.loss(out.image_embeddings, chunk, config.image_size)
            loss = loss + config.probe_weight * probe_loss
        optimizer_step(optimizer, scheduler, loss, backbone_params + rows_params + head_params)
        record = seg.metrics() | snap_logs
        record["lm"] = lm.item()
        if probe_loss is not None:
            record["probe"] = probe_loss.item()
        history.append(record)
        recent = history[-20:]
        bar.set_postfix(seg=f"{np.mean([r['seg'] for r in recent]):.3f}",
                        lm=f"{np.mean([r['lm'] for r in recent]):.3f}")
        if (step + 1) % 100 == 0:
            tail = history[-100:]
            logger.info("%s step %d/%d: %s", desc, step + 1, steps,
                        {k: round(float(np.mean([r[k] for r in tail if k in r])), 4) for k in LOGGED
                         if any(k in r for r in tail)})
    tail = history[-50:]
    return {k: float(np.mean([r[k] for r in tail if k in r])) for k in LOGGED
            if any(k in r for r in tail)} | {"steps": steps}


LOGGED = ("seg", "conf", "lm", "matched_iou", "probe", "snap_bce", "snap_dice", "snapped")
"""What :func:`joint_training` logs every 100 steps and returns (means over the last 100 / 50 steps)."""


def concept_stage(model, processor, train: list[Sample], config: TinyRecipeConfig, generator,
                  pool: dict[int, str] | None = None) -> dict:
    """Stage e'': the slot queries switch to the concepts alone (``slot_query_inputs="concepts"``) and the heads and
    SAM's encoder train for ``config.concept_steps`` steps on the frozen backbone (:func:`head_stage`)."""
    if config.concept_steps <= 0:
        return {"steps": 0}
    model.config.slot_query_inputs = "concepts"
    if config.concept_grouping != "sequence":
        model.config.answer_item_token_ids = answer_item_token_ids(processor)
    model.config.concept_grouping = config.concept_grouping
    return head_stage(model, processor, train, config, generator, pool, steps=config.concept_steps,
                      frozen=model.backbone, desc="Concept stage")


def refiner_stage(model, processor, train: list[Sample], config: TinyRecipeConfig, generator,
                  pool: dict[int, str] | None = None) -> dict:
    """Stage e''': only the mask refiner trains, ``config.refiner_steps`` steps of :func:`head_stage` on the otherwise
    frozen model, which stays in eval mode, with ``refiner_lambda_mask_bce`` and ``refiner_lambda_snap`` as the mask
    BCE and snap weights."""
    if config.refiner_steps <= 0:
        return {"steps": 0}
    if model.mask_refiner is None:
        raise ValueError(f"refiner_steps={config.refiner_steps} but the model has no mask refiner; build it with "
                         "mask_refiner_hidden_size > 0.")
    stage = replace(config, lambda_mask_bce=config.refiner_lambda_mask_bce, lambda_snap=config.refiner_lambda_snap)
    return head_stage(model, processor, train, stage, generator, pool, steps=config.refiner_steps, frozen=model,
                      trained=model.mask_refiner, desc="Refiner stage")


def head_stage(model, processor, train: list[Sample], config: TinyRecipeConfig, generator, pool, *, steps: int,
               frozen, desc: str, trained=None) -> dict:
    """:func:`joint_training` for ``steps`` steps without the LM loss or the probe, with the concept stage's matching
    source and confidence targets (``generated_share`` of the pooled samples with their generated reasoning), while
    ``frozen`` (a submodule or the model) has ``requires_grad=False`` except ``trained`` (a submodule of it, trained
    alone with the rest of the model in eval mode). Every ``requires_grad`` flag is restored afterwards."""
    from ...training.freezing import restored_requires_grad

    with restored_requires_grad(model):
        frozen.requires_grad_(False)
        if trained is not None:
            trained.requires_grad_(True)
        stage = replace(config, joint_steps=steps, lm_loss_weight=0.0, matching_source=config.concept_matching_source,
                        confidence_targets=config.concept_confidence_targets)
        return joint_training(model, processor, train, stage, generator, None, pool, desc=desc, train_only=trained)


def answer_item_token_ids(processor) -> list[int]:
    """``[open, separator, close]`` of the synthetic reasoning's answer list (``target : a , b .``): the ids of
    ``:``, ``,`` and ``.`` in the recipe's word-level tokenizer."""
    ids = processor.tokenizer.convert_tokens_to_ids([":", ",", "."])
    unknown = processor.tokenizer.unk_token_id
    if any(i is None or i == unknown for i in ids):
        raise ValueError(f"The tokenizer lacks one of ':', ',', '.' (ids {ids}); the answer list cannot be found.")
    return list(ids)


def grpo_stage(model, processor, train: list[Sample], config: TinyRecipeConfig, work_dir: Path, seed: int) -> dict:
    """Stage e': a short GRPO + segmentation-supervision run with :class:`SegCompassGRPOTrainer` (the backbone
    below the SAE's layer stays frozen, the slot-token rows train; its segmentation losses use the concept stage's
    matching source and confidence targets, so they do not undo what that stage taught). A failure propagates: the
    recipe never ships a model whose stage silently did not run."""
    if config.grpo_steps <= 0:
        return {"status": "skipped", "reason": "grpo_steps=0"}
    import datasets

    from ...training.freezing import restored_requires_grad
    from ...training.grpo_config import SegCompassGRPOConfig
    from ...training.grpo_data import prepare_grpo_dataset
    from ...training.grpo_trainer import SegCompassGRPOTrainer
    from ...utils.masks import encode_rle

    saved_generation = copy.deepcopy(model.backbone.generation_config)
    batch = config.grpo_prompts * config.grpo_num_generations  # completions per step (TRL's batch unit)
    rows = [{"image": s.image, "instruction": s.instruction, "masks": [encode_rle(m) for m in s.masks],
             "no_target": s.no_target} for s in train[: max(config.grpo_prompts * config.grpo_steps, 8)]]
    head_lr = config.grpo_head_lr_multiplier
    with restored_requires_grad(model):  # the trainer's freezing options change them
        try:
            dataset = prepare_grpo_dataset(datasets.Dataset.from_list(rows), processor)
            args = SegCompassGRPOConfig(
                output_dir=str(work_dir / "grpo"), max_steps=config.grpo_steps, per_device_train_batch_size=batch,
                num_generations=config.grpo_num_generations, max_completion_length=config.max_new_tokens,
                learning_rate=config.grpo_learning_rate, beta=0.0, temperature=config.grpo_temperature,
                scale_rewards=config.grpo_scale_rewards, codebook_lr_multiplier=head_lr,
                slot_mapper_lr_multiplier=head_lr, mask_decoder_lr_multiplier=head_lr,
                report_to=[], save_strategy="no", use_cpu=True, logging_steps=max(1, config.grpo_steps // 20),
                seed=seed, dataloader_num_workers=0, freeze_vision_encoder=True, bf16=False,
                activation_checkpointing=False, freeze_backbone_through_hook_layer=True,
                train_slot_token_embeddings=True, matching_source=config.concept_matching_source,
                confidence_targets=config.concept_confidence_targets,
            )
            trainer = SegCompassGRPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
            result = trainer.train()
            logs = [entry for entry in trainer.state.log_history if "loss" in entry or "reward" in entry]
            keys = ("loss", "reward", "seg/loss", "seg/rollout_iou", "seg/malformed_ratio")
            summary = {k: logs[-1][k] for k in keys if logs and k in logs[-1]}
            curve = [[int(e["step"]), round(float(e["reward"]), 4)] for e in logs if "reward" in e and "step" in e]
            report = {"status": "done", "steps": int(result.global_step), "last_log": summary,
                      "reward_curve": curve,  # [step, mean reward of the logged step]: one step is noisy, read trends
                      "train_runtime_s": round(float(result.metrics.get("train_runtime", 0.0)), 1)}
            logger.info("GRPO stage: %s", report)
        finally:
            model.backbone.generation_config = saved_generation
            if model.backbone.is_activation_checkpointing:  # transformers 5 names (the gradient_* ones warn)
                model.backbone.activation_checkpointing_disable()
            model.backbone.config.get_text_config().use_cache = True
            shutil.rmtree(work_dir / "grpo", ignore_errors=True)
    model.sae.requires_grad_(False)
    return report


DICTIONARY_SAMPLES = 512
"""Training scenes the feature dictionary is measured on (fewer when the split is smaller)."""


def feature_dictionary_stage(model, processor, config: TinyRecipeConfig) -> dict:
    """Stage g: label every SAE feature (:func:`segcompass.interpret.features.build_feature_dictionary`) on the first
    :data:`DICTIONARY_SAMPLES` training scenes, exactly what ``segcompass label-features`` runs on the saved model
    (synthetic train split at the model's image size), and attach it to ``model.sae`` so ``save_pretrained`` writes
    it beside the checkpoint."""
    from ...data.synthetic import load_synthetic
    from ...interpret.features import build_feature_dictionary

    count = min(DICTIONARY_SAMPLES, config.num_train)
    dataset = load_synthetic(None, "train", count, seed=config.data_seed, image_size=config.image_size)
    dictionary = build_feature_dictionary(model, processor, dataset, dataset_name="synthetic", split="train")
    model.sae.feature_dictionary = dictionary
    top = dictionary.most_frequent(10)
    summary = {"num_samples": count, "num_tokens": dictionary.num_tokens,
               "features_fired": sum(entry.label is not None for entry in dictionary.features),
               "features_labelled": len(dictionary.most_frequent(dictionary.d_sae)),
               "most_frequent": {f"f{j}": dictionary.label(j) for j in top}}
    logger.info("feature dictionary: %s", summary)
    return summary
