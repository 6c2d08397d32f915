"""The backbone side of the processor: each backbone's own processor, its special tokens, and loading them.

- :class:`ImageOnlyQwen2_5_VLProcessor` (Qwen2.5-VL without the video processor, which needs torchvision) and
  ``LlavaProcessor`` with :data:`LLAVA_DEFAULT_BACKBONE_KWARGS` (:func:`build_backbone_processor`);
- :func:`add_special_tokens_to_tokenizer`: ``<REF_POS>`` and the K slot tokens as special tokens;
- rebuilding PIL image processors and chat templates from saved ``processor_config.json`` files.
"""

from __future__ import annotations

from typing import Any

from transformers import LlavaProcessor, ProcessorMixin, Qwen2_5_VLProcessor

from .answer_format import DEFAULT_NUM_SLOTS, DEFAULT_REF_TOKEN, DEFAULT_SLOT_TOKEN_TEMPLATE, slot_token_strings
from .utils.logging import get_logger

logger = get_logger(__name__)

__all__ = [
    "BACKBONE_TYPES",
    "LLAVA_DEFAULT_BACKBONE_KWARGS",
    "ImageOnlyQwen2_5_VLProcessor",
    "add_special_tokens_to_tokenizer",
    "build_backbone_processor",
    "check_sam_image_processor",
    "load_backbone_tokenizer_and_image_processor",
    "pil_image_processor_from_dict",
    "processor_chat_template",
    "resolve_backbone_kwargs",
]

BACKBONE_TYPES = ("qwen2_5_vl", "llava")

LLAVA_DEFAULT_BACKBONE_KWARGS = {
    "patch_size": 14,
    "vision_feature_select_strategy": "default",
    "num_additional_image_tokens": 1,
    "image_token": "<image>",
}
"""``LlavaProcessor`` arguments of llava-1.5 (CLIP ViT-L/14 at 336 px, CLS dropped: 576 image tokens)."""

_BACKBONE_KWARG_NAMES = {"qwen2_5_vl": (), "llava": tuple(LLAVA_DEFAULT_BACKBONE_KWARGS)}


def add_special_tokens_to_tokenizer(
    tokenizer,
    num_slots: int = DEFAULT_NUM_SLOTS,
    ref_token: str = DEFAULT_REF_TOKEN,
    slot_token_template: str = DEFAULT_SLOT_TOKEN_TEMPLATE,
) -> int:
    """Add ``<REF_POS>`` and ``<SLOT_0> ... <SLOT_{K-1}>`` to ``tokenizer`` as extra special tokens (in place).

    Tokens already present are left alone, so the call is idempotent and ids never move; new tokens get consecutive
    ids at the end of the vocabulary, ``<REF_POS>`` first.

    Returns:
        ``int``: how many new ids were added. When it is > 0 the model's embedding matrix needs at least
        ``len(tokenizer)`` rows: grow it with ``model.resize_token_embeddings(len(tokenizer))`` when it is smaller
        (Qwen2.5-VL and llava-1.5-hf have spare padded rows, so theirs already fit; resizing them *down* to
        ``len(tokenizer)`` would drop rows). Either way the new rows hold no trained meaning yet.
    """
    wanted = [ref_token, *slot_token_strings(num_slots, slot_token_template)]
    # A token may already be an ordinary vocabulary entry; registering it as a special token keeps its id and makes
    # sure it is never split or merged with neighbouring text.
    to_register = [token for token in wanted if token not in tokenizer.added_tokens_encoder]
    if not to_register:
        return 0
    size_before = len(tokenizer)
    tokenizer.add_special_tokens({"extra_special_tokens": to_register}, replace_extra_special_tokens=False)
    added = len(tokenizer) - size_before
    logger.info(
        f"Registered {', '.join(to_register)} as special tokens ({added} new ids); the model's embedding matrix needs "
        f"at least {len(tokenizer)} rows."
    )
    return added


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without the video processor (which needs torchvision); images and text only.

    Its attributes are ``["image_processor", "tokenizer"]`` (derived from this ``__init__`` signature), so it saves and
    loads without a video processor.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )
        # Image-only: no video placeholder exists, so none is counted or typed (a tokenizer without the video token
        # would otherwise map it to the unknown-token id and mark every unknown word as video).
        self.video_token = None
        self.video_token_id = None


