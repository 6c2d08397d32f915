"""The SAM frame, in one place: how an image sits on SAM's padded square and on the m x m mask grid over it.

SAM resizes an image's longest side to S and pads bottom/right to S x S (``SamImageProcessor``); heatmaps and masks
live on an m x m grid over that padded frame. Every piece of code that maps between the original image, the frame
and the grid calls these functions:

- :func:`valid_mask_sizes`: the unpadded (h, w) region of each image on the mask grid, ``ceil(h' * m / S)``;
- :func:`valid_region_mask`: that region as a ``(B, m, m)`` bool mask;
- :func:`letterbox_size` / :func:`resize_masks`: ground truth at the original size -> soft targets on the grid;
- :func:`masks_to_original_size`: grid logits -> the original (H, W) (upsample to S x S, crop, resize).

A leaf module (torch only).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "letterbox_size",
    "masks_to_original_size",
    "masks_to_original_sizes",
    "resize_masks",
    "valid_mask_sizes",
    "valid_region_mask",
]


def _pair(size, name: str) -> tuple[int, int]:
    """``m`` or ``(m_h, m_w)`` -> ``(m_h, m_w)`` positive ints."""
    pair = (size, size) if isinstance(size, int) else tuple(int(v) for v in size)
    if len(pair) != 2 or min(pair) <= 0:
        raise ValueError(f"`{name}` must be a positive int or a pair of positive ints, got {size!r}.")
    return int(pair[0]), int(pair[1])


def valid_mask_sizes(reshaped_input_sizes, mask_size: int | tuple[int, int], input_size: int | tuple[int, int]
                     ) -> torch.LongTensor:
    """``(B, 2)`` long: the (h, w) of each unpadded image region on the m x m mask grid over the padded S x S frame:
    ``ceil(h' * m / S)``, ``ceil(w' * m / S)`` (the authors' ``ceil(h'/4)`` at 1024 -> 256), in exact integers.

    Args:
        reshaped_input_sizes: ``(B, 2)`` (h', w'), the resized unpadded image in the frame (the processor's
            ``reshaped_input_sizes``); a tensor or nested sequence.
        mask_size: m, or (m_h, m_w).
        input_size: S, or (S_h, S_w).
    """
    sizes = torch.as_tensor(reshaped_input_sizes)
    if sizes.numel() % 2 or (sizes.ndim == 2 and sizes.shape[-1] != 2) or sizes.ndim > 2:
        raise ValueError(
            f"reshaped_input_sizes must have shape (B, 2) of (height, width), got {tuple(sizes.shape)}."
        )
    sizes = sizes.reshape(-1, 2).long().cpu()  # (B, 2)
    grid = torch.tensor(_pair(mask_size, "mask_size"))  # (2,)
    frame = torch.tensor(_pair(input_size, "input_size"))  # (2,)
    if bool((sizes <= 0).any()) or bool((sizes > frame).any()):
        raise ValueError(
            f"reshaped_input_sizes {sizes.tolist()} must lie within the {tuple(frame.tolist())} SAM frame."
        )
    return torch.div(sizes * grid + frame - 1, frame, rounding_mode="floor")  # ceil(h' m / S), (B, 2)


def valid_region_mask(valid_sizes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, 2)`` valid (h, w) on the grid -> ``(B, m_h, m_w)`` bool mask of the unpadded region (top-left)."""
    rows = torch.arange(grid[0], device=valid_sizes.device)
    cols = torch.arange(grid[1], device=valid_sizes.device)
    inside_rows = rows[None, :, None] < valid_sizes[:, 0, None, None]  # (B, m_h, 1)
    return inside_rows & (cols[None, None, :] < valid_sizes[:, 1, None, None])  # (B, m_h, m_w)


def masks_to_original_size(
    logits: torch.Tensor, reshaped_size, original_size, input_size: int | tuple[int, int]
) -> torch.Tensor:
    """Grid logits of one image back to its original size (SAM's post-processing, pure torch).

    Args:
        logits (`torch.FloatTensor` of shape `(K, m, m)`): mask or heatmap logits on the padded-frame grid.
        reshaped_size: (h', w') of the resized, unpadded image inside the S × S frame.
        original_size: (H, W) of the original image.
        input_size: S, or (S_h, S_w).

    Returns:
        `(K, H, W)` float32 logits (bilinear: upsample to S × S, crop (h', w'), resize to (H, W)).
    """
    frame_h, frame_w = _pair(input_size, "input_size")
    h, w = (int(v) for v in reshaped_size)
    height, width = (int(v) for v in original_size)
    if not (0 < h <= frame_h and 0 < w <= frame_w):
        raise ValueError(f"reshaped size {(h, w)} must lie within the {frame_h} x {frame_w} SAM frame.")
    if logits.ndim != 3:
        raise ValueError(f"logits must be (slots, m, m) for one image, got shape {tuple(logits.shape)}.")
    x = logits.unsqueeze(0).float()  # (1, K, m, m)
    x = F.interpolate(x, size=(frame_h, frame_w), mode="bilinear", align_corners=False)  # (1, K, S, S)
    x = x[..., :h, :w]  # (1, K, h', w')
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)  # (1, K, H, W)
    return x[0]


