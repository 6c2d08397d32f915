"""What :class:`~segcompass.training.grpo_trainer.SegCompassGRPOTrainer` checks and prepares before TRL's
``GRPOTrainer.__init__``: the model and its processor, the config's supported features, the reward's keep threshold
(the model's ``config.confidence_threshold`` unless the config sets one), the precision of the trainable parameters
(float32 master weights), the model's frozen parts and generation settings, and the backbone's image pixel range.
(The datasets are checked by :func:`.grpo_data.validate_grpo_dataset`.)

Imports no ``trl`` itself (:class:`SegCompassGRPOConfig` does).
"""

from __future__ import annotations

import dataclasses
import os

from accelerate.utils import is_peft_model

from ..modeling_segcompass import SegCompassForReasoningSegmentation
from ..processing_segcompass import SegCompassProcessor
from ..utils.logging import get_logger
from .freezing import freeze_backbone_through_hook_layer, train_token_embedding_rows
from .grpo_config import SegCompassGRPOConfig
from .sft import check_trainable_precision

logger = get_logger(__name__)

__all__ = [
    "apply_pixel_limits",
    "check_grpo_args",
    "grpo_trained_parameters",
    "load_model_and_processor",
    "prepare_model_for_grpo",
]

# (component of SegCompassForReasoningSegmentation, config field of its lr multiplier), as in grpo_optim.COMPONENTS
_COMPONENT_MULTIPLIERS = (
    ("backbone", "backbone_lr_multiplier"),
    ("concept_interface", "codebook_lr_multiplier"),
    ("slot_mapper", "slot_mapper_lr_multiplier"),
    ("mask_decoder", "mask_decoder_lr_multiplier"),
)


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
    already a ``PeftModel`` or ``sync_ref_model`` together with ``peft_config``, vLLM / continuous batching, and
    trainable parameters in bfloat16 / float16 (:func:`grpo_trained_parameters`; AdamW on 16-bit weights loses the
    small updates: load the model in float32 and keep ``bf16=True`` for bf16 compute with fp32 master weights;
    skipped under DeepSpeed / FSDP, which keep their own fp32 master weights).

    Fills in ``args.mask_confidence_threshold`` (in place) from ``model.config.confidence_threshold`` when it is None,
    so the default mask reward and the logged rollout IoU keep the slots inference and evaluation keep.

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
    if not (args.deepspeed or args.fsdp):
        check_trainable_precision(
            grpo_trained_parameters(model, args, peft_config), "SegCompassGRPOTrainer",
            "Load the model in float32 (`SegCompassForReasoningSegmentation.from_pretrained(path, "
            "dtype=torch.float32)` or `model.float()`) and keep `bf16=True` in SegCompassGRPOConfig: bf16 compute "
            "under autocast with fp32 master weights (the paper's setting). `segcompass train` loads the checkpoint "
            "in its saved dtype: save it in float32 (`segcompass build --dtype float32`). Or train LoRA adapters "
            "(`peft_config`), which PEFT keeps in float32.",
        )
    if args.mask_confidence_threshold is None:
        args.mask_confidence_threshold = float(model.config.confidence_threshold)
    return args


def grpo_trained_parameters(model: SegCompassForReasoningSegmentation, args: SegCompassGRPOConfig, peft_config=None):
    """``(name, parameter)`` of what the GRPO trainer will train, known before it freezes anything: parameters that
    require gradients now, without the SAE (always frozen), SAM's image encoder when ``freeze_vision_encoder``, a
    component whose lr multiplier is 0, and the backbone's own weights when ``peft_config`` is given (PEFT freezes
    them and trains its adapters). ``freeze_backbone_through_hook_layer`` is not anticipated: the layers above the
    hook train anyway."""
    skipped = ["sae."]
    if args.freeze_vision_encoder:
        skipped.append("vision_encoder.")
    skipped += [f"{component}." for component, field in _COMPONENT_MULTIPLIERS if getattr(args, field) == 0]
    if peft_config is not None:
        skipped.append("backbone.")
    return [(name, param) for name, param in model.named_parameters()
            if param.requires_grad and not name.startswith(tuple(skipped))]


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


