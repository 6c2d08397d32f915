"""Continuing a finished ``train_tiny`` run: reading its ``metrics.json``, the recipe config the continued run gets,
the checkpoint it starts from (grown, given new modules or a finer SAM grid as asked) and the record it leaves in
``metrics["continued_from"]``. :func:`~segcompass.recipes.tiny.main.train_tiny` (``continue_from=``) and
:func:`~segcompass.recipes.tiny.main.reevaluate` call these."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

from ...utils.logging import get_logger
from .card import earlier_concept_stages
from .config import TinyRecipeConfig

logger = get_logger(__name__)


def json_ready(fields: dict) -> dict:
    """Recipe-config fields as ``metrics.json`` holds them: tuples (``thresholds``) as lists."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items()}


def recorded_overrides(overrides: dict) -> dict:
    """``metrics["overrides"]``: the fields a run set on top of its base config (``--set``), JSON-ready, sorted."""
    return json_ready(dict(sorted(overrides.items())))


def finished_run(directory) -> dict:
    """The ``metrics.json`` of a finished :func:`~segcompass.recipes.tiny.main.train_tiny` run (raises ``ValueError``
    naming what is missing)."""
    directory = Path(directory)
    metrics_path = directory / "metrics.json"
    for name in ("metrics.json", "config.json"):
        if not (directory / name).is_file():
            raise ValueError(f"{directory} holds no {name}: it is not a finished train-tiny run; pass the output "
                             "directory of `segcompass train-tiny`.")
    metrics = json.loads(metrics_path.read_text())
    missing = [k for k in ("config", "sam_pretrain", "backbone_vit_pretrain", "lm_warmup", "sae", "joint",
                           "timings_s") if k not in metrics]
    if missing:
        raise ValueError(f"{metrics_path} lacks {missing}; it was not written by train_tiny.")
    return metrics


def saved_recipe_config(saved: dict) -> TinyRecipeConfig:
    """A :class:`TinyRecipeConfig` from the ``config`` of a ``metrics.json`` (fields it lacks keep their defaults)."""
    known = {f.name for f in fields(TinyRecipeConfig)}
    return TinyRecipeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in known})


PREDICTION_RULE_FIELDS = ("duplicate_iou", "limit_instances_to_answer")
"""The ``TinyRecipeConfig`` fields that set the saved model's prediction rule
(:func:`~segcompass.recipes.tiny.evaluation.tune_on_validation`)."""

REEVALUATION_FIELDS = ("num_validation", "num_test", "thresholds", "mask_logit_biases", "eval_batch_size",
                       "max_new_tokens",
                       *PREDICTION_RULE_FIELDS)
"""The ``TinyRecipeConfig`` fields :func:`~segcompass.recipes.tiny.main.reevaluate` may change: evaluation settings,
never training ones."""


RESTART_STAGES = ("concept", "lm_warmup")
"""Where a run continued from a finished one (``train_tiny(continue_from=...)``) restarts."""

LM_RESTART_CARRIED_FIELDS = (
    "image_size", "num_slots", "text_hidden_size", "text_layers", "text_heads", "text_kv_heads",
    "text_intermediate_size", "vision_hidden_size", "vision_depth", "backbone_image_side", "sam_hidden_size",
    "sam_layers", "sam_patch_size", "sam_mlp_dim", "data_seed", "vision_pretrain_steps",
    "backbone_vision_pretrain_steps", "probe_kind_weight", "probe_pos_weight", "scene_probe_kind_weight",
)
"""The ``TinyRecipeConfig`` fields a run restarted at the LM warm-up takes from the earlier run (the architecture of
the weights it carries, and the vision pretraining that made them); every other field is today's default."""


def total_lm_steps(previous: dict) -> int:
    """LM warm-up steps behind a finished run's backbone, through earlier LM restarts."""
    lm = previous["lm_warmup"]
    return int(lm.get("steps", 0)) + int(lm.get("earlier_steps", 0))