def load_backbone_tokenizer_and_image_processor(pretrained_model_name_or_path, num_slots: int = DEFAULT_NUM_SLOTS,
                                                ref_token: str = DEFAULT_REF_TOKEN,
                                                slot_token_template: str = DEFAULT_SLOT_TOKEN_TEMPLATE):
    """A stock backbone checkpoint's tokenizer (with the SegCompass special tokens added) and PIL image processor.

    Logs a warning with the new vocabulary size when ids were added (the model's embedding matrix needs at least
    that many rows). Returns ``(tokenizer, image_processor)``.
    """
    from transformers import AutoImageProcessor, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path)
    image_processor = AutoImageProcessor.from_pretrained(pretrained_model_name_or_path, backend="pil")
    added = add_special_tokens_to_tokenizer(tokenizer, num_slots, ref_token, slot_token_template)
    if added:
        logger.warning(
            f"Added {added} SegCompass special tokens to the tokenizer of {pretrained_model_name_or_path}; the "
            f"backbone needs at least {len(tokenizer)} embedding rows (`model.resize_token_embeddings("
            f"{len(tokenizer)})` if it has fewer)."
        )
    return tokenizer, image_processor


def build_backbone_processor(backbone_type: str, image_processor, tokenizer, chat_template: str | None,
                             backbone_kwargs: dict[str, Any]) -> ProcessorMixin:
    """The backbone's own processor over ``image_processor`` and ``tokenizer``: ``ImageOnlyQwen2_5_VLProcessor`` or
    ``LlavaProcessor`` (with ``backbone_kwargs``)."""
    if backbone_type == "qwen2_5_vl":
        return ImageOnlyQwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                            chat_template=chat_template)
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template,
                          **backbone_kwargs)


def resolve_backbone_kwargs(backbone_type: str, backbone_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    given = dict(backbone_kwargs or {})
    allowed = _BACKBONE_KWARG_NAMES[backbone_type]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(
            f"Unknown backbone_kwargs {unknown} for backbone_type={backbone_type!r}; allowed: "
            f"{list(allowed) or 'none'}."
        )
    return {**LLAVA_DEFAULT_BACKBONE_KWARGS, **given} if backbone_type == "llava" else given


def check_sam_image_processor(processor) -> None:
    pad = getattr(processor, "pad_size", None)
    if not getattr(processor, "do_pad", False) or not pad or not pad["height"] or not pad["width"]:
        raise ValueError(
            "sam_image_processor must pad to a fixed square frame (do_pad=True, pad_size={'height': S, 'width': S}); "
            "SAM's image encoder takes S x S inputs."
        )


def pil_image_processor_from_dict(config: dict[str, Any]):
    import transformers

    config = dict(config)
    name = config.pop("image_processor_type", None)
    if not name:
        raise ValueError(f"An image processor entry of processor_config.json has no 'image_processor_type': {config}.")
    candidates = [name] if name.endswith("Pil") else [f"{name}Pil", name]
    for candidate in candidates:
        cls = getattr(transformers, candidate, None)
        if cls is not None:
            return cls(**config)
    return ProcessorMixin.get_possibly_dynamic_module(name)(**config)


def processor_chat_template(pretrained_model_name_or_path) -> str | None:
    """The chat template stored with a stock processor (chat_template.jinja / chat_template.json), if any."""
    try:
        processor_dict, _ = ProcessorMixin.get_processor_dict(pretrained_model_name_or_path)
    except (OSError, ValueError):
        return None
    template = processor_dict.get("chat_template")
    return template if isinstance(template, str) else None
