"""Absolute 2-D positions for the backbone's image tokens.

Qwen2.5-VL's vision tower has no absolute position embedding: its ViT uses 2-D rotary embeddings and the language
model M-RoPE, so where a patch is reaches attention *scores* but never a token's *content*. A text token that has
to compare two shapes' heights ("the orange shape closest to the top edge", "the square above the circle") can only
read what the image tokens carry, and on the tiny model a ridge probe reads a shape's absolute position from them to
about 9 px of 96 (its offset inside its 16 px token to 1.8 px). :class:`ImagePositionEmbedding` adds to every merged
image token a learned projection of Fourier features of its cell's centre, normalised to [0, 1] per image, so the
position is in the content at any resolution. The projection starts at zero: a model that gains the module computes
exactly what it computed before until training moves it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ImagePositionEmbedding", "cell_centres"]


def cell_centres(grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """The centre ``(y, x)`` in [0, 1] of every merged image token, in the vision tower's output order.

    Args:
        grid_thw: ``(num_images, 3)`` patch grids (temporal, height, width), as the processor gives them.
        merge: the tower's ``spatial_merge_size`` (patches per merged token along each side).

    Returns:
        ``(N, 2)`` float tensor, N = Σ t · (h / merge) · (w / merge): per image, per frame, row-major over the merged
        cells (the order of Qwen2.5-VL's merged tokens and of its M-RoPE height / width ids).
    """
    centres = []
    for t, h, w in grid_thw.tolist():
        rows, cols = h // merge, w // merge
        y, x = torch.meshgrid((torch.arange(rows) + 0.5) / rows, (torch.arange(cols) + 0.5) / cols, indexing="ij")
        centres.append(torch.stack([y, x], dim=-1).reshape(rows * cols, 2).repeat(t, 1))  # (t·rows·cols, 2)
    return torch.cat(centres) if centres else torch.zeros(0, 2)


class ImagePositionEmbedding(nn.Module):
    """``tokens + W · [sin(π 2^f y), cos(π 2^f y), sin(π 2^f x), cos(π 2^f x)]_{f < F}``, W zero-initialised.

    Args:
        hidden_size: D, the width of the merged image tokens (the language model's hidden size).
        num_frequencies: F, octaves of the Fourier features (4 F features per token).
    """

    def __init__(self, hidden_size: int, num_frequencies: int):
        super().__init__()
        if num_frequencies < 1:
            raise ValueError(f"`num_frequencies` must be >= 1, got {num_frequencies}.")
        self.num_frequencies = num_frequencies  # no buffer: transformers' meta-device loading leaves those unset
        self.proj = nn.Linear(4 * num_frequencies, hidden_size, bias=False)
        self.proj.zero_init = True  # read by SegCompassPreTrainedModel._init_weights
        nn.init.zeros_(self.proj.weight)

    def features(self, centres: torch.Tensor) -> torch.Tensor:
        """``(N, 2)`` cell centres -> ``(N, 4F)`` Fourier features."""
        frequencies = math.pi * 2.0 ** torch.arange(self.num_frequencies, device=centres.device, dtype=centres.dtype)
        angles = centres[:, :, None] * frequencies  # (N, 2, F)
        return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (N, 4F)

    def forward(self, tokens: torch.Tensor, grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
        """``tokens`` ``(N, D)``: the merged image tokens of the images in ``grid_thw``, in the tower's order."""
        centres = cell_centres(grid_thw, merge).to(device=tokens.device, dtype=tokens.dtype)  # (N, 2)
        if centres.shape[0] != tokens.shape[0]:
            raise ValueError(f"image_grid_thw {grid_thw.tolist()} describes {centres.shape[0]} merged image tokens but "
                             f"the vision tower returned {tokens.shape[0]}; pass the processor's image_grid_thw.")
        return tokens + self.proj(self.features(centres))  # (N, D)

    def vision_tower_hook(self, module: nn.Module, args: tuple, kwargs: dict, output):
        """A ``register_forward_hook(..., with_kwargs=True)`` hook for transformers' Qwen2.5-VL vision tower: adds the
        positions to its merged tokens (``output.pooler_output``). A bound method, so ``copy.deepcopy`` of the
        backbone (the frozen references of the anchor and of GRPO's KL) copies this module with it."""
        grid_thw = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]
        output.pooler_output = self(output.pooler_output, grid_thw, module.spatial_merge_size)
        return output