def carry_backbone_and_vision(model, continue_from, previous: dict, timings: dict) -> tuple[dict, dict]:
    """Load the earlier run's backbone (ViT + language model) and SAM image encoder into ``model`` (new heads and no
    SAE stay as built); return its stage-0 metrics and record their timings. Raises ``ValueError`` when the
    architectures differ."""
    from transformers import AutoModel

    earlier = AutoModel.from_pretrained(continue_from)
    for name in ("backbone", "vision_encoder"):
        try:
            getattr(model, name).load_state_dict(getattr(earlier, name).state_dict())
        except RuntimeError as err:
            raise ValueError(f"{continue_from}: its {name} does not fit this run's architecture ({err}); restart with "
                             "the earlier run's sizes.") from None
    timings.update({k: v for k, v in previous["timings_s"].items() if k in ("sam_pretrain", "backbone_vit_pretrain")})
    return previous["sam_pretrain"], previous["backbone_vit_pretrain"]


def continuation_record(continue_from, previous: dict, this_run_s: float, restart_at: str = "concept") -> dict:
    """``metrics["continued_from"]``: the earlier run, how many runs made the checkpoint, and every concept stage its
    heads went through before this run's (earliest first), through a chain of continued runs. A run restarted at the
    LM warm-up carries stage 0 and the backbone, not the heads: no earlier concept stage."""
    chain = previous.get("continued_from") or {}
    runs = chain.get("runs", 2 if chain else 1) + 1
    if restart_at == "lm_warmup":
        return {"path": str(continue_from), "restart_at": restart_at,
                "stages_carried_over": ["sam_pretrain", "backbone_vit_pretrain"],
                "earlier_lm_warmup_steps": total_lm_steps(previous),
                "earlier_run_total_s": previous["timings_s"].get("total"), "this_run_s": this_run_s,
                "earlier_concept_stages": [], "runs": runs}
    record = {"path": str(continue_from), "stages_carried_over": [
        "sam_pretrain", "backbone_vit_pretrain", "lm_warmup", "sae", "joint"],
        "earlier_run_total_s": previous["timings_s"].get("total"), "this_run_s": this_run_s}
    stages = earlier_concept_stages(chain)
    earlier_concept = previous.get("concept_stage") or {}
    if earlier_concept.get("steps"):  # the earlier checkpoint had its own concept stage: this one came on top
        earlier_config = previous["config"]
        record["earlier_concept_stage"] = earlier_concept | {
            "matching_source": earlier_config.get("concept_matching_source", "heatmap"),
            "confidence_targets": earlier_config.get("concept_confidence_targets", "matched"),
            "concept_grouping": earlier_config.get("concept_grouping", "sequence")}
        stages.append(record["earlier_concept_stage"])
    record["earlier_concept_stages"] = stages
    record["earlier_other_stages"] = list(chain.get("earlier_other_stages", [])) + [
        {"stage": name, "steps": previous[name]["steps"]}
        | {key: previous[name][key] for key in ("anchor_weight", "decision_weight") if previous[name].get(key)}
        for name in ("reasoning_stage", "refiner_stage", "confidence_stage") if (previous.get(name) or {}).get("steps")]
    record["runs"] = runs
    return record


CONTINUATION_FIELDS = REEVALUATION_FIELDS + ("concept_steps", "concept_matching_source", "concept_confidence_targets",
                                             "concept_grouping", "grpo_steps", "grpo_learning_rate", "grpo_prompts",
                                             "grpo_num_generations", "grpo_temperature", "grpo_scale_rewards",
                                             "grpo_head_lr_multiplier", "generated_pool", "misdescription_share",
                                             "mask_refiner_hidden_size", "refiner_steps", "lambda_mask_bce",
                                             "refiner_lambda_mask_bce", "lambda_snap", "refiner_lambda_snap",
                                             "reasoning_steps", "reasoning_samples", "reasoning_learning_rate",
                                             "reasoning_anchor_weight", "reasoning_position_probe_weight",
                                             "reasoning_decision_weight",
                                             "mask_confidence_hidden_size", "confidence_epochs",
                                             "image_position_frequencies",
                                             "confidence_learning_rate", "confidence_stage_targets")
"""The ``TinyRecipeConfig`` fields that only the stages a ``continue_from`` run repeats read (concept stage, GRPO,
the generated-reasoning pool, evaluation): such a run takes them from today's defaults, not from the earlier run."""


