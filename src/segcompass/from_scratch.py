"""Build SegCompass parts from scratch, offline: word-level tokenizers with the chat templates and vision
placeholders of the two backbones, small processors, and a ``SegCompassConfig`` sized for a processor's tokenizer.

Real code, not test scaffolding: the tiny recipe (``segcompass train-tiny``), ``segcompass train --tiny`` and
:mod:`segcompass.testing` all build their random models through these functions; nothing is downloaded.

- Qwen2.5-VL style: ``<|vision_start|> <|image_pad|> <|vision_end|>`` specials, image parts rendered as
  ``<|vision_start|><|image_pad|><|vision_end|>`` (as the real Qwen2.5-VL chat template does), a
  ``Qwen2VLImageProcessorPil`` with 28-pixel patches (4 to 16 image tokens per image).
- LLaVA-1.5 style: an ``<image>`` special rendered once per image part, a 32-pixel ``CLIPImageProcessorPil`` with
  8-pixel patches (16 image tokens per image).

Both small processors come with a ``SamImageProcessorPil`` that resizes the longest side to 64 and pads to 64 x 64.
"""

from __future__ import annotations

from collections.abc import Iterable

from .answer_format import DEFAULT_PROMPT_TEMPLATE, DEFAULT_REF_TOKEN

__all__ = [
    "DEFAULT_WORDS",
    "LLAVA_STYLE_CHAT_TEMPLATE",
    "QWEN_STYLE_CHAT_TEMPLATE",
    "SIMPLE_CHAT_TEMPLATE",
    "build_llava_style_tokenizer",
    "build_qwen_style_tokenizer",
    "build_word_tokenizer",
    "config_for_processor",
    "save_random_checkpoint",
    "small_processor",
    "small_sam_image_processor",
]

# Chat-format special tokens shared by the tiny tokenizers (Qwen-style names).
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
UNK_TOKEN = "<unk>"
BASE_SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END, UNK_TOKEN)
DEFAULT_WORDS = tuple(
    "system user assistant you are a helpful the a an of to and is in on with shape shapes red green blue yellow "
    "circle square triangle left right top bottom closest largest smallest every not same colour as . , : ?".split()
)
SIMPLE_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|> {{ message['role'] }} "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    " <|im_end|> "
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


def build_word_tokenizer(
    words: Iterable[str] = DEFAULT_WORDS,
    special_tokens: Iterable[str] = (),
    chat_template: str | None = SIMPLE_CHAT_TEMPLATE,
):
    """A whitespace-split word-level fast tokenizer over ``words`` (plus chat and extra special tokens).

    Returns a ``PreTrainedTokenizerFast`` (pad ``<|endoftext|>``, eos ``<|im_end|>``, unk ``<unk>``) that saves
    and loads like any hub tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    extra = [t for t in special_tokens if t not in BASE_SPECIAL_TOKENS]
    vocab: dict[str, int] = {}
    for token in (*BASE_SPECIAL_TOKENS, *extra, *words):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins word tokens with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[IM_START, *extra],
        chat_template=chat_template,
    )
    return tokenizer


VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
LLAVA_IMAGE_TOKEN = "<image>"

QWEN_STYLE_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|> {{ message['role'] }} "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|> "
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    " <|im_end|> "
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)
"""A whitespace-friendly version of Qwen2.5-VL's chat template (image parts become the vision placeholder)."""

LLAVA_STYLE_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}"
    "{% else %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image> ' }}{% endfor %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}{{ part['text'] + ' ' }}{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT: ' }}{% endif %}"
)
"""A version of llava-1.5-hf's chat template (``USER: <image> {text} ASSISTANT:``) for word-level tokenizers."""

# Words of typical completions, so the tiny tokenizers decode them verbatim (the words of the default prompt template
# are added too, see ``_vocabulary``).
COMPLETION_WORDS = tuple("<think> </think> think mug plate sink cup left of it is".split())


def _vocabulary(words: Iterable[str]) -> list[str]:
    template = DEFAULT_PROMPT_TEMPLATE.replace("{instruction}", " ")
    template_words = [word for word in template.split() if word != DEFAULT_REF_TOKEN]  # stays a special token
    chat_words = ("USER:", "ASSISTANT:", "SYSTEM:")
    return list(dict.fromkeys([*DEFAULT_WORDS, *template_words, *chat_words, *COMPLETION_WORDS, *words]))


def build_qwen_style_tokenizer(words: Iterable[str] = ()):
    """A word-level tokenizer with Qwen2.5-VL's vision specials and :data:`QWEN_STYLE_CHAT_TEMPLATE`.

    The SegCompass special tokens are **not** added; use
    :func:`~segcompass.processing_segcompass.add_special_tokens_to_tokenizer`.
    """
    return build_word_tokenizer(
        _vocabulary(words),
        special_tokens=(VISION_START, VISION_END, IMAGE_PAD),
        chat_template=QWEN_STYLE_CHAT_TEMPLATE,
    )


