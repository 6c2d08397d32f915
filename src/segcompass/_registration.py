"""Registration with transformers' Auto classes, run once at ``import segcompass``.

Registration is per process and is not persisted, so it must happen at package import (dependency notes §3).
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoProcessor

from .configuration_segcompass import SegCompassConfig
from .modeling_segcompass import SegCompassForReasoningSegmentation
from .pipelines import register_pipeline
from .processing_segcompass import SegCompassProcessor
from .sae import SparseAutoencoder, SparseAutoencoderConfig


def register() -> None:
    AutoConfig.register(SparseAutoencoderConfig.model_type, SparseAutoencoderConfig, exist_ok=True)
    AutoModel.register(SparseAutoencoderConfig, SparseAutoencoder, exist_ok=True)
    AutoConfig.register(SegCompassConfig.model_type, SegCompassConfig, exist_ok=True)
    AutoModel.register(SegCompassConfig, SegCompassForReasoningSegmentation, exist_ok=True)
    AutoProcessor.register(SegCompassConfig, SegCompassProcessor, exist_ok=True)
    register_pipeline()
