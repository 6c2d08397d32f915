"""Tiny processors for tests: re-exports of :mod:`segcompass.from_scratch` under their test names."""

from __future__ import annotations

from .from_scratch import (  # noqa: F401
    COMPLETION_WORDS,
    IMAGE_PAD,
    LLAVA_IMAGE_TOKEN,
    LLAVA_STYLE_CHAT_TEMPLATE,
    QWEN_STYLE_CHAT_TEMPLATE,
    VISION_END,
    VISION_START,
    build_llava_style_tokenizer,
    build_qwen_style_tokenizer,
)
from .from_scratch import small_processor as tiny_segcompass_processor  # noqa: F401
from .from_scratch import small_sam_image_processor as tiny_sam_image_processor  # noqa: F401