def masks_to_original_sizes(mask_logits, original_sizes, reshaped_input_sizes, input_size: int | tuple[int, int]
                            ) -> list[torch.Tensor]:
    """:func:`masks_to_original_size` over a batch.

    Args:
        mask_logits: ``(B, K, m, m)`` tensor, or a list of B ``(K, m, m)`` tensors/arrays.
        original_sizes: ``(B, 2)`` (H, W); reshaped_input_sizes: ``(B, 2)`` (h', w').
        input_size: S, or (S_h, S_w).

    Returns:
        list of B float32 logits ``(K, H_b, W_b)``.
    """
    if isinstance(mask_logits, torch.Tensor):
        if mask_logits.ndim != 4:
            raise ValueError(f"mask_logits must be (batch, slots, m, m), got shape {tuple(mask_logits.shape)}.")
        per_sample = list(mask_logits)
    else:
        per_sample = [torch.as_tensor(m) for m in mask_logits]
    original = torch.as_tensor(original_sizes).reshape(-1, 2).tolist()
    reshaped = torch.as_tensor(reshaped_input_sizes).reshape(-1, 2).tolist()
    if not len(per_sample) == len(original) == len(reshaped):
        raise ValueError(
            f"Got mask logits for {len(per_sample)} samples, {len(original)} original_sizes and {len(reshaped)} "
            "reshaped_input_sizes; pass one of each per sample."
        )
    outputs = []
    for logits, size, valid in zip(per_sample, original, reshaped):
        if logits.ndim != 3:
            raise ValueError(f"Each sample's mask logits must be (slots, m, m), got shape {tuple(logits.shape)}.")
        outputs.append(masks_to_original_size(logits.detach().float(), valid, size, input_size))  # (K, H, W)
    return outputs


# ----------------------------------------------------------------------------------------------- ground truth
_RESIZE_MODES = ("auto", "area", "bilinear", "nearest-exact")


# ----------------------------------------------------------------------------------------------- resizing
def letterbox_size(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """Size of an ``height × width`` image scaled to fit inside ``size = (h, w)`` with its aspect ratio kept.

    This is the SAM convention (longest side scaled to the frame, rounded to the nearest integer); the scaled image
    sits in the top-left corner of the frame and the rest is padding.

    Example:
        >>> letterbox_size(480, 640, (256, 256))
        (192, 256)
    """
    out_h, out_w = int(size[0]), int(size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"letterbox_size needs a positive image size, got height={height}, width={width}.")
    scale = min(out_h / height, out_w / width)
    return min(out_h, int(height * scale + 0.5)), min(out_w, int(width * scale + 0.5))


def resize_masks(
    masks: torch.Tensor,
    size: tuple[int, int],
    *,
    mode: Literal["auto", "area", "bilinear", "nearest-exact"] = "auto",
    letterbox: bool = False,
) -> torch.Tensor:
    """Resize (stacks of) masks to ``size = (h, w)`` as soft float32 targets in ``[0, 1]``.

    Resizing a binary mask to a coarser grid should keep the fraction of each cell that is covered, so the default
    ``mode="auto"`` uses area averaging when no side grows (an exact block mean for integer factors) and bilinear
    interpolation (``align_corners=False``, antialiased when a side shrinks) otherwise. ``"nearest-exact"`` keeps
    binary masks binary. The losses and rewards accept the soft result as is.

    Args:
        masks (`torch.Tensor` of shape `(..., H, W)`): bool, or numbers in ``[0, 1]`` (e.g. ``(G, H, W)``,
            ``(B, G, H, W)``). Leading dims may be empty (G = 0).
        size: target ``(h, w)``.
        mode: ``"auto"``, ``"area"``, ``"bilinear"`` or ``"nearest-exact"``.
        letterbox: keep the aspect ratio as SAM does (see :func:`letterbox_size`): resize into the top-left
            ``letterbox_size(H, W, size)`` block and zero-pad the bottom/right. Use it when the predictions live in
            SAM's padded square frame; leave it off when the prediction grid is the image stretched to ``size``.

    Returns:
        `torch.FloatTensor` of shape `(..., h, w)`, on the input's device.
    """
    if mode not in _RESIZE_MODES:
        raise ValueError(f"`mode` must be one of {_RESIZE_MODES}, got {mode!r}.")
    if masks.dim() < 2:
        raise ValueError(f"resize_masks expects masks of shape (..., H, W), got {tuple(masks.shape)}.")
    out_h, out_w = int(size[0]), int(size[1])
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"`size` must be two positive ints (h, w), got {size!r}.")
    x = masks.float() if masks.dtype == torch.bool else masks.to(torch.float32)
    if x.numel():
        low, high = torch.aminmax(x)
        if bool(low < 0) or bool(high > 1) or bool(torch.isnan(low)):
            raise ValueError(
                f"resize_masks expects bool masks or values in [0, 1], got values in [{float(low):g}, "
                f"{float(high):g}]. For 0/255 images or label maps pass `mask != 0` (or `mask == label`)."
            )
    lead, (height, width) = x.shape[:-2], x.shape[-2:]
    if letterbox:
        inner_h, inner_w = letterbox_size(height, width, (out_h, out_w))
    else:
        inner_h, inner_w = out_h, out_w
    if x.numel() == 0:
        return x.new_zeros(*lead, out_h, out_w)
    flat = x.reshape(-1, 1, height, width)  # (N, 1, H, W), N = prod(leading dims)
    if (inner_h, inner_w) != (height, width):
        chosen = mode
        if mode == "auto":
            chosen = "area" if inner_h <= height and inner_w <= width else "bilinear"
        if chosen == "bilinear":
            shrinks = inner_h < height or inner_w < width
            flat = F.interpolate(
                flat, size=(inner_h, inner_w), mode="bilinear", align_corners=False, antialias=shrinks
            )  # (N, 1, inner_h, inner_w)
        else:
            flat = F.interpolate(flat, size=(inner_h, inner_w), mode=chosen)  # (N, 1, inner_h, inner_w)
    if (inner_h, inner_w) != (out_h, out_w):
        flat = F.pad(flat, (0, out_w - inner_w, 0, out_h - inner_h))  # (N, 1, h, w), zeros bottom/right
    return flat.clamp_(0.0, 1.0).reshape(*lead, out_h, out_w)  # (..., h, w)