def build_llava_style_tokenizer(words: Iterable[str] = ()):
    """A word-level tokenizer with LLaVA's ``<image>`` special and :data:`LLAVA_STYLE_CHAT_TEMPLATE`."""
    return build_word_tokenizer(
        _vocabulary(words), special_tokens=(LLAVA_IMAGE_TOKEN,), chat_template=LLAVA_STYLE_CHAT_TEMPLATE
    )


def small_sam_image_processor(size: int = 64):
    """``SamImageProcessorPil`` resizing the longest side to ``size`` and padding to ``size x size``."""
    from transformers import SamImageProcessorPil

    return SamImageProcessorPil(size={"longest_edge": size}, pad_size={"height": size, "width": size})


def small_processor(backbone_type: str = "qwen2_5_vl", num_slots: int = 3, sam_size: int = 64, **kwargs):
    """A complete small :class:`~segcompass.processing_segcompass.SegCompassProcessor` (special tokens added).

    ``backbone_type="qwen2_5_vl"``: ``Qwen2VLImageProcessorPil(min_pixels=56*56, max_pixels=112*112,
    patch_size=14, merge_size=2)``, so an image yields 4 to 16 image tokens.
    ``backbone_type="llava"``: ``CLIPImageProcessorPil`` at 32 x 32 with ``patch_size=8`` (16 image tokens).
    Extra keyword arguments go to the processor's constructor.
    """
    from transformers import CLIPImageProcessorPil, Qwen2VLImageProcessorPil

    from .processing_segcompass import SegCompassProcessor, add_special_tokens_to_tokenizer

    if backbone_type == "qwen2_5_vl":
        tokenizer = build_qwen_style_tokenizer()
        image_processor = Qwen2VLImageProcessorPil(
            min_pixels=28 * 28 * 4, max_pixels=56 * 56 * 4, patch_size=14, merge_size=2
        )
    elif backbone_type == "llava":
        tokenizer = build_llava_style_tokenizer()
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        kwargs.setdefault(
            "backbone_kwargs",
            {"patch_size": 8, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1},
        )
    else:
        raise ValueError(f"backbone_type must be 'qwen2_5_vl' or 'llava', got {backbone_type!r}.")
    add_special_tokens_to_tokenizer(tokenizer, num_slots)
    return SegCompassProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        sam_image_processor=small_sam_image_processor(sam_size),
        backbone_type=backbone_type,
        num_slots=num_slots,
        **kwargs,
    )


def config_for_processor(processor, **overrides):
    """The tiny preset matching ``processor``'s tokenizer: vocabulary size, image and special-token ids."""
    from .configuration_segcompass import SegCompassConfig

    tokenizer = processor.tokenizer
    token_id = tokenizer.convert_tokens_to_ids
    preset = "tiny" if processor.backbone_type == "qwen2_5_vl" else "tiny-llava"
    config = SegCompassConfig.from_preset(
        preset, num_slots=processor.num_slots, ref_token_id=processor.ref_token_id,
        slot_token_ids=list(processor.slot_token_ids), **overrides,
    )
    backbone = config.backbone_config
    text = backbone.get_text_config()
    text.vocab_size = len(tokenizer)
    text.pad_token_id, text.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    if processor.backbone_type == "qwen2_5_vl":
        backbone.image_token_id = token_id("<|image_pad|>")
        backbone.vision_start_token_id = token_id("<|vision_start|>")
        backbone.vision_end_token_id = token_id("<|vision_end|>")
        backbone.video_token_id = token_id("<|image_pad|>")
    else:
        backbone.image_token_index = token_id("<image>")
    return config


def save_random_checkpoint(directory, backbone_type: str = "qwen2_5_vl", num_slots: int = 3, seed: int = 0,
                           **config_overrides):
    """Write a complete small random SegCompass checkpoint (model + processor + tokenizer) into ``directory``.

    Loads offline with ``AutoModel`` / ``AutoProcessor`` / ``pipeline("reasoning-segmentation", model=directory)``
    after ``import segcompass`` (what ``segcompass train --tiny`` starts from). Returns ``(model, processor)``.
    """
    import torch

    from .modeling_segcompass import SegCompassForReasoningSegmentation
    from .utils.io import save_pretrained_atomic

    processor = small_processor(backbone_type=backbone_type, num_slots=num_slots)
    config = config_for_processor(processor, **config_overrides)
    torch.manual_seed(seed)
    model = SegCompassForReasoningSegmentation(config).eval()
    save_pretrained_atomic(model, directory)
    save_pretrained_atomic(processor, directory)
    return model, processor
