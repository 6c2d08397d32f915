"""Sparse concept interface: query codebook + K slot queries + Transformer encoder blocks (paper §3.2, Fig. 3).

Concept tokens are ``h_j · C[j]`` for the kept SAE features ``(j, h_j)`` — a sparse gather from the codebook
``C ∈ R^{d_sae × d_c}``, never a dense (T × d_sae) @ (d_sae × d_c) product. K learned slot queries and the N
concept tokens pass through pre-norm encoder blocks with self-attention; the slots' outputs are the concept
representations r_k, and the last block's slot → concept attention weights are the provenance (slot k drew on
feature j with weight w).
"""

from __future__ import annotations

import torch
from torch import nn


class ConceptEncoderLayer(nn.Module):
    """Pre-norm Transformer encoder block that also returns head-averaged attention weights."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x (`torch.FloatTensor` of shape `(B, L, dim)`).
            key_padding_mask (`torch.BoolTensor` of shape `(B, L)`): True where a token must be ignored.

        Returns:
            `(B, L, dim)` outputs and `(B, L, L)` attention weights averaged over heads.
        """
        h = self.attn_norm(x)
        attended, weights = self.attn(h, h, h, key_padding_mask=key_padding_mask, need_weights=True,
                                      average_attn_weights=True)
        x = x + attended
        return x + self.ffn(self.ffn_norm(x)), weights


class SparseConceptInterface(nn.Module):
    """Turn the kept SAE concepts of each sample into K concept representations.

    Args:
        d_sae (`int`): SAE dictionary size (rows of the codebook).
        codebook_dim (`int`): d_c.
        num_slots (`int`): K.
        num_layers, num_heads, ffn_dim (`int`): encoder blocks.
    """

    def __init__(self, d_sae: int, codebook_dim: int, num_slots: int, num_layers: int, num_heads: int,
                 ffn_dim: int):
        super().__init__()
        self.codebook = nn.Embedding(d_sae, codebook_dim)  # C: (d_sae, d_c)
        self.slot_queries = nn.Parameter(torch.zeros(num_slots, codebook_dim))  # (K, d_c)
        self.layers = nn.ModuleList(
            ConceptEncoderLayer(codebook_dim, num_heads, ffn_dim) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(codebook_dim)
        self.num_slots = num_slots

    def concept_tokens(self, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """h_j · C[j] for every kept feature: (B, N), (B, N) -> (B, N, d_c) (sparse row gather)."""
        return values.unsqueeze(-1).to(self.codebook.weight.dtype) * self.codebook(indices)

    def forward(
        self, indices: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            indices (`torch.LongTensor` of shape `(B, N)`): SAE feature indices j.
            values (`torch.FloatTensor` of shape `(B, N)`): pooled activations h_j.
            mask (`torch.BoolTensor` of shape `(B, N)`): False for padding entries.

        Returns:
            concept_slots (`(B, K, d_c)`): r_k; provenance (`(B, K, N)`): last block's attention of each slot over
            the concept tokens (0 on padding).
        """
        batch, num_slots = indices.shape[0], self.num_slots
        tokens = self.concept_tokens(indices, values)  # (B, N, d_c)
        slots = self.slot_queries.unsqueeze(0).expand(batch, -1, -1)  # (B, K, d_c)
        x = torch.cat([slots, tokens], dim=1)  # (B, K + N, d_c)
        padding = torch.cat([mask.new_zeros(batch, num_slots), ~mask.bool()], dim=1)  # (B, K + N)
        weights = None
        for layer in self.layers:
            x, weights = layer(x, padding)
        provenance = weights[:, :num_slots, num_slots:]  # (B, K, N)
        return self.norm(x[:, :num_slots]), provenance
