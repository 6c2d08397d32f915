"""Ground truth of a training row, read once: its instances as soft targets on a prediction grid.

The one reader of a row's ``masks`` (COCO RLE dicts and/or arrays at the original image size; ``[]`` = no target)
in the package: the supervised warm-up, the GRPO trainer (its dataset check and its rollout targets) and the GRPO
mask reward all go through these functions.

* :func:`mask_items` / :func:`mask_hw`: the instances of a row and their (H, W), without decoding (dataset checks).
* :func:`decode_masks`: the instances decoded to a float32 ``(G, H0, W0)`` array (RLE decoded; bool / integer masks
  read nonzero as foreground; float masks must lie in ``[0, 1]`` and stay soft).
* :func:`masks_on_grid`: decoded and resized to a grid (SAM's letterboxed frame, or the image stretched), with an
  optional decode cache keyed by :func:`rle_key` (the G rollouts of a prompt share one annotation).
* :func:`ground_truth_on_grid`: :func:`masks_on_grid` on SAM's frame after checking every instance has the image size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..metrics.inputs import check_rle_fields
from ..sam_frame import resize_masks
from ..utils.masks import decode_rle, is_rle

__all__ = [
    "decode_masks",
    "ground_truth_on_grid",
    "image_hw",
    "mask_hw",
    "mask_items",
    "masks_on_grid",
    "rle_key",
]


def image_hw(image: Any, where: str) -> tuple[int, int]:
    """(height, width) of a PIL image, an array (H, W[, C]) or anything :func:`load_image` reads."""
    if image is None:
        raise ValueError(f"{where}: the `image` is None; every row needs an image.")
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3):
            raise ValueError(f"{where}: an image array must be (H, W) or (H, W, C), got shape {image.shape}.")
        return int(image.shape[0]), int(image.shape[1])
    if hasattr(image, "size") and isinstance(image.size, tuple):  # PIL: (W, H); the header is enough
        width, height = image.size
        return int(height), int(width)
    from ..image_utils import load_image

    width, height = load_image(image).size
    return int(height), int(width)


def _as_array(x: Any) -> np.ndarray:
    """A tensor (any device; half precision read as float32), array or nested list as a numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype in (torch.bfloat16, torch.float16) else x).numpy()
    return np.asarray(x)


def _array(x: Any, where: str) -> np.ndarray:
    """:func:`_as_array` with errors naming ``where`` (a ragged nested list cannot be a mask)."""
    try:
        return _as_array(x)
    except ValueError:
        raise ValueError(
            f"{where}: cannot read a mask from a ragged nested list (rows of different lengths); pass an (H, W) "
            "array, tensor or nested list with equal rows, or a COCO RLE dict."
        ) from None


MAX_GRID_SIDE = 8192
"""Largest prediction grid side :func:`masks_on_grid` accepts (SAM's is 256)."""


def mask_items(masks: Any, where: str) -> list:
    """The instances of one row's ``masks`` as a list (RLE dicts and/or 2-D arrays)."""
    if masks is None:
        raise ValueError(f"{where}: `masks` is None; use [] for a sample without a target.")
    if is_rle(masks):
        return [masks]
    if isinstance(masks, torch.Tensor):
        masks = _as_array(masks)
    if isinstance(masks, np.ndarray):
        if masks.ndim == 2:
            return [masks]
        if masks.ndim == 3:
            return list(masks)
        raise ValueError(f"{where}: an array of masks must have shape (G, H, W) or (H, W), got {masks.shape}.")
    if isinstance(masks, (list, tuple)):
        if masks and not is_rle(masks[0]) and _array(masks[0], f"{where}[0]").ndim == 1:  # one (H, W) nested list
            return [_array(masks, where)]
        return list(masks)
    raise ValueError(f"{where}: `masks` must be a list of COCO RLE dicts or arrays, got {type(masks).__name__}.")


def mask_hw(item: Any, where: str) -> tuple[int, int]:
    """(H, W) of one instance (an RLE dict's ``size``, or a 2-D array's shape), without decoding it."""
    if is_rle(item):
        check_rle_fields(item, where)
        height, width = item["size"]
        return int(height), int(width)
    array = _array(item, where)
    if array.ndim != 2:
        raise ValueError(f"{where}: each mask must be 2-D (H, W), got shape {array.shape}.")
    return int(array.shape[0]), int(array.shape[1])


def _float_mask(array: np.ndarray, where: str) -> np.ndarray:
    """bool → float; integers → nonzero is foreground; floats must be in [0, 1] (soft masks kept soft)."""
    if array.dtype == bool:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        return (array != 0).astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        if array.size and np.isnan(array).any():
            raise ValueError(f"{where}: float ground-truth masks must lie in [0, 1], got NaN.")
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(
                f"{where}: float ground-truth masks must lie in [0, 1], got "
                f"[{np.nanmin(array):g}, {np.nanmax(array):g}]."
            )
        return array.astype(np.float32)
    raise ValueError(f"{where}: unsupported ground-truth mask dtype {array.dtype}.")


