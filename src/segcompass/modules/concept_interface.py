"""Sparse concept interface: query codebook + K slot queries + Transformer encoder blocks (paper §3.2, Fig. 3).

Concept tokens are built from the kept SAE features ``(j, h_j)`` by a sparse gather from the codebook
``C ∈ R^{d_sae × d_c}``, never a dense (T × d_sae) @ (d_sae × d_c) product. K learned slot queries and the N
concept tokens pass through pre-norm encoder blocks with self-attention; the slots' outputs are the concept
representations r_k, and the last block's slot → concept attention weights are the provenance (slot k drew on
feature j with weight w).

How h_j enters a concept token (``value_embedding``):

- ``"scale"``: ``h_j · C[j]``, the paper's literal form. The encoder blocks are pre-norm and
  LayerNorm(h_j · C[j]) = LayerNorm(C[j]) for h_j > 0, so the activation values never reach r_k (measured: setting
  every h_j to 1 changes r_k by 2e-6 relative). Kept for converted checkpoints.
- ``"log"`` (default): ``C[j] + MLP([log(1 + h_j), log(1 + d_j)])``: an additive value embedding that survives
  normalisation, so how strongly a concept fired matters, not only which concepts fired. ``d_j`` is how many tokens
  before the end of the sequence the feature last fired (0 when not given): a reasoning chain ends with its answer,
  so recency tells the answer's concepts from the candidates named on the way.

Which features are kept (``baseline``): the SAE ranks features by pooled activation; with a per-feature baseline
(the running mean of each feature's pooled activation over training batches, a buffer of this module) it ranks by
pooled activation *minus* the baseline, so features that fire the same way in every sample (the prompt template's)
no longer crowd out the ones that tell samples apart.
"""

from __future__ import annotations

import torch
from torch import nn

