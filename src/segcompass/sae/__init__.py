"""The Sparse Autoencoder (SAE): its own pretrained model, SAELens interop, and training."""

from .configuration_sae import SparseAutoencoderConfig
from .modeling_sae import PooledConcepts, SparseAutoencoder, SparseAutoencoderOutput, SparseFeatures

__all__ = ["PooledConcepts", "SparseAutoencoder", "SparseAutoencoderConfig", "SparseAutoencoderOutput", "SparseFeatures"]
