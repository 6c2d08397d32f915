"""Output containers of :class:`~segcompass.sae.modeling_sae.SparseAutoencoder` (re-exported there).

Dimension glossary: ``T`` tokens, ``B`` batch, ``d_in`` hooked hidden size, ``d_sae`` dictionary size, ``N``
concepts kept per sample, ``nnz`` number of active (token, feature) pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

__all__ = ["PooledConcepts", "SparseAutoencoderOutput", "SparseFeatures"]


@dataclass
class SparseAutoencoderOutput(ModelOutput):
    """Output of [`SparseAutoencoder.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`): ``mse_loss + l1_coefficient * l1_loss``.
        feature_acts (`torch.FloatTensor` of shape `(..., d_sae)`): sparse codes h(z).
        reconstruction (`torch.FloatTensor` of shape `(..., d_in)`): ẑ = D(h(z)).
        mse_loss (`torch.FloatTensor` of shape `()`): mean over (valid) tokens of ‖z − ẑ‖².
        l1_loss (`torch.FloatTensor` of shape `()`): mean over (valid) tokens of ‖h(z)‖₁.
        l0 (`torch.FloatTensor` of shape `()`): mean number of active features per (valid) token.
    """

    loss: torch.FloatTensor | None = None
    feature_acts: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    mse_loss: torch.FloatTensor | None = None
    l1_loss: torch.FloatTensor | None = None
    l0: torch.FloatTensor | None = None


@dataclass
class SparseFeatures:
    """Active SAE features of ``T`` tokens in compressed-sparse-row form.

    Token ``t``'s active features are ``indices[offsets[t]:offsets[t + 1]]`` with activations
    ``values[offsets[t]:offsets[t + 1]]`` (ascending feature index).

    Args:
        indices (`torch.LongTensor` of shape `(nnz,)`), values (`torch.FloatTensor` of shape `(nnz,)`),
        offsets (`torch.LongTensor` of shape `(T + 1,)`), shape: leading shape of the input plus ``d_sae``.
    """

    indices: torch.LongTensor
    values: torch.FloatTensor
    offsets: torch.LongTensor
    shape: tuple[int, ...]

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def token(self, t: int) -> tuple[torch.LongTensor, torch.FloatTensor]:
        """(indices, values) of token ``t`` in flattened token order."""
        start, end = int(self.offsets[t]), int(self.offsets[t + 1])
        return self.indices[start:end], self.values[start:end]

    def to_dense(self) -> torch.FloatTensor:
        """The dense ``(..., d_sae)`` tensor (for tests and small inputs only)."""
        num_tokens, d_sae = len(self), self.shape[-1]
        dense = self.values.new_zeros(num_tokens, d_sae)
        rows = torch.repeat_interleave(torch.arange(num_tokens, device=self.offsets.device), self.offsets.diff())
        dense[rows, self.indices] = self.values
        return dense.reshape(self.shape)


@dataclass
class PooledConcepts:
    """Top-N SAE concepts of each sample, pooled over its valid tokens.

    Args:
        indices (`torch.LongTensor` of shape `(B, N)`): feature indices, by decreasing pooled activation (minus the
            ranking baseline when one is given).
        values (`torch.FloatTensor` of shape `(B, N)`): pooled activations (differentiable w.r.t. the input
            and the encoder weights); 0 where ``mask`` is False.
        mask (`torch.BoolTensor` of shape `(B, N)`): False for padding entries when fewer than N features
            are active in a sample.
        token_activations (`torch.FloatTensor` of shape `(B, T, N)`): each kept feature's activation at
            every token (0 at padding), i.e. which tokens a concept came from.
        pooled (`torch.FloatTensor` of shape `(B, d_sae)`, *optional*): every feature's pooled activation from the
            selection pass (no gradient; used to calibrate a ranking baseline).
        active (`torch.BoolTensor` of shape `(B, T, N)`, *optional*): where each kept feature is active, as the
            selection pass decided.
    """

    indices: torch.LongTensor
    values: torch.FloatTensor
    mask: torch.BoolTensor
    token_activations: torch.FloatTensor
    pooled: torch.FloatTensor | None = None
    active: torch.BoolTensor | None = None