def load_for_continuation(continue_from, config: TinyRecipeConfig):
    """The finished run's checkpoint, with a new mask refiner / mask confidence head / image position embedding (each
    starting as the identity) when ``config`` asks for one and the checkpoint has none; a checkpoint whose module
    differs from the asked one raises ``ValueError``. A ``text_layers`` / ``vision_depth`` above the checkpoint's adds
    decoder layers / vision blocks on top that start as the identity (:mod:`segcompass.training.growth`); below it
    raises ``ValueError``. A smaller ``sam_patch_size`` that divides the checkpoint's refines the SAM grid
    (:func:`segcompass.training.sam_grid.refine_sam_grid`; the refiner starts again at ``mask_refiner_hidden_size``);
    a larger or non-dividing one raises ``ValueError``. Its ``mask_logit_bias`` is set to 0: the stages train the
    decoder's own cut (as the earlier run's did) and the validation stage tunes the bias again."""
    from transformers import AutoConfig, AutoModel

    from ...training.growth import add_identity_decoder_layers, add_identity_vision_blocks
    from ...training.sam_grid import refine_sam_grid, refinement_factor

    model_config = AutoConfig.from_pretrained(continue_from)
    saved_patch = model_config.sam_config.vision_config.patch_size
    refine_grid = config.sam_patch_size != saved_patch
    if refine_grid:
        try:
            refinement_factor(saved_patch, config.sam_patch_size)
        except ValueError as err:
            raise ValueError(f"The run in {continue_from} has sam_patch_size={saved_patch}; a continued run can only "
                             f"cut the SAM input into smaller patches, got sam_patch_size={config.sam_patch_size}: "
                             f"{err}") from err
    for name, what, size in (("mask_refiner_hidden_size", "a mask refiner", "width"),
                             ("mask_confidence_hidden_size", "a mask confidence head", "width"),
                             ("image_position_frequencies", "an image position embedding", "frequencies")):
        if refine_grid and name == "mask_refiner_hidden_size":
            continue  # a finer grid starts the refiner again (refine_sam_grid below), at the asked width
        saved, wanted = getattr(model_config, name, 0), getattr(config, name)
        if saved and saved != wanted:
            raise ValueError(f"The run in {continue_from} has {what} ({size} {saved}); continue it with "
                             f"{name}={saved} (got {wanted}): a trained module is not dropped or resized.")
        if saved != wanted:
            logger.info("adding %s (%s %d) to the checkpoint of %s", what, size, wanted, continue_from)
            setattr(model_config, name, wanted)
    if model_config.mask_logit_bias:
        logger.info("training %s under the decoder's own cut (mask_logit_bias %g -> 0; tuned again on validation)",
                    continue_from, model_config.mask_logit_bias)
        model_config.mask_logit_bias = 0.0
    backbone = model_config.backbone_config
    depths = {"text_layers": backbone.get_text_config().num_hidden_layers,
              "vision_depth": backbone.vision_config.depth}  # what the checkpoint has
    for name, saved in depths.items():
        if getattr(config, name) < saved:
            raise ValueError(f"The run in {continue_from} has {name}={saved}; continue it with {name} >= {saved} (got "
                             f"{getattr(config, name)}): trained layers are not dropped.")
    model = AutoModel.from_pretrained(continue_from, config=model_config)
    if config.text_layers > depths["text_layers"]:  # more reasoning depth above the SAE's hook
        add_identity_decoder_layers(model, config.text_layers - depths["text_layers"])
    if config.vision_depth > depths["vision_depth"]:
        add_identity_vision_blocks(model, config.vision_depth - depths["vision_depth"])
    if refine_grid:  # the same SAM input in smaller patches: a finer embedding and mask grid
        model = refine_sam_grid(model, config.sam_patch_size,
                                mask_refiner_hidden_size=config.mask_refiner_hidden_size)
    return model


def continuation_config(previous: dict, restart_at: str = "concept") -> TinyRecipeConfig:
    """The recipe config of a run continued from ``previous`` (its ``metrics.json``): the earlier run's values for the
    stages carried over, the defaults (smoke defaults for a smoke run) for :data:`CONTINUATION_FIELDS` (restarting at
    the concept stage) or for everything but :data:`LM_RESTART_CARRIED_FIELDS` (restarting at the LM warm-up)."""
    carried = saved_recipe_config(previous["config"])
    defaults = TinyRecipeConfig.smoke() if previous.get("smoke") else TinyRecipeConfig()
    if restart_at == "lm_warmup":
        return replace(defaults, **{name: getattr(carried, name) for name in LM_RESTART_CARRIED_FIELDS})
    return replace(carried, **{name: getattr(defaults, name) for name in CONTINUATION_FIELDS})
