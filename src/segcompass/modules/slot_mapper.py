"""Slot mapper (paper eq. 2 and 5): fuse slot embeddings with concept representations and score image keys.

``Q_k = MLP([e_k ; r_k])``; per head i, ``S_i = (Q W_i^Q)(K W_i^K)ᵀ / √d_h`` over the h × w image keys; the map
head F_map turns the N_h score maps of a slot into one heatmap (upsampled ×4 to the mask grid) and the confidence
head F_conf reads the same scores (spatial max and mean per head) into one logit per slot.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SlotMapper(nn.Module):
    """
    Args:
        llm_dim (`int`): D, width of the concentration-token hidden states e_k.
        concept_dim (`int`): d_c, width of the concept representations r_k.
        image_dim (`int`): C, channels of the SAM image embedding (image keys).
        num_heads (`int`): N_h.
        head_dim (`int`): d_h.
        upscale (`int`): heatmap grid / image-key grid ratio (4 for SAM's low-resolution masks).
        initial_heatmap_bias (`float`): bias of the last map convolution; a negative value starts heatmaps mostly
            off (sigmoid(-2) ≈ 0.12), the right prior for objects that cover a small part of the image.
    """

    def __init__(self, llm_dim: int, concept_dim: int, image_dim: int, num_heads: int, head_dim: int,
                 upscale: int = 4, initial_heatmap_bias: float = -2.0):
        super().__init__()
        query_dim = num_heads * head_dim
        self.num_heads, self.head_dim, self.upscale = num_heads, head_dim, upscale
        self.fuse = nn.Sequential(  # Q_k = MLP([e_k ; r_k])
            nn.LayerNorm(llm_dim + concept_dim),
            nn.Linear(llm_dim + concept_dim, query_dim),
            nn.GELU(),
            nn.Linear(query_dim, query_dim),
        )
        self.q_proj = nn.Linear(query_dim, query_dim, bias=False)  # [W_i^Q]_i
        self.k_proj = nn.Conv2d(image_dim, query_dim, kernel_size=1, bias=False)  # [W_i^K]_i
        self.map_head = nn.Sequential(  # F_map: (N_h, h, w) -> (1, h, w)
            nn.Conv2d(num_heads, num_heads, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(num_heads, 1, kernel_size=3, padding=1),
        )
        self.confidence_head = nn.Sequential(  # F_conf: per-head spatial max and mean -> logit
            nn.Linear(2 * num_heads, 4 * num_heads),
            nn.GELU(),
            nn.Linear(4 * num_heads, 1),
        )
        self.map_head[-1].initial_bias = initial_heatmap_bias  # read by SegCompassPreTrainedModel._init_weights
        with torch.no_grad():
            self.map_head[-1].bias.fill_(initial_heatmap_bias)

    def forward(
        self, slot_embeddings: torch.Tensor, concept_slots: torch.Tensor, image_embeddings: torch.Tensor,
        key_positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            slot_embeddings (`torch.FloatTensor` of shape `(B, K, D)`): e_k.
            concept_slots (`torch.FloatTensor` of shape `(B, K, d_c)`): r_k.
            image_embeddings (`torch.FloatTensor` of shape `(B, C, h, w)`): image keys.
            key_positions (`torch.FloatTensor` of shape `(1 or B, C, h, w)`, *optional*): a positional embedding
                added to the image keys before W^K (SAM's dense positional embedding).

        Returns:
            heatmap_logits `(B, K, up·h, up·w)`, confidence_logits `(B, K)`, scores `(B, K, N_h, h, w)`.
        """
        batch, num_slots = slot_embeddings.shape[:2]
        _, _, height, width = image_embeddings.shape
        fused = torch.cat([slot_embeddings.to(concept_slots.dtype), concept_slots], dim=-1)  # (B, K, D + d_c)
        queries = self.q_proj(self.fuse(fused))  # (B, K, N_h * d_h)
        queries = queries.view(batch, num_slots, self.num_heads, self.head_dim)  # (B, K, N_h, d_h)
        keys = image_embeddings.to(queries.dtype)  # (B, C, h, w)
        if key_positions is not None:
            keys = keys + key_positions.to(queries.dtype)
        keys = self.k_proj(keys)  # (B, N_h * d_h, h, w)
        keys = keys.view(batch, self.num_heads, self.head_dim, height, width)  # (B, N_h, d_h, h, w)
        scores = torch.einsum("bknd,bndyx->bknyx", queries, keys) / math.sqrt(self.head_dim)  # (B, K, N_h, h, w)

        maps = self.map_head(scores.flatten(0, 1))  # (B*K, 1, h, w)
        maps = F.interpolate(maps, scale_factor=self.upscale, mode="bilinear", align_corners=False)
        heatmap_logits = maps.view(batch, num_slots, self.upscale * height, self.upscale * width)

        flat = scores.flatten(3)  # (B, K, N_h, h*w)
        stats = torch.cat([flat.amax(-1), flat.mean(-1)], dim=-1)  # (B, K, 2*N_h)
        confidence_logits = self.confidence_head(stats).squeeze(-1)  # (B, K)
        return heatmap_logits, confidence_logits, scores