VALUE_EMBEDDINGS = ("scale", "log")
"""How a concept token carries its activation: ``"scale"`` h_j · C[j] (the paper), ``"log"`` C[j] + MLP([log(1 + h_j),
log(1 + d_j)]) (see ``SegCompassConfig.concept_value_embedding``)."""


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
        value_embedding (`str`): ``"log"`` or ``"scale"`` (module docstring).
        baseline_momentum (`float`): weight of a new batch in the running per-feature baseline (after the first
            ``1 / baseline_momentum`` batches, which are averaged uniformly).
    """

    def __init__(self, d_sae: int, codebook_dim: int, num_slots: int, num_layers: int, num_heads: int,
                 ffn_dim: int, value_embedding: str = "log", baseline_momentum: float = 0.01):
        super().__init__()
        if value_embedding not in VALUE_EMBEDDINGS:
            raise ValueError(f"`value_embedding` must be one of {list(VALUE_EMBEDDINGS)}, got {value_embedding!r}.")
        self.codebook = nn.Embedding(d_sae, codebook_dim)  # C: (d_sae, d_c)
        self.value_embedding = value_embedding
        if value_embedding == "log":
            self.value_proj = nn.Sequential(nn.Linear(2, codebook_dim), nn.GELU(), nn.Linear(codebook_dim, codebook_dim))
        self.slot_queries = nn.Parameter(torch.zeros(num_slots, codebook_dim))  # (K, d_c)
        self.layers = nn.ModuleList(
            ConceptEncoderLayer(codebook_dim, num_heads, ffn_dim) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(codebook_dim)
        self.num_slots = num_slots
        self.baseline_momentum = baseline_momentum
        self.register_buffer("baseline", torch.zeros(d_sae))  # (d_sae,) running mean of pooled activations
        self.register_buffer("baseline_batches", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update_baseline(self, pooled: torch.Tensor) -> None:
        """Fold a batch of pooled activations (B, d_sae) into the running per-feature baseline.

        Under ``torch.distributed`` the batch mean is averaged over the ranks first (as synchronised batch norm
        does), so every rank keeps the same baseline and selects the same concepts; every rank must then call this in
        the same order (every training-mode forward does)."""
        import torch.distributed as dist

        if pooled.shape[0] == 0:
            return
        batch_mean = pooled.float().mean(0).to(self.baseline)  # (d_sae,)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(batch_mean)
            batch_mean /= dist.get_world_size()
        momentum = max(self.baseline_momentum, 1.0 / float(self.baseline_batches + 1))
        self.baseline.lerp_(batch_mean, momentum)
        self.baseline_batches += 1

    def concept_tokens(self, indices: torch.Tensor, values: torch.Tensor,
                       distances: torch.Tensor | None = None) -> torch.Tensor:
        """Concept tokens of the kept features (sparse row gather): (B, N), (B, N)[, (B, N)] -> (B, N, d_c)."""
        rows = self.codebook(indices)  # (B, N, d_c)
        values = values.unsqueeze(-1).to(rows.dtype)  # (B, N, 1)
        if self.value_embedding == "scale":
            return values * rows
        if distances is None:
            distances = torch.zeros_like(values)
        else:
            distances = distances.unsqueeze(-1).to(rows.dtype)  # (B, N, 1)
        features = torch.cat([torch.log1p(values.clamp_min(0)), torch.log1p(distances.clamp_min(0))], -1)  # (B, N, 2)
        return rows + self.value_proj(features)

    def forward(
        self, indices: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, distances: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            indices (`torch.LongTensor` of shape `(B, N)`): SAE feature indices j.
            values (`torch.FloatTensor` of shape `(B, N)`): pooled activations h_j.
            mask (`torch.BoolTensor` of shape `(B, N)`): False for padding entries.
            distances (`torch.FloatTensor` of shape `(B, N)`, *optional*): tokens between each feature's last
                activation and the end of the sequence (``"log"`` value embedding only).

        Returns:
            concept_slots (`(B, K, d_c)`): r_k; provenance (`(B, K, N)`): last block's attention of each slot over
            the concept tokens (0 on padding).
        """
        batch, num_slots = indices.shape[0], self.num_slots
        tokens = self.concept_tokens(indices, values, distances)  # (B, N, d_c)
        slots = self.slot_queries.unsqueeze(0).expand(batch, -1, -1)  # (B, K, d_c)
        return self._encode(slots, tokens, mask)

    def forward_grouped(
        self, indices: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, distances: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each slot reads only its own concepts (``concept_grouping="answer_items"``,
        :mod:`segcompass.modules.answer_items`): slot query k and the N concept tokens of group k pass through the
        encoder blocks alone.

        Args:
            indices / values / mask / distances: `(B, K, N)`, as in :meth:`forward` per group.

        Returns:
            concept_slots (`(B, K, d_c)`); provenance (`(B, K, N)`): slot k's last-block attention over group k.
        """
        batch, num_slots, n = indices.shape
        if num_slots != self.num_slots:
            raise ValueError(f"Expected concepts grouped into K={self.num_slots} slots, got {num_slots} groups.")
        flat_distances = None if distances is None else distances.reshape(batch * num_slots, n)
        tokens = self.concept_tokens(indices.reshape(batch * num_slots, n), values.reshape(batch * num_slots, n),
                                     flat_distances)  # (B*K, N, d_c)
        slots = self.slot_queries.unsqueeze(0).expand(batch, -1, -1).reshape(batch * num_slots, 1, -1)  # (B*K, 1, d_c)
        concept_slots, provenance = self._encode(slots, tokens, mask.reshape(batch * num_slots, n))
        return concept_slots.view(batch, num_slots, -1), provenance.view(batch, num_slots, n)

    def _encode(self, slots: torch.Tensor, tokens: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder blocks over [slots (R, S, d_c) ; tokens (R, N, d_c)] -> (R, S, d_c) outputs, (R, S, N) attention."""
        rows, num_slots = slots.shape[:2]
        x = torch.cat([slots, tokens], dim=1)  # (R, S + N, d_c)
        padding = torch.cat([mask.new_zeros(rows, num_slots), ~mask.bool()], dim=1)  # (R, S + N)
        weights = None
        for layer in self.layers:
            x, weights = layer(x, padding)
        provenance = weights[:, :num_slots, num_slots:]  # (R, S, N)
        return self.norm(x[:, :num_slots]), provenance

def last_activation_distance(active: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Tokens between each kept feature's last activation and the sequence's last valid token.

    Args:
        active (`(B, T, N)` bool): where each kept feature is active (``PooledConcepts.active``: the selection's own
            decision).
        attention_mask (`(B, T)`): 1 for valid tokens (holes allowed: distances count valid tokens only).

    Returns:
        `(B, N)` float distances (0 for a feature that last fired on the final token; padding entries 0).
    """
    valid = attention_mask.bool()
    positions = valid.long().cumsum(1) - 1  # (B, T) index among the valid tokens: holes in the mask are not counted
    last = torch.where(active & valid[..., None], positions[..., None], -1).amax(1)  # (B, N)
    end = torch.where(valid, positions, -1).amax(1, keepdim=True)  # (B, 1)
    return torch.where(last >= 0, end - last, 0).float()
