"""Mapping mask-grid outputs back to the original image (SAM's convention, paper appendix / DESIGN data flow).

SAM frames an image by resizing its longest side to S and padding bottom/right to S × S; masks and heatmaps live
on an m × m grid over that padded frame. To return to the original (H, W): upsample to S × S, crop the unpadded
(h', w') region, resize to (H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masks_to_original_size(
    logits: torch.Tensor, reshaped_size, original_size, input_size: int
) -> torch.Tensor:
    """
    Args:
        logits (`torch.FloatTensor` of shape `(K, m, m)`): mask or heatmap logits on the padded-frame grid.
        reshaped_size: (h', w') of the resized, unpadded image inside the S × S frame.
        original_size: (H, W) of the original image.
        input_size (`int`): S.

    Returns:
        `(K, H, W)` logits (bilinear).
    """
    h, w = (int(v) for v in reshaped_size)
    height, width = (int(v) for v in original_size)
    if not (0 < h <= input_size and 0 < w <= input_size):
        raise ValueError(f"reshaped size {(h, w)} must lie within the {input_size} x {input_size} SAM frame.")
    x = logits.unsqueeze(0).float()  # (1, K, m, m)
    x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)  # (1, K, S, S)
    x = x[..., :h, :w]  # (1, K, h', w')
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)  # (1, K, H, W)
    return x[0]