def decode_masks(masks: Any, where: str = "masks") -> np.ndarray:
    """One row's instances decoded at their stored resolution: float32 ``(G, H0, W0)``; ``(0, 0, 0)`` for ``[]``.

    Accepted: a list of COCO RLE dicts and/or 2-D masks (arrays, tensors, nested lists), one RLE dict, a tensor /
    array ``(G, H, W)`` or ``(H, W)``, a nested list ``(H, W)`` or ``(G, H, W)``. RLE and bool masks give {0, 1};
    integer masks read nonzero as foreground; float masks must lie in ``[0, 1]`` and are kept soft.

    Raises:
        ValueError: ``None``, an unreadable form, a mask that is not 2-D, instances of different sizes, float values
            outside ``[0, 1]``.
    """
    planes = []
    for j, item in enumerate(mask_items(masks, where)):
        if is_rle(item):
            check_rle_fields(item, f"{where}[{j}]")
        plane = decode_rle(item) if is_rle(item) else _array(item, f"{where}[{j}]")  # (H0, W0)
        mask_hw(plane, f"{where}[{j}]")  # 2-D check
        planes.append(_float_mask(plane, f"{where}[{j}]"))
    if not planes:
        return np.zeros((0, 0, 0), dtype=np.float32)
    if len({p.shape for p in planes}) != 1:
        raise ValueError(
            f"{where}: the instance masks have different sizes {[p.shape for p in planes]}; all instances of one "
            "sample must share the image size."
        )
    return np.stack(planes)  # (G, H0, W0)


def rle_key(masks: Any) -> tuple | None:
    """Hashable identity of a row's ``masks`` given as RLE dict(s) (None for any other form): equal annotations
    (e.g. the G rollouts of one prompt, separate but equal objects) get equal keys."""
    items = [masks] if is_rle(masks) else masks
    if not isinstance(items, (list, tuple)) or not items or not all(is_rle(x) for x in items):
        return None
    try:
        return tuple((tuple(int(s) for s in x["size"]), x["counts"] if isinstance(x["counts"], (str, bytes))
                      else tuple(x["counts"])) for x in items)
    except (TypeError, ValueError):  # a malformed RLE: not cached, reported when decoded
        return None


def masks_on_grid(
    masks: Any,
    grid: tuple[int, int],
    *,
    letterbox: bool = True,
    cache: dict[tuple, np.ndarray] | None = None,
    where: str = "masks",
) -> torch.Tensor:
    """One row's instances as soft float32 targets ``(G, h, w)`` on the prediction grid ``grid = (h, w)``.

    Ground truth stored at another size is resized as soft targets (area averaging, :func:`resize_masks`) into SAM's
    letterboxed frame (``letterbox=True``: scaled so the longest side fits, zero-padded bottom/right) or stretched to
    ``grid`` (``letterbox=False``); ground truth already at ``grid`` is used as is. ``cache`` (a dict owned by the
    caller) keeps the decoded arrays of RLE rows by :func:`rle_key`, so repeated annotations are decoded once.
    ``grid`` must be two ints in ``[1, MAX_GRID_SIDE]``.
    """
    if not (isinstance(grid, (tuple, list)) and len(grid) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 1 <= v <= MAX_GRID_SIDE
                    for v in grid)):
        raise ValueError(f"`grid` must be two ints in [1, {MAX_GRID_SIDE}], got {grid!r}; pass the model's mask grid.")
    key = rle_key(masks) if cache is not None else None
    if key is not None and key in cache:
        array = cache[key]
    else:
        array = decode_masks(masks, where)  # (G, H0, W0)
        if key is not None:
            cache[key] = array
    size = (int(grid[0]), int(grid[1]))
    if array.shape[0] == 0:
        return torch.zeros(0, *size)  # (0, h, w): no target
    tensor = torch.from_numpy(array)  # (G, H0, W0)
    if tuple(tensor.shape[-2:]) == size:
        return tensor
    return resize_masks(tensor, size, letterbox=letterbox)  # (G, h, w)


def ground_truth_on_grid(
    masks: Any, image_size: tuple[int, int], grid: tuple[int, int], where: str = "row"
) -> torch.Tensor:
    """One row's instances as soft targets on SAM's letterboxed m × m frame: ``(G, m, m)`` float32 (G = 0 allowed).

    Args:
        masks: the row's ``masks`` (list of COCO RLE / arrays at the original image size; ``[]`` = no target).
        image_size: the image's (H, W); every instance must have this size.
        grid: (m, m), the model's mask grid.
    """
    items = mask_items(masks, where)
    for j, item in enumerate(items):
        size = mask_hw(item, f"{where} masks[{j}]")
        if size != tuple(image_size):
            raise ValueError(
                f"{where}: masks[{j}] has size {size} (H, W) but the image is {tuple(image_size)}. Ground-truth masks "
                "must be at the image's original resolution."
            )
    return masks_on_grid(items, grid, letterbox=True, where=where)
