"""Binary-mask helpers shared across SegCompass: conversion, COCO RLE, boxes, unions, resizing.

Every mask leaving this module is a numpy ``bool`` array of shape ``(H, W)``.

Binarisation rule (:func:`to_binary_mask`), decided by the input's dtype:

* ``bool``: used as is.
* integers (``uint8`` 0/1 or 0/255 images, label maps, PIL ``"L"``/``"P"``/``"I"`` images): **nonzero** is
  foreground. Negative values are refused (they usually mark "ignore" pixels, e.g. ``-1``); split such label
  maps with :func:`label_map_to_masks` first.
* floats (probabilities): values must lie in ``[0, 1]``; foreground is ``value > threshold`` (``0.5`` by
  default, the same strict comparison as transformers' ``mask_threshold``). Values outside ``[0, 1]`` are
  most likely logits, and are refused with a ``ValueError`` rather than guessed at: pass ``logits > 0`` or
  ``logits.sigmoid()``.
* COCO RLE dicts ``{"size": [H, W], "counts": str | bytes | list[int]}``: decoded with pycocotools after the
  run lengths are checked to cover exactly ``H * W`` pixels.

RLEs produced here carry ``counts`` as ``str`` so they fit JSON and Arrow (``datasets``) columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as coco_mask

__all__ = [
    "decode_rle",
    "encode_rle",
    "is_rle",
    "label_map_to_masks",
    "mask_to_box",
    "normalize_rle",
    "resize_mask_nearest",
    "to_binary_mask",
    "union_masks",
]


def is_rle(x: Any) -> bool:
    """True when ``x`` looks like a COCO RLE dict (a mapping with ``"size"`` and ``"counts"`` keys)."""
    return isinstance(x, dict) and "size" in x and "counts" in x


def _describe(x: Any) -> str:
    shape = getattr(x, "shape", None)
    if shape is not None:
        return f"{type(x).__name__} of shape {tuple(shape)}"
    return type(x).__name__


# ----------------------------------------------------------------------------------------------- RLE
def _rle_size(rle: dict) -> tuple[int, int]:
    size = rle.get("size")
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in size)
    ):
        raise ValueError(
            f"RLE 'size' must be [H, W] with two non-negative ints, got {size!r}. "
            "Build RLEs with segcompass.utils.masks.encode_rle(mask)."
        )
    return int(size[0]), int(size[1])


def _compressed_run_lengths(counts: str) -> list[int]:
    """Parse the run lengths of a COCO compressed RLE string (5 bits per char, offset 48, deltas after run 2)."""
    runs: list[int] = []
    pos, n = 0, len(counts)
    while pos < n:
        value, shift, more = 0, 0, True
        while more:
            if pos >= n:
                raise ValueError(f"RLE 'counts' string ends in the middle of a run length: {counts[:40]!r}.")
            code = ord(counts[pos]) - 48
            if not 0 <= code < 64:
                raise ValueError(
                    f"RLE 'counts' has the character {counts[pos]!r} at position {pos}, outside the COCO "
                    "alphabet ('0' .. 'o'); the string is not a compressed COCO RLE."
                )
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            shift += 5
            pos += 1
            if not more and code & 0x10:
                value -= 1 << shift  # sign-extend
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _checked_runs(rle: dict, height: int, width: int) -> list[int]:
    counts = rle["counts"]
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError as err:
            raise ValueError(f"RLE 'counts' bytes are not ASCII: {rle['counts'][:40]!r}.") from err
    if isinstance(counts, str):
        runs = _compressed_run_lengths(counts)
    elif isinstance(counts, (list, tuple, np.ndarray)):
        runs = [int(c) for c in counts]
    else:
        raise ValueError(
            f"RLE 'counts' must be a str/bytes (compressed) or a list of ints (uncompressed), "
            f"got {type(counts).__name__}."
        )
    if any(r < 0 for r in runs):
        raise ValueError(f"RLE 'counts' decodes to a negative run length ({min(runs)}); the RLE is corrupt.")
    total = sum(runs)
    if total != height * width:
        raise ValueError(
            f"RLE run lengths cover {total} pixels but 'size' {[height, width]} has {height * width}; "
            "the 'counts' do not belong to this 'size'."
        )
    return runs


def decode_rle(rle: dict) -> np.ndarray:
    """Decode a COCO RLE dict into a bool mask ``(H, W)``.

    ``counts`` may be a compressed string (``str`` or ``bytes``) or an uncompressed list of run lengths.
    Malformed RLEs (bad ``size``, foreign characters, run lengths that do not sum to ``H * W``) raise
    ``ValueError`` before pycocotools sees them.
    """
    if not is_rle(rle):
        raise ValueError(
            f"Expected a COCO RLE dict with keys 'size' and 'counts', got {_describe(rle)}"
            + (f" with keys {sorted(rle)}" if isinstance(rle, dict) else "")
            + "."
        )
    height, width = _rle_size(rle)
    runs = _checked_runs(rle, height, width)
    if height * width == 0:
        return np.zeros((height, width), dtype=bool)
    counts = rle["counts"]
    if isinstance(counts, str):
        compressed = {"size": [height, width], "counts": counts.encode("ascii")}
    elif isinstance(counts, bytes):
        compressed = {"size": [height, width], "counts": counts}
    else:
        compressed = coco_mask.frPyObjects({"size": [height, width], "counts": runs}, height, width)
    return coco_mask.decode(compressed).astype(bool)


def normalize_rle(rle: dict) -> dict:
    """Validate a COCO RLE dict and return it as ``{"size": [H, W], "counts": str}`` (compressed).

    Accepts ``counts`` as ``str``, ``bytes`` or an uncompressed list of run lengths; raises ``ValueError`` on a
    malformed RLE (see :func:`decode_rle`).
    """
    if not is_rle(rle):
        raise ValueError(f"Expected a COCO RLE dict with keys 'size' and 'counts', got {_describe(rle)}.")
    height, width = _rle_size(rle)
    _checked_runs(rle, height, width)
    counts = rle["counts"]
    if isinstance(counts, bytes):
        return {"size": [height, width], "counts": counts.decode("ascii")}
    if isinstance(counts, str):
        return {"size": [height, width], "counts": counts}
    return encode_rle(decode_rle(rle))


def encode_rle(mask: Any) -> dict:
    """Encode a mask (anything :func:`to_binary_mask` accepts) as ``{"size": [H, W], "counts": str}``."""
    binary = to_binary_mask(mask)
    encoded = coco_mask.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": [int(binary.shape[0]), int(binary.shape[1])], "counts": encoded["counts"].decode("ascii")}


# ----------------------------------------------------------------------------------------------- conversion
def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    if isinstance(x, Image.Image):
        if x.mode not in ("1", "L", "P", "I", "I;16", "F"):
            raise ValueError(
                f"A PIL mask must be single-channel (mode '1', 'L', 'P', 'I' or 'F'), got mode {x.mode!r} of size "
                f"{x.size}. Convert it first, e.g. image.convert('L')."
            )
        return np.asarray(x)
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (list, tuple)):
        try:
            return np.asarray(x)
        except ValueError as err:
            raise ValueError(f"A nested-list mask must be rectangular (H rows of W values): {err}") from err
    raise ValueError(
        f"Cannot read a mask from {_describe(x)}; expected a numpy array, torch tensor, PIL image, "
        "nested list or COCO RLE dict."
    )


def to_binary_mask(x: Any, *, threshold: float = 0.5) -> np.ndarray:
    """Convert one mask to a numpy bool array ``(H, W)`` (rules in the module docstring).

    Args:
        x: numpy array / torch tensor / nested list ``(H, W)``, single-channel PIL image, or COCO RLE dict.
        threshold: foreground cut for float inputs in ``[0, 1]`` (``value > threshold``).

    Raises:
        ValueError: wrong number of dimensions, float values outside ``[0, 1]``, NaNs, negative integers,
            multi-channel images or a malformed RLE. The message names the received value and the fix.
    """
    if is_rle(x):
        return decode_rle(x)
    array = _to_numpy(x)
    if array.ndim != 2:
        hint = ""
        if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
            hint = " For a single mask with a channel axis of 1, drop it (mask[0] or mask[..., 0])."
        elif array.ndim == 3 and array.shape[-1] in (3, 4):
            hint = (
                " This looks like an RGB(A) image; pass a single-channel mask "
                "(e.g. image[..., 0] or PIL .convert('L'))."
            )
        elif array.ndim == 3:
            hint = (
                " For a stack of instance masks, pass them as a list (list(masks)) or take their union with "
                "segcompass.utils.masks.union_masks."
            )
        raise ValueError(f"Expected a 2-D mask (H, W), got {_describe(x)} with {array.ndim} dims.{hint}")
    if array.dtype == bool:
        return array.copy()
    if np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.signedinteger) and array.size and array.min() < 0:
            raise ValueError(
                f"Integer mask has negative values (min {int(array.min())}); negative labels usually mark ignore "
                "pixels. Split them first with segcompass.utils.masks.label_map_to_masks(mask, ignore_index=...)."
            )
        return array != 0
    if np.issubdtype(array.dtype, np.floating):
        if array.size == 0:
            return np.zeros(array.shape, dtype=bool)
        if np.isnan(array).any():
            raise ValueError("Float mask contains NaN; fix the upstream computation or replace NaNs before scoring.")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"Float mask values span [{low:g}, {high:g}], outside [0, 1]. Float masks are read as probabilities "
                f"(foreground = value > {threshold}); for logits pass `logits > 0` or `logits.sigmoid()`, for "
                "0/255 images pass an integer array."
            )
        return array > threshold
    raise ValueError(f"Unsupported mask dtype {array.dtype}; use bool, an integer type or a float type.")


def label_map_to_masks(label_map: Any, *, ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Split a label map ``(H, W)`` into ``(target, ignore)`` bool masks.

    ``ignore`` is ``label_map == ignore_index`` (LISA/ReasonSeg store ignore regions as 255, UniPixel as -1);
    ``target`` is every other nonzero pixel.
    """
    array = _to_numpy(label_map)
    if array.ndim != 2:
        raise ValueError(f"Expected a 2-D label map (H, W), got {_describe(label_map)}.")
    ignore = array == ignore_index
    return (array != 0) & ~ignore, ignore