def apply_pixel_limits(processor: SegCompassProcessor, min_pixels: int | None, max_pixels: int | None
                       ) -> tuple[int, int] | None:
    """Narrow the Qwen2.5-VL image processor's pixel range (``image_processor.size``: ``shortest_edge`` /
    ``longest_edge``, transformers 5's form of ``min_pixels`` / ``max_pixels``) to ``[min_pixels, max_pixels]``,
    in place: ``longest_edge = min(own, max_pixels)``, ``shortest_edge = max(own, min_pixels)``; None leaves that
    side. A processor already inside the range is unchanged (e.g. a fixed size). The processor saved with the
    trained model carries the narrowed range, so inference sees images as training did.

    Returns:
        the processor's ``(min_pixels, max_pixels)`` afterwards, or None for a backbone without a pixel range
        (LLaVA: nothing is changed).

    Raises:
        ValueError: the processor's range and the requested one do not overlap, naming both and the fix.
    """
    if processor.backbone_type != "qwen2_5_vl":
        return None
    image_processor = processor.image_processor
    size = getattr(image_processor, "size", None)
    try:
        low, high = int(size["shortest_edge"]), int(size["longest_edge"])
    except (TypeError, KeyError, ValueError):
        raise ValueError(
            f"The Qwen2.5-VL image processor ({type(image_processor).__name__}) has no pixel range "
            f"(size={size!r}); expected size with 'shortest_edge' (min pixels) and 'longest_edge' (max pixels). "
            "Set min_pixels=None and max_pixels=None to leave it alone."
        ) from None
    new_low = low if min_pixels is None else max(low, int(min_pixels))
    new_high = high if max_pixels is None else min(high, int(max_pixels))
    if new_low > new_high:
        raise ValueError(
            f"The processor's image pixel range [{low}, {high}] does not overlap SegCompassGRPOConfig's "
            f"[min_pixels, max_pixels] = [{min_pixels}, {max_pixels}]. Pass min_pixels=None / max_pixels=None to "
            "keep the processor's range, or a range that overlaps it."
        )
    if (new_low, new_high) != (low, high):
        if dataclasses.is_dataclass(size):
            image_processor.size = dataclasses.replace(size, shortest_edge=new_low, longest_edge=new_high)
        else:
            image_processor.size = {**dict(size), "shortest_edge": new_low, "longest_edge": new_high}
        logger.info("Qwen2.5-VL image pixel range narrowed from [%d, %d] to [%d, %d] (min_pixels / max_pixels).",
                    low, high, new_low, new_high)
    return new_low, new_high


def prepare_model_for_grpo(model: SegCompassForReasoningSegmentation, args: SegCompassGRPOConfig,
                           processing_class: SegCompassProcessor) -> None:
    """Freeze what the config freezes (the SAE always; SAM's image encoder, the backbone through the hook layer, and
    the slot-token embedding rows as configured), suppress the slot, image and padding tokens in generation
    (``args.generation_kwargs["suppress_tokens"]``, added to any given there) and narrow the Qwen2.5-VL processor's
    image pixel range to ``args.min_pixels`` / ``args.max_pixels`` (:func:`apply_pixel_limits`)."""
    apply_pixel_limits(processing_class, args.min_pixels, args.max_pixels)
    model.sae.requires_grad_(False)
    if args.freeze_vision_encoder:
        model.vision_encoder.requires_grad_(False)
    if args.freeze_backbone_through_hook_layer:
        freeze_backbone_through_hook_layer(model)
    if args.train_slot_token_embeddings:
        train_token_embedding_rows(model)
    # Slot tokens are teacher-forced after the answer, never sampled; image placeholders in a completion would
    # break the backbone's image-feature alignment; a padding token inside an answer would end its scoring sequence
    # early (the answer is cut there) while the policy still scores what follows.
    generation_kwargs = dict(args.generation_kwargs or {})
    suppressed = list(generation_kwargs.get("suppress_tokens") or [])
    never = list(model.config.slot_token_ids) + _image_token_ids(processing_class)
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    pad, eos = getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)
    if pad is not None and pad != eos:
        never.append(pad)
    suppressed += [t for t in never if t not in suppressed]
    generation_kwargs["suppress_tokens"] = suppressed
    args.generation_kwargs = generation_kwargs
