"""SegCompassGRPOConfig: TRL's ``GRPOConfig`` with the SegCompass paper defaults and the segmentation-loss knobs.

Paper defaults (§4.1, appendix B): G = 8 rollouts per prompt, β = 0.2 (KL to the reference policy), ε = 0.2
(clipping), lr 2e-6 for the backbone with ×25 for the concept codebook (``concept_interface``), ×80 for the slot
mapper and ×10 for the mask decoder, AdamW with weight decay 0.01, a one-cycle schedule without warm-up whose final
learning rate is the peak divided by 6.7, gradient clipping at 1.0, rewards 0.3 · format + 0.7 · mask, and the
supervised terms λ_s = 1.0 (segmentation), λ_c = 0.2 (confidence), λ_d = 0.6 (dice inside the segmentation term),
completions of up to 2,000 tokens and, for Qwen2.5-VL, images resized into 3,136 to 705,600 pixels (appendix A.2).
K = 6 slots is a property of the model (``SegCompassConfig.num_slots``), not of this config.

Importing this module imports ``trl`` (about 5 s); :mod:`segcompass.training` itself does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import GRPOConfig

from .losses import CONFIDENCE_TARGETS, MATCHING_SOURCES, check_loss_option

__all__ = ["SegCompassGRPOConfig"]

# (field, lower bound, lower bound included, upper bound or None, what the field is): checked in __post_init__ for
# every value that is set (None means "use the default" where the field allows it)
_RANGES = (
    ("beta", 0.0, True, None, "the KL coefficient (0 turns the KL term off)"),
    ("epsilon", 0.0, False, None, "the clipping range"),
    ("epsilon_high", 0.0, False, None, "the upper clipping range"),
    ("learning_rate", 0.0, True, None, "the peak learning rate"),
    ("weight_decay", 0.0, True, None, "the AdamW weight decay"),
    ("max_grad_norm", 0.0, True, None, "the gradient clipping norm (0 turns clipping off)"),
    ("temperature", 0.0, False, None, "the sampling temperature"),
    ("top_p", 0.0, False, 1.0, "the nucleus sampling probability"),
    ("min_p", 0.0, True, 1.0, "the min-p sampling probability"),
    ("top_k", 0, True, None, "the top-k sampling cut-off (0 turns it off)"),
    ("repetition_penalty", 0.0, False, None, "the repetition penalty"),
    ("num_generations", 2, True, None, "the rollouts per prompt (GRPO compares at least 2)"),
    ("num_iterations", 1, True, None, "the optimisation steps per generation"),
    ("max_completion_length", 1, True, None, "the completion length limit"),
    ("steps_per_generation", 1, True, None, "the steps per generation"),
    ("generation_batch_size", 1, True, None, "the generation batch size"),
    ("per_device_train_batch_size", 1, True, None, "the batch size per device"),
    ("gradient_accumulation_steps", 1, True, None, "the gradient accumulation steps"),
    ("warmup_steps", 0, True, None, "the warm-up length"),
    ("logging_steps", 0.0, False, None, "the logging interval"),
    ("lambda_seg", 0.0, True, None, "a loss weight"),
    ("lambda_conf", 0.0, True, None, "a loss weight"),
    ("lambda_dice", 0.0, True, None, "a loss weight"),
    ("lambda_mask_bce", 0.0, True, None, "a loss weight"),
    ("backbone_lr_multiplier", 0.0, True, None, "a learning-rate multiplier (0 freezes the group)"),
    ("codebook_lr_multiplier", 0.0, True, None, "a learning-rate multiplier (0 freezes the group)"),
    ("slot_mapper_lr_multiplier", 0.0, True, None, "a learning-rate multiplier (0 freezes the group)"),
    ("mask_decoder_lr_multiplier", 0.0, True, None, "a learning-rate multiplier (0 freezes the group)"),
    ("one_cycle_final_div_factor", 1.0, True, None, "final LR = peak / factor"),
    ("mask_confidence_threshold", 0.0, True, 1.0, "a confidence probability"),
    ("min_pixels", 1, True, None, "the smallest image pixel count of the backbone"),
    ("max_pixels", 1, True, None, "the largest image pixel count of the backbone"),
    ("dataset_check_rows", 1, True, None, "the rows checked before training (None: every row)"),
)


def _check_ranges(config) -> None:
    """Refuse an out-of-range or non-finite value of a :data:`_RANGES` field with a message naming the field."""
    for name, low, low_included, high, what in _RANGES:
        value = getattr(config, name, None)
        if value is None or isinstance(value, bool):
            continue
        allowed = f"{'[' if low_included else '('}{low}, {high if high is not None else 'inf'}{']' if high else ')'}"
        ok = isinstance(value, (int, float)) and math.isfinite(value) and (value >= low if low_included
                                                                           else value > low)
        if ok and high is not None:
            ok = value <= high
        if not ok:
            raise ValueError(f"`{name}` = {value!r} is out of range: {what} must be in {allowed}; pass e.g. "
                             f"--{name} {getattr(type(config), name, low)}.")


@dataclass
class SegCompassGRPOConfig(GRPOConfig):
    r"""Configuration of [`SegCompassGRPOTrainer`]: every ``GRPOConfig`` / ``TrainingArguments`` field plus the ones
    below. Works with ``HfArgumentParser`` (flags or YAML, see ``segcompass train``).

    Changed defaults (paper): ``beta=0.2``, ``learning_rate=2e-6``, ``weight_decay=0.01``, ``loss_type="grpo"``,
    ``num_generations=8``, ``epsilon=0.2``, ``max_grad_norm=1.0``, ``reward_weights`` 0.3 / 0.7 for the default
    reward functions (format, mask), ``logging_steps=1``, ``max_completion_length=2000`` (TRL: 512; the paper's
    response length, appendix A.2). Activation checkpointing stays on by default as in TRL, under
    transformers 5's name ``activation_checkpointing`` (TRL sets the deprecated ``gradient_checkpointing=True``, which
    made every config warn); ``gradient_checkpointing`` is still read when given.

    Args:
        lambda_seg: λ_s, weight of the segmentation term (heatmap BCE + λ_d · decoder dice).
        lambda_conf: λ_c, weight of the confidence BCE.
        lambda_dice: λ_d, weight of the dice loss inside the segmentation term.
        lambda_mask_bce: λ_m, weight of a pixel BCE on the matched mask logits inside the segmentation term (0: the
            paper; see :func:`~segcompass.training.losses.segmentation_losses`).
        backbone_lr_multiplier: learning-rate multiplier of the backbone (policy) parameters.
        codebook_lr_multiplier: multiplier of the concept interface (codebook, slot queries, concept encoder).
        slot_mapper_lr_multiplier: multiplier of the slot mapper.
        mask_decoder_lr_multiplier: multiplier of the mask decoder.
        freeze_vision_encoder: keep SAM's image encoder frozen (its image keys are then computed once per rollout,
            without gradients). With False the segmentation loss's forward recomputes them with gradients and the
            encoder trains at the backbone's rate. The SAE is always frozen.
        freeze_backbone_through_hook_layer: freeze the backbone weights that compute the SAE's input (vision tower,
            token embeddings, decoder layers below the hook), so the frozen SAE stays faithful.
        train_slot_token_embeddings: train the concentration tokens' embedding rows (and only those rows).
        use_one_cycle_schedule: use the one-cycle schedule (cosine annealing from each group's peak at the first
            step to peak / ``one_cycle_final_div_factor`` at the last; linear warm-up over ``warmup_steps``, 0 by
            default as in the paper) instead of ``lr_scheduler_type``.
        one_cycle_final_div_factor: final learning rate = peak / this factor (paper 6.7).
        dataset_check_rows: rows of each dataset checked (columns, mask sizes) before training starts; ``None``
            checks every row. Every rollout batch is checked again as it is used.
        mask_confidence_threshold: confidence probability at or above which a slot counts as predicted, for the
            default mask reward and the logged rollout IoU. ``None`` (default) takes the model's
            ``config.confidence_threshold`` (the tuned value inference and evaluation use), so the reward keeps the
            slots the evaluation keeps; the trainer fills it in (:func:`.grpo_setup.check_grpo_args`). A value set
            here overrides the model's; a reward function given its own threshold keeps it.
        min_pixels / max_pixels: the pixel-count range Qwen2.5-VL's image processor resizes images into (paper
            appendix A.2: 3,136 to 705,600; Qwen2.5-VL's own processor allows up to 12,845,056). The trainer narrows
            the processor's range to this one (:func:`.grpo_setup.apply_pixel_limits`): its ``longest_edge`` becomes
            ``min(own, max_pixels)``, its ``shortest_edge`` ``max(own, min_pixels)``, so a processor already inside
            the range (e.g. a fixed image size) is unchanged; ``None`` leaves that side as the processor has it.
            To widen a processor's range, set its ``image_processor.size`` and pass None here. No effect on LLaVA
            (its CLIP processor has a fixed size).

    Precision: trainable parameters must be float32 (``bf16=True``, the default, then computes in bfloat16 under
    autocast with fp32 master weights, the paper's "bfloat16 for parameters, fp32 for reductions"); a model loaded in
    bfloat16 / float16 is refused by :func:`.grpo_setup.check_grpo_args`, since AdamW on 16-bit weights rounds most
    updates at lr 2e-6 away.
    """

    # ---- paper defaults for inherited fields
    beta: float = field(default=0.2, metadata={"help": "KL coefficient β (paper 0.2)."})
    epsilon: float = field(default=0.2, metadata={"help": "Clipping ε (paper 0.2)."})
    num_generations: int | None = field(default=8, metadata={"help": "Rollouts per prompt G (paper 8)."})
    learning_rate: float = field(default=2e-6, metadata={"help": "Backbone learning rate (paper 2e-6)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (paper 0.01)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (paper 1.0)."})
    loss_type: str = field(default="grpo", metadata={"help": "GRPO loss aggregation (paper: 'grpo')."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N steps."})
    max_completion_length: int | None = field(
        default=2000, metadata={"help": "Maximum completion length in tokens (paper 2000; TRL's default is 512)."}
    )
    activation_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Recompute activations in the backward pass to save memory (about 20%% slower); unset "
                          "means on (TRL's default); --activation_checkpointing false turns it off.",
                  "nargs": "?", "const": True},
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Deprecated alias of --activation_checkpointing (transformers 5); used only when "
                          "--activation_checkpointing is not given.", "nargs": "?", "const": True},
    )

    # ---- segmentation losses
    lambda_seg: float = field(default=1.0, metadata={"help": "λ_s: segmentation loss weight (paper 1.0)."})
    lambda_conf: float = field(default=0.2, metadata={"help": "λ_c: confidence loss weight (paper 0.2)."})
    lambda_dice: float = field(default=0.6, metadata={"help": "λ_d: dice weight inside the segmentation loss (0.6)."})
    lambda_mask_bce: float = field(
        default=0.0, metadata={"help": "λ_m: weight of a pixel BCE on the matched mask logits inside the segmentation "
                                       "loss (0: the paper's soft dice alone)."},
    )
    matching_source: str = field(
        default="heatmap", metadata={"help": "What the Hungarian matching compares with the ground truth: 'heatmap' "
                                             "(the authors') or 'mask' (the decoder masks users get).",
                                     "choices": list(MATCHING_SOURCES)})
    confidence_targets: str = field(
        default="matched", metadata={"help": "Confidence BCE targets: 'matched' (1 for matched slots, the paper), "
                                             "'mask_iou' (each slot's mask IoU with its best instance) or "
                                             "'assigned_iou' (that IoU for one slot per instance, 0 for the others).",
                                     "choices": list(CONFIDENCE_TARGETS)})

    # ---- optimizer parameter groups
    backbone_lr_multiplier: float = field(default=1.0, metadata={"help": "LR multiplier of the backbone."})
    codebook_lr_multiplier: float = field(default=25.0, metadata={"help": "LR multiplier of the concept interface."})
    slot_mapper_lr_multiplier: float = field(default=80.0, metadata={"help": "LR multiplier of the slot mapper."})
    mask_decoder_lr_multiplier: float = field(default=10.0, metadata={"help": "LR multiplier of the mask decoder."})
    freeze_vision_encoder: bool = field(default=True, metadata={"help": "Keep SAM's image encoder frozen."})
    freeze_backbone_through_hook_layer: bool = field(
        default=False, metadata={"help": "Freeze the backbone weights that compute the SAE's input."}
    )
    train_slot_token_embeddings: bool = field(
        default=False, metadata={"help": "Train the concentration tokens' embedding rows (only those rows)."}
    )
    shared_policy_forward: bool = field(
        default=True,
        metadata={"help": "One backbone forward per completion: the segmentation loss reads its hidden states from "
                          "the policy forward (generation stops at <REF_POS>). False: a separate segmentation forward "
                          "(twice the backbone compute; kept as the benchmark's reference)."},
    )

    # ---- schedule
    use_one_cycle_schedule: bool = field(
        default=True,
        metadata={"help": "One-cycle cosine schedule (no warm-up by default) instead of lr_scheduler_type."},
    )
    one_cycle_final_div_factor: float = field(
        default=6.7, metadata={"help": "Final LR = peak / this factor (paper 6.7)."}
    )

    # ---- checks and logging
    dataset_check_rows: int | None = field(
        default=256, metadata={"help": "Rows checked before training (None: all)."}
    )
    mask_confidence_threshold: float | None = field(
        default=None,
        metadata={"help": "Slot confidence threshold of the default mask reward and the logged rollout IoU; unset "
                          "means the model's config.confidence_threshold (what inference and evaluation use)."},
    )

    # ---- backbone image size (Qwen2.5-VL)
    min_pixels: int | None = field(
        default=3136,
        metadata={"help": "Smallest image pixel count for Qwen2.5-VL (paper 3136); the processor's range is narrowed "
                          "to [min_pixels, max_pixels]. Unset: the processor's own. No effect on LLaVA."},
    )
    max_pixels: int | None = field(
        default=705600,
        metadata={"help": "Largest image pixel count for Qwen2.5-VL (paper 705600); larger images are resized down. "
                          "Unset: the processor's own. No effect on LLaVA."},
    )

    def __post_init__(self):
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = True  # TRL's default, without the deprecated name's FutureWarning
        _check_ranges(self)  # before TRL's own checks: one message naming the field and its range
        super().__post_init__()
        for name in ("lambda_seg", "lambda_conf", "lambda_dice", "lambda_mask_bce"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"`{name}` must be >= 0, got {value}.")
        for name in ("matching_source", "confidence_targets"):
            check_loss_option(name, getattr(self, name))
        for name in ("backbone_lr_multiplier", "codebook_lr_multiplier", "slot_mapper_lr_multiplier",
                     "mask_decoder_lr_multiplier"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"`{name}` must be >= 0 (0 freezes the group), got {value}.")
        if self.one_cycle_final_div_factor < 1:
            raise ValueError(
                f"`one_cycle_final_div_factor` must be >= 1 (final LR = peak / factor), got "
                f"{self.one_cycle_final_div_factor}."
            )
        if self.mask_confidence_threshold is not None and not 0.0 <= self.mask_confidence_threshold <= 1.0:
            raise ValueError(
                f"`mask_confidence_threshold` must be a probability in [0, 1] or None (the model's "
                f"config.confidence_threshold), got {self.mask_confidence_threshold}."
            )
        for name in ("min_pixels", "max_pixels"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"`{name}` must be a whole pixel count or None, got {value!r}; pass e.g. "
                                 f"--{name} {getattr(type(self), name)}.")
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise ValueError(
                f"`min_pixels` ({self.min_pixels}) is above `max_pixels` ({self.max_pixels}); the image pixel range "
                "must be non-empty (paper: 3136 to 705600)."
            )
        if self.dataset_check_rows is not None and self.dataset_check_rows < 1:
            raise ValueError(
                f"`dataset_check_rows` must be >= 1 or None (check every row), got {self.dataset_check_rows}."
            )
