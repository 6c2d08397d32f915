"""``train_tiny``: build, train, evaluate and save the tiny model (the command is ``segcompass train-tiny``,
:mod:`segcompass.commands.train_tiny`); ``reevaluate``: re-score a finished run."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import torch

from ...training.freezing import freeze_backbone_through_hook_layer, train_token_embedding_rows
from ...utils.io import save_pretrained_atomic, write_json_atomic, write_text_atomic
from ...utils.logging import get_logger
from .build import build_tiny_model_and_processor, set_backbone_image_side
from .card import render_model_card
from .confidence import confidence_stage
from .config import TinyRecipeConfig
from .continuation import (
    PREDICTION_RULE_FIELDS,
    REEVALUATION_FIELDS,
    RESTART_STAGES,
    carry_backbone_and_vision,
    continuation_config,
    continuation_record,
    finished_run,
    json_ready,
    load_for_continuation,
    recorded_overrides,
    saved_recipe_config,
    total_lm_steps,
)
from .data import SceneProbe, TokenProbe, make_split
from .distributed import broadcast_from_rank0, rank_and_world
from .evaluation import evaluate_test_split, evaluate_with_runner, final_sae_fve, tune_on_validation
from .reasoning import reasoning_stage
from .stages import (
    backbone_vit_pretrain,
    concept_stage,
    feature_dictionary_stage,
    generate_reasoning_pool,
    grpo_stage,
    joint_training,
    lm_warmup,
    refiner_stage,
    sam_encoder_pretrain,
    train_sae,
)

logger = get_logger(__name__)


def _rank_main(rank: int, world: int, port: int, output_dir, smoke: bool, seed: int, config,
               continue_from=None, restart_at: str = "concept", overrides: dict | None = None) -> None:
    """One data-parallel process of :func:`train_tiny` (started by ``torch.multiprocessing.spawn``)."""
    import torch.distributed as dist

    logging.basicConfig(format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("segcompass").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    train_tiny(output_dir, smoke=smoke, seed=seed, config=config, processes=1, continue_from=continue_from,
               restart_at=restart_at, **(overrides or {}))  # already in config; passed on to be recorded


def train_tiny(output_dir, *, smoke: bool = False, seed: int = 0, config: TinyRecipeConfig | None = None,
               processes: int = 1, continue_from=None, restart_at: str = "concept", **overrides) -> dict:
    """Train the tiny synthetic-domain SegCompass end to end and write it to ``output_dir``.

    Args:
        output_dir: where ``config.json``, ``model.safetensors``, the processor files, the feature dictionary
            (``feature_dictionary.json``, ``feature_crops.safetensors``), ``metrics.json`` and the model card
            ``README.md`` are written (created if needed).
        smoke: tiny sizes and a few steps (:meth:`TinyRecipeConfig.smoke`), for CI; < 3 min on 2 CPU cores.
        seed: seeds initialisation, batch order and the random-SAE ablation (the data has its own ``data_seed``).
        config: a full :class:`TinyRecipeConfig`; ``overrides`` replace its fields (e.g. ``joint_steps=100``).
        processes: data-parallel processes (one thread each) for the training stages; every rank draws the same
            batch and takes its share, gradients are averaged (gloo). After joint training rank 0 carries on alone
            (GRPO, threshold tuning, evaluation, saving). Two processes on two cores beat one process with two
            threads for a model this small.
        continue_from: a finished run's directory (checkpoint + ``metrics.json``): its model replaces stages 0-4
            (vision pretraining to joint training, whose metrics and timings are carried over from its
            ``metrics.json``, as are the fields of its recipe config that those stages used, unless ``config`` is
            given) and the run goes on from the reasoning stage (which does nothing with ``reasoning_steps=0``) and the
            concept stage; the stages that run again take today's defaults
            (:data:`~segcompass.recipes.tiny.continuation.CONTINUATION_FIELDS`; a smoke run's smoke defaults) unless
            ``overrides`` set them. Used to add a stage to a finished run without repeating the hour before it. The
            saved model is the earlier run's last one: when that run had a concept stage of its own, the new one
            trains on top of it, and ``metrics["continued_from"]["earlier_concept_stage"]`` (and the card) say so; a
            continued run may be continued again (``"runs"`` and ``"earlier_concept_stages"`` then cover the whole
            chain).
        restart_at: with ``continue_from``, the stage the run restarts at. ``"concept"`` (default): as above.
            ``"lm_warmup"``: only the vision pretraining (stage 0) is carried over; the earlier run's backbone (ViT and
            language model) and SAM image encoder start this run's LM warm-up, which trains ``lm_warmup_steps`` more
            steps, and every later stage runs again on new heads (a new SAE, joint training, the concept stage ...),
            with today's settings for all of them
            (:data:`~segcompass.recipes.tiny.continuation.LM_RESTART_CARRIED_FIELDS` come from the earlier run).

    Returns:
        The metrics dict also written to ``metrics.json``.
    """
    if restart_at not in RESTART_STAGES:
        raise ValueError(f"restart_at={restart_at!r}: a continued run restarts at one of {list(RESTART_STAGES)}.")
    previous = finished_run(continue_from) if continue_from is not None else None
    if previous is None and restart_at != "concept":
        raise ValueError(f"restart_at={restart_at!r} needs continue_from: the finished run to restart from.")
    if config is None and previous is not None:
        config = continuation_config(previous, restart_at)
    base = config or (TinyRecipeConfig.smoke() if smoke else TinyRecipeConfig())
    known = {f.name for f in fields(TinyRecipeConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"Unknown recipe option(s) {unknown}; TinyRecipeConfig fields are {sorted(known)}.")
    config = replace(base, **overrides)
    if processes > 1:
        if processes > config.batch_size:
            raise ValueError(f"processes={processes} exceeds batch_size={config.batch_size}: every rank needs a share "
                             "of a batch.")
        import socket

        import torch.multiprocessing as mp

        with socket.socket() as probe_socket:
            probe_socket.bind(("127.0.0.1", 0))
            port = probe_socket.getsockname()[1]
        mp.spawn(_rank_main, args=(processes, port, str(output_dir), smoke, seed, config,
                                   None if continue_from is None else str(continue_from), restart_at, overrides),
                 nprocs=processes, join=True)
        return json.loads((Path(output_dir) / "metrics.json").read_text())
    start = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 1)
        logger.info("stage %s done in %.1f s", name, now - since)
        return now

    t = time.perf_counter()
    train = make_split("train", config.num_train, config, "train split")
    validation = make_split("validation", config.num_validation, config, "validation split")
    test = make_split("test", config.num_test, config, "test split")
    t = lap("data", t)
    if previous is None or restart_at == "lm_warmup":
        model, processor = build_tiny_model_and_processor(config, seed=seed)
        num_params = sum(p.numel() for p in model.parameters())
        logger.info("built a %.2f M-parameter model (vocabulary %d)", num_params / 1e6, len(processor.tokenizer))
        probe = SceneProbe(model.config.sam_config.vision_config.output_channels,
                           kind_weight=config.scene_probe_kind_weight)
        token_probe = TokenProbe(model.config.get_text_config().hidden_size, kind_weight=config.probe_kind_weight,
                                 pos_weight=config.probe_pos_weight)
        if previous is None:
            vision = sam_encoder_pretrain(model, processor, train, config, probe, generator)
            t = lap("sam_pretrain", t)
            backbone_vision = backbone_vit_pretrain(model, processor, train, config, generator, token_probe)
            t = lap("backbone_vit_pretrain", t)
        else:
            vision, backbone_vision = carry_backbone_and_vision(model, continue_from, previous, timings)
            logger.info("restarting from the LM warm-up of the finished run in %s", continue_from)
            t = lap("load", t)
        lm = lm_warmup(model, processor, train, config, generator, token_probe)
        if previous is not None:
            lm["earlier_steps"] = total_lm_steps(previous)
        t = lap("lm_warmup", t)
        sae = train_sae(model, processor, train, config, output_dir, seed)
        broadcast_from_rank0(model, token_probe, probe)  # every rank ran the SAE stage; keep rank 0's
        freeze_backbone_through_hook_layer(model)
        train_token_embedding_rows(model)
        t = lap("sae", t)
        pool, pool_summary = generate_reasoning_pool(model, processor, train, config)
        t = lap("generated_pool", t)
        joint = joint_training(model, processor, train, config, generator, probe, pool)
        t = lap("joint", t)
    else:
        from transformers import AutoProcessor

        model = load_for_continuation(continue_from, config)
        processor = AutoProcessor.from_pretrained(continue_from)
        earlier_side = previous["config"].get("backbone_image_side", config.backbone_image_side)
        if config.backbone_image_side != earlier_side:
            logger.info("showing the backbone %d px images instead of %d px", config.backbone_image_side, earlier_side)
            set_backbone_image_side(model, processor, config.backbone_image_side)
        num_params = sum(p.numel() for p in model.parameters())
        vision, backbone_vision, lm, sae, joint = (previous[k] for k in (
            "sam_pretrain", "backbone_vit_pretrain", "lm_warmup", "sae", "joint"))
        timings.update({name: value for name, value in previous["timings_s"].items()
                        if name in ("sam_pretrain", "backbone_vit_pretrain", "lm_warmup", "sae", "joint")})
        logger.info("continuing the finished run in %s from the reasoning and concept stages", continue_from)
        t = lap("load", t)
        pool = None
    reasoning = reasoning_stage(model, processor, config, generator)
    t = lap("reasoning", t)
    if pool is None:  # a continued run: its pool is the reasoning the model writes after the reasoning stage
        pool, pool_summary = generate_reasoning_pool(model, processor, train, config)
        t = lap("generated_pool", t)
    elif reasoning["steps"]:  # joint training used the first pool; the later stages see what the model writes now
        pool, pool_summary["after_reasoning_stage"] = generate_reasoning_pool(model, processor, train, config)
        t = lap("generated_pool_after_reasoning", t)
    concept = concept_stage(model, processor, train, config, generator, pool)
    t = lap("concept", t)
    refiner = refiner_stage(model, processor, train, config, generator, pool)
    t = lap("refiner", t)
    confidence = confidence_stage(model, processor, train, config, generator, pool)
    t = lap("confidence", t)
    rank, world = rank_and_world()
    processes = world
    if world > 1:  # the data-parallel part ends here; rank 0 carries on alone
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
        if rank != 0:
            return {}
        for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
            os.environ.pop(name, None)
        torch.set_num_threads(world)
    grpo = grpo_stage(model, processor, train, config, output_dir, seed)
    t = lap("grpo", t)

    threshold, sweep, validation_reasoning, validation_scores, bias_sweep = tune_on_validation(
        model, processor, validation, config, seed)
    t = lap("validation", t)
    test_metrics, test_reasoning = evaluate_test_split(model, processor, test, config, seed, threshold)
    t = lap("test", t)
    dictionary_summary = feature_dictionary_stage(model, processor, config)  # saved with the model below
    t = lap("feature_dictionary", t)
    sae_fve_final = final_sae_fve(model, processor, validation, config)

    save_pretrained_atomic(model, output_dir)
    save_pretrained_atomic(processor, output_dir)
    runner = evaluate_with_runner(output_dir, config)
    t = lap("evaluate_runner", t)
    metrics = {
        "recipe": "segcompass.recipes.tiny.train_tiny", "smoke": smoke, "seed": seed,
        "overrides": recorded_overrides(overrides),
        "config": json_ready(asdict(config)),
        "num_parameters": num_params, "sam_pretrain": vision, "backbone_vit_pretrain": backbone_vision,
        "lm_warmup": lm, "sae": sae | {"fve_after_joint": sae_fve_final},
        "joint": joint, "reasoning_stage": reasoning, "concept_stage": concept, "refiner_stage": refiner,
        "confidence_stage": confidence, "grpo": grpo,
        "confidence_threshold": threshold, "validation_threshold_sweep": sweep,
        "mask_logit_bias": model.config.mask_logit_bias, "validation_mask_bias_sweep": bias_sweep,
        "validation_reasoning": validation_reasoning, "validation": validation_scores,
        "test_reasoning": test_reasoning, "test": test_metrics,
        "evaluate_command": runner, "processes": processes, "generated_pool": pool_summary,
        "feature_dictionary": dictionary_summary,
        "model_config": {k: getattr(model.config, k) for k in (
            "concept_selection", "concept_value_embedding", "slot_mapper_positional_keys", "slot_embedding_dropout",
            "slot_query_inputs", "concept_grouping", "answer_item_token_ids", "confidence_threshold",
            "duplicate_iou", "limit_instances_to_answer", "mask_refiner_hidden_size", "mask_confidence_hidden_size",
            "mask_logit_bias", "image_position_frequencies")},
        "timings_s": timings | {"total": round(time.perf_counter() - start, 1)},
    }
    if previous is not None:  # the wall time counts the earlier run's stages too
        metrics["continued_from"] = continuation_record(continue_from, previous, metrics["timings_s"]["total"],
                                                        restart_at)
        earlier_chain = previous.get("continued_from")
        earlier = (previous["timings_s"]["total"] if earlier_chain  # already counts the runs before it
                   else sum(v for k, v in previous["timings_s"].items() if k != "total"))
        metrics["timings_s"]["total"] = round(metrics["timings_s"]["total"] + earlier, 1)
    write_json_atomic(output_dir / "metrics.json", metrics)
    write_text_atomic(output_dir / "README.md", render_model_card(metrics))
    logger.info("wrote the checkpoint, metrics.json and README.md to %s in %.1f s", output_dir,
                time.perf_counter() - start)
    return metrics


def reevaluate(output_dir, *, retune_threshold: bool = False, **overrides) -> dict:
    """Re-run the evaluation stages of a finished :func:`train_tiny` run on its saved checkpoint with the current
    code (in-recipe test evaluation with ablations, the evaluation runner, the SAE's FVE on the final backbone) and
    rewrite ``metrics.json`` and the model card. Training metrics and timings are kept.

    Args:
        output_dir: the finished run.
        retune_threshold: tune the mask logit bias and the confidence threshold again on validation
            (:func:`~segcompass.recipes.tiny.evaluation.tune_on_validation` over ``mask_logit_biases`` and
            ``thresholds``) and save them into the checkpoint's config; otherwise the saved model's are kept.
        overrides: evaluation fields to change
            (:data:`~segcompass.recipes.tiny.continuation.REEVALUATION_FIELDS`; the prediction rule's,
            :data:`~segcompass.recipes.tiny.continuation.PREDICTION_RULE_FIELDS`, only with ``retune_threshold``); they
            are recorded in ``metrics.json``. A training field raises ``ValueError``.

    Returns the updated metrics."""
    from transformers import AutoModel, AutoProcessor

    output_dir = Path(output_dir)
    metrics_path = output_dir / "metrics.json"
    metrics = finished_run(output_dir)
    allowed = set(REEVALUATION_FIELDS) if retune_threshold else set(REEVALUATION_FIELDS) - set(PREDICTION_RULE_FIELDS)
    refused = sorted(set(overrides) - allowed)
    if refused:
        raise ValueError(f"Re-evaluation can change only {sorted(allowed)} ({' and '.join(PREDICTION_RULE_FIELDS)} "
                         f"with retune_threshold, which saves them into the checkpoint), got {refused}; training "
                         "settings need a new run.")
    config = replace(saved_recipe_config(metrics["config"]), **overrides)
    metrics["config"] = json_ready(asdict(config))
    if overrides:
        metrics["overrides"] = {**metrics.get("overrides", {}), **recorded_overrides(overrides)}
    model = AutoModel.from_pretrained(output_dir).eval()
    processor = AutoProcessor.from_pretrained(output_dir)
    validation = make_split("validation", config.num_validation, config, "validation split")
    test = make_split("test", config.num_test, config, "test split")
    if retune_threshold:
        threshold, sweep, validation_reasoning, validation_scores, bias_sweep = tune_on_validation(
            model, processor, validation, config, metrics["seed"])
        save_pretrained_atomic(model, output_dir)
        metrics.update(confidence_threshold=threshold, validation_threshold_sweep=sweep,
                       mask_logit_bias=model.config.mask_logit_bias, validation_mask_bias_sweep=bias_sweep,
                       validation_reasoning=validation_reasoning, validation=validation_scores)
        rule = {name: getattr(config, name) for name in PREDICTION_RULE_FIELDS}
        metrics.setdefault("model_config", {}).update(
            confidence_threshold=threshold, mask_logit_bias=model.config.mask_logit_bias,
            answer_item_token_ids=model.config.answer_item_token_ids, **rule)
        metrics["threshold_retuned"] = {"validation_samples": config.num_validation, **rule}
    threshold = model.config.confidence_threshold
    metrics["test"], metrics["test_reasoning"] = evaluate_test_split(model, processor, test, config, metrics["seed"],
                                                                     threshold)
    metrics["sae"]["fve_after_joint"] = final_sae_fve(model, processor, validation, config)
    metrics["evaluate_command"] = evaluate_with_runner(output_dir, config)
    write_json_atomic(metrics_path, metrics)
    write_text_atomic(output_dir / "README.md", render_model_card(metrics))
    return metrics
