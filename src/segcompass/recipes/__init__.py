"""End-to-end training recipes that build a complete SegCompass checkpoint with the project's own pieces."""

from .tiny import (
    DEFAULT_MODEL_DIR,
    TinyRecipeConfig,
    build_tiny_model_and_processor,
    evaluate_tiny,
    train_tiny,
)

__all__ = [
    "DEFAULT_MODEL_DIR",
    "TinyRecipeConfig",
    "build_tiny_model_and_processor",
    "evaluate_tiny",
    "train_tiny",
]
