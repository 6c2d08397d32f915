"""What :class:`~segcompass.training.grpo_trainer.SegCompassGRPOTrainer` checks and prepares before TRL's
``GRPOTrainer.__init__``: the model and its processor, the config's supported features, and the model's frozen parts
and generation settings. (The datasets are checked by :func:`.grpo_data.validate_grpo_dataset`.)

Imports no ``trl`` itself (:class:`SegCompassGRPOConfig` does).
"""

from __future__ import annotations

import os

from accelerate.utils import is_peft_model

from ..modeling_segcompass import SegCompassForReasoningSegmentation
from ..processing_segcompass import SegCompassProcessor
from .freezing import freeze_backbone_through_hook_layer, train_token_embedding_rows
from .grpo_config import SegCompassGRPOConfig

__all__ = ["check_grpo_args", "load_model_and_processor", "prepare_model_for_grpo"]


def load_model_and_processor(
    model: SegCompassForReasoningSegmentation | str | os.PathLike, processing_class: SegCompassProcessor | None
) -> tuple[SegCompassForReasoningSegmentation, SegCompassProcessor]:
    """The SegCompass model (loaded when given a path) and its processor (default: loaded from the model's
    directory), checked to be of the right types and to share the special tokens.

    Raises:
        ValueError: a model or processor of another type, no processor to load, or special tokens that differ.
    """
    if isinstance(model, (str, os.PathLike)):
        model = SegCompassForReasoningSegmentation.from_pretrained(model)
        if processing_class is None:
            processing_class = SegCompassProcessor.from_pretrained(model.config._name_or_path)
    if not isinstance(model, SegCompassForReasoningSegmentation):
        raise ValueError(
            "`model` must be a SegCompassForReasoningSegmentation (or a path to one), got "
            f"{type(model).__name__}. For a plain VLM use trl.GRPOTrainer."
        )
    if processing_class is None:
        source = model.config._name_or_path
        if not source or not os.path.isdir(source):
            raise ValueError(
                "Pass `processing_class=SegCompassProcessor.from_pretrained(...)`: the model was not loaded "
                "from a directory holding its processor."
            )
        processing_class = SegCompassProcessor.from_pretrained(source)
    if not isinstance(processing_class, SegCompassProcessor):
        raise ValueError(
            f"`processing_class` must be a SegCompassProcessor, got {type(processing_class).__name__}; it builds "
            "the SAM inputs and the prompt template the model was trained with."
        )
    if list(processing_class.slot_token_ids) != list(model.config.slot_token_ids or []) or (
        processing_class.ref_token_id != model.config.ref_token_id
    ):
        raise ValueError(
            f"The processor's special tokens (<REF_POS>={processing_class.ref_token_id}, slots="
            f"{list(processing_class.slot_token_ids)}) differ from the model config's "
            f"({model.config.ref_token_id}, {model.config.slot_token_ids}); load the processor saved with this "
            "model."
        )
    return model, processing_class


def check_grpo_args(args: SegCompassGRPOConfig | None, model: SegCompassForReasoningSegmentation,
                    peft_config=None) -> SegCompassGRPOConfig:
    """The trainer's config (default ``SegCompassGRPOConfig(output_dir="segcompass-grpo")``), with what the trainer
    does not support rejected: another config type, ``cast_lm_head_to_fp32`` with ``beta != 0``, a backbone that is
    already a ``PeftModel`` or ``sync_ref_model`` together with ``peft_config``, vLLM / continuous batching.

    Raises:
        ValueError: naming the setting and the fix.
    """
    if args is None:
        args = SegCompassGRPOConfig(output_dir="segcompass-grpo")
    if not isinstance(args, SegCompassGRPOConfig):
        raise ValueError(
            f"`args` must be a SegCompassGRPOConfig, got {type(args).__name__}; it carries the loss weights and "
            "learning-rate multipliers (`SegCompassGRPOConfig(**your_grpo_config.to_dict())`)."
        )
    if args.cast_lm_head_to_fp32 and args.beta != 0.0:
        raise ValueError(
            "`cast_lm_head_to_fp32=True` with beta != 0 is not supported by SegCompassGRPOTrainer (its reference "
            "model is a copy of the backbone); set cast_lm_head_to_fp32=False."
        )
    if peft_config is not None:
        if is_peft_model(model.backbone):
            raise ValueError(
                "The backbone is already a PeftModel; pass a plain SegCompass model together with `peft_config`."
            )
        if args.sync_ref_model:
            raise ValueError(
                "`sync_ref_model=True` is not supported with `peft_config`: the reference policy is the backbone "
                "with the adapter disabled. Set sync_ref_model=False."
            )
    if args.use_vllm or getattr(args, "use_transformers_continuous_batching", False):
        raise ValueError("SegCompassGRPOTrainer supports transformers generation only; set use_vllm=False.")
    return args


def _image_token_ids(processor: SegCompassProcessor) -> list[int]:
    """Ids of the backbone's image placeholder tokens (never to be sampled)."""
    tokenizer = processor.tokenizer
    names = [processor.image_token, "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"]
    ids = []
    for name in names:
        token_id = tokenizer.convert_tokens_to_ids(name)
        if token_id is not None and token_id != tokenizer.unk_token_id and token_id not in ids:
            ids.append(int(token_id))
    return ids


def prepare_model_for_grpo(model: SegCompassForReasoningSegmentation, args: SegCompassGRPOConfig,
                           processing_class: SegCompassProcessor) -> None:
    """Freeze what the config freezes (the SAE always; SAM's image encoder, the backbone through the hook layer, and
    the slot-token embedding rows as configured) and suppress the slot and image tokens in generation
    (``args.generation_kwargs["suppress_tokens"]``, added to any given there)."""
    model.sae.requires_grad_(False)
    if args.freeze_vision_encoder:
        model.vision_encoder.requires_grad_(False)
    if args.freeze_backbone_through_hook_layer:
        freeze_backbone_through_hook_layer(model)
    if args.train_slot_token_embeddings:
        train_token_embedding_rows(model)
    # Slot tokens are teacher-forced after the answer, never sampled; image placeholders in a completion would
    # break the backbone's image-feature alignment.
    generation_kwargs = dict(args.generation_kwargs or {})
    suppressed = list(generation_kwargs.get("suppress_tokens") or [])
    never = list(model.config.slot_token_ids) + _image_token_ids(processing_class)
    suppressed += [t for t in never if t not in suppressed]
    generation_kwargs["suppress_tokens"] = suppressed
    args.generation_kwargs = generation_kwargs
