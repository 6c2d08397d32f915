"""SegCompass: interpretable reasoning segmentation on the Hugging Face stack.

Importing the package registers the SegCompass model types with transformers' Auto classes (and the
``reasoning-segmentation`` pipeline task once it exists), so ``AutoModel.from_pretrained(dir)`` works without
``trust_remote_code``.
"""

__version__ = "0.1.0.dev0"

from . import metrics  # noqa: E402  (segcompass.metrics.CIOU etc.; does not import evaluate)
from ._registration import register as _register  # noqa: E402
from .configuration_segcompass import SegCompassConfig  # noqa: E402
from .pipelines import ReasoningSegmentationPipeline  # noqa: E402
from .processing_segcompass import SegCompassProcessor  # noqa: E402
from .modeling_segcompass import (  # noqa: E402
    SegCompassForReasoningSegmentation,
    SegCompassOutput,
    SegCompassSegmentation,
    SegCompassSegmentationOutput,
)
from .sae import (  # noqa: E402
    PooledConcepts,
    SparseAutoencoder,
    SparseAutoencoderConfig,
    SparseAutoencoderOutput,
    SparseFeatures,
)

_register()

__all__ = [
    "PooledConcepts",
    "ReasoningSegmentationPipeline",
    "SegCompassConfig",
    "SegCompassProcessor",
    "SegCompassForReasoningSegmentation",
    "SegCompassOutput",
    "SegCompassSegmentation",
    "SegCompassSegmentationOutput",
    "SparseAutoencoder",
    "SparseAutoencoderConfig",
    "SparseAutoencoderOutput",
    "SparseFeatures",
    "__version__",
]