# ----------------------------------------------------------------------------------------------- geometry
def mask_to_box(mask: Any) -> list[float]:
    """Tight box ``[x, y, w, h]`` (COCO convention, pixels) around a mask; ``[0, 0, 0, 0]`` when it is empty."""
    binary = to_binary_mask(mask)
    rows = np.flatnonzero(binary.any(axis=1))
    cols = np.flatnonzero(binary.any(axis=0))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    y0, y1 = int(rows[0]), int(rows[-1])
    x0, x1 = int(cols[0]), int(cols[-1])
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]


def union_masks(masks: Sequence[Any], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Pixel-wise OR of instance masks, a bool ``(H, W)``.

    Args:
        masks: instance masks, each in any form :func:`to_binary_mask` accepts; may be empty.
        shape: ``(H, W)`` of the result. Required when ``masks`` is empty; when given, every mask must match it.
    """
    if isinstance(masks, np.ndarray) or is_rle(masks) or not isinstance(masks, (list, tuple)):
        raise ValueError(
            f"union_masks expects a list of instance masks, got {_describe(masks)}. "
            "Wrap a single mask as [mask], or pass list(stack) for an (N, H, W) stack."
        )
    if shape is not None:
        shape = (int(shape[0]), int(shape[1]))
    if not masks:
        if shape is None:
            raise ValueError("union_masks got no masks and no shape; pass shape=(H, W) for the empty result.")
        return np.zeros(shape, dtype=bool)
    result: np.ndarray | None = None
    for index, item in enumerate(masks):
        binary = to_binary_mask(item)
        expected = shape if shape is not None else (result.shape if result is not None else binary.shape)
        if binary.shape != expected:
            raise ValueError(
                f"Instance mask {index} has shape {binary.shape} but the others (or `shape`) are {expected}; "
                "all instances of one sample must share the image size."
            )
        result = binary.copy() if result is None else (result | binary)
    return result


def resize_mask_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask ``(H, W)`` to ``size = (H', W')``, sampling at pixel centres."""
    height, width = mask.shape
    out_h, out_w = int(size[0]), int(size[1])
    if (out_h, out_w) == (height, width):
        return mask
    if height == 0 or width == 0:
        return np.zeros((out_h, out_w), dtype=bool)
    rows = np.minimum(((np.arange(out_h) + 0.5) * height / out_h).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * width / out_w).astype(np.int64), width - 1)
    return mask[rows[:, None], cols[None, :]]
