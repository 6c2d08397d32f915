"""SegCompass: interpretable reasoning segmentation on the Hugging Face stack.

``import segcompass`` is light: public names are imported on first use (``segcompass.SegCompassGRPOTrainer`` imports
TRL only when asked for), and the SegCompass model types are registered with transformers' Auto classes (and the
``reasoning-segmentation`` pipeline task) as soon as transformers is imported — right away when it already is, else
the moment it is — so ``AutoModel.from_pretrained(dir)`` and ``pipeline("reasoning-segmentation")`` work without
``trust_remote_code`` while ``segcompass --help`` never pays for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._registration import register_when_transformers_is_imported

__version__ = "0.1.0.dev0"

# public name -> module it lives in (imported on first access)
_LAZY = {
    "SegCompassConfig": "configuration_segcompass",
    "SegCompassForReasoningSegmentation": "modeling_segcompass",
    "SegCompassOutput": "modeling_segcompass",
    "SegCompassSegmentation": "modeling_segcompass",
    "SegCompassSegmentationOutput": "modeling_segcompass",
    "SegCompassProcessor": "processing_segcompass",
    "ReasoningSegmentationPipeline": "pipelines",
    "PooledConcepts": "sae",
    "SparseAutoencoder": "sae",
    "SparseAutoencoderConfig": "sae",
    "SparseAutoencoderOutput": "sae",
    "SparseFeatures": "sae",
    "SAETrainer": "sae.training",
    "SAETrainingArguments": "sae.training",
    "SegCompassGRPOConfig": "training.grpo_config",
    "SegCompassGRPOTrainer": "training.grpo_trainer",
    "prepare_grpo_dataset": "training.grpo_data",
    "supervised_warmup": "training.sft",
    "available_datasets": "data",
    "load_segmentation_dataset": "data",
    "register_dataset": "data",
    "evaluate_model": "evaluation",
    "rescore": "evaluation",
    "default_model_path": "presets",
}
_SUBMODULES = ("metrics", "data", "evaluation", "interpret", "training", "sae", "presets", "answer_format",
               "sam_frame", "prediction")

__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # next access is a plain attribute
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'segcompass' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})


if TYPE_CHECKING:  # for type checkers and IDEs: the eager form of the lazy names above
    from .configuration_segcompass import SegCompassConfig  # noqa: F401
    from .data import available_datasets, load_segmentation_dataset, register_dataset  # noqa: F401
    from .evaluation import evaluate_model, rescore  # noqa: F401
    from .modeling_segcompass import (  # noqa: F401
        SegCompassForReasoningSegmentation,
        SegCompassOutput,
        SegCompassSegmentation,
        SegCompassSegmentationOutput,
    )
    from .pipelines import ReasoningSegmentationPipeline  # noqa: F401
    from .presets import default_model_path  # noqa: F401
    from .processing_segcompass import SegCompassProcessor  # noqa: F401
    from .sae import (  # noqa: F401
        PooledConcepts,
        SparseAutoencoder,
        SparseAutoencoderConfig,
        SparseAutoencoderOutput,
        SparseFeatures,
    )
    from .sae.training import SAETrainer, SAETrainingArguments  # noqa: F401
    from .training.grpo_config import SegCompassGRPOConfig  # noqa: F401
    from .training.grpo_data import prepare_grpo_dataset  # noqa: F401
    from .training.grpo_trainer import SegCompassGRPOTrainer  # noqa: F401
    from .training.sft import supervised_warmup  # noqa: F401

register_when_transformers_is_imported()
