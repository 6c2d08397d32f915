"""COCO annotations of the benchmark loaders: compressed RLE helpers (pycocotools, counts stored as ASCII str),
checked polygons and their rasterisation, ``segmentation`` to RLE, and checked boxes."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ..utils.masks import normalize_rle
from ._images import _is_int, check_image_size

# ----------------------------------------------------------------------------------------------------------------
# Masks (COCO RLE via pycocotools; counts stored as ASCII str)
# ----------------------------------------------------------------------------------------------------------------


def rle_to_schema(rle: Mapping[str, Any]) -> dict[str, Any]:
    """A pycocotools compressed RLE as the schema stores it: ``{"size": [H, W], "counts": str}``."""
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def _pycoco(rle: Mapping[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def union_rle(rles: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The union of compressed RLEs of one size."""
    if len(rles) == 1:
        return rle_to_schema(rles[0])
    return rle_to_schema(mask_utils.merge([_pycoco(r) for r in rles], intersect=False))


def rle_area(rle: Mapping[str, Any]) -> int:
    """Foreground pixel count of a compressed RLE."""
    return int(mask_utils.area(_pycoco(rle)))


def rle_box(rle: Mapping[str, Any]) -> list[float]:
    """Tight ``[x, y, w, h]`` box of a compressed RLE (zeros for an empty mask)."""
    return [float(v) for v in mask_utils.toBbox(_pycoco(rle))]


def rles_overlap(first: Mapping[str, Any], second: Mapping[str, Any]) -> bool:
    """Whether two same-size RLE masks share a pixel."""
    return rle_area(mask_utils.merge([_pycoco(first), _pycoco(second)], intersect=True)) > 0


def _num(value: float) -> str:
    return f"{value:.1f}" if abs(value) < 1e6 else f"{value:.3g}"


def _check_polygon_bounds(coords: np.ndarray, height: int, width: int, where: str) -> None:
    """``coords`` (flat, finite) must lie on the image, with a 2 px + 1 % tolerance."""
    xs, ys = coords[0::2], coords[1::2]
    tol_x, tol_y = 2.0 + 0.01 * width, 2.0 + 0.01 * height
    if xs.min() < -tol_x or ys.min() < -tol_y or xs.max() > width + tol_x or ys.max() > height + tol_y:
        raise ValueError(
            f"{where}: polygon spans x {_num(xs.min())}..{_num(xs.max())}, y {_num(ys.min())}..{_num(ys.max())}, "
            f"outside the {width}x{height} (WxH) image; the annotation does not belong to this image or the image was "
            "resized. Use the original image."
        )


def _preview(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def polygon_coordinates(polygon: Any, where: str, index: int = 0) -> np.ndarray | None:
    """One polygon as flat finite float64 coordinates ``[x0, y0, x1, y1, ...]``; ``None`` when it has fewer than
    3 points (a degenerate polygon cannot be rasterised).

    Accepts a flat list of numbers or a list of ``[x, y]`` pairs. Anything else (strings, objects, ragged lists, NaN
    or infinite coordinates, an odd number of coordinates) raises a ValueError naming ``where`` and the polygon:
    pycocotools would rasterise NaN coordinates by allocating until the process is killed.
    """
    error = ValueError(
        f"{where}: polygon {index} is not a list of numbers ([x0, y0, x1, y1, ...] or [[x, y], ...]), got "
        f"{_preview(polygon)}; fix the annotation or download it again."
    )
    if isinstance(polygon, (str, bytes, Mapping)) or polygon is None:
        raise error
    try:
        raw = np.asarray(polygon)
    except (TypeError, ValueError):  # ragged nesting
        raise error from None
    if raw.dtype == object:
        if not all(v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool)) for v in raw.reshape(-1)):
            raise error
        raw = raw.astype(np.float64)  # None -> nan, reported below
    elif raw.dtype.kind not in "iuf":
        raise error
    if raw.ndim == 2 and raw.shape[1] == 2:
        raw = raw.reshape(-1)
    elif raw.ndim != 1:
        raise error
    coords = raw.astype(np.float64)
    bad = coords[~np.isfinite(coords)]
    if bad.size:
        raise ValueError(
            f"{where}: polygon {index} has non-finite coordinates ({', '.join(sorted({str(v) for v in bad}))}); fix "
            "the annotation (a NaN or infinite vertex cannot be rasterised) or download it again."
        )
    if coords.size % 2:
        raise ValueError(
            f"{where}: polygon {index} has an odd number of coordinates ({coords.size}); a polygon is x, y pairs. "
            "The annotation is corrupted: fix it or download it again."
        )
    return coords if coords.size >= 6 else None


def valid_polygons(polygons: Iterable[Any], where: str = "segmentation") -> list[list[float]]:
    """Flat ``[x0, y0, x1, y1, ...]`` polygons with at least 3 points (shorter ones cannot be rasterised and are
    dropped); malformed ones raise (see :func:`polygon_coordinates`)."""
    out = []
    for index, polygon in enumerate(polygons):
        coords = polygon_coordinates(polygon, where, index)
        if coords is not None:
            out.append([float(v) for v in coords])
    return out


def polygons_to_rle(polygons: Sequence[Sequence[float]], height: int, width: int, where: str) -> dict[str, Any]:
    """Union of flat polygons rasterised by pycocotools at ``height`` x ``width``.

    The size must be a sane image size and every coordinate finite; coordinates beyond the image (with a 2 px + 1 %
    tolerance) raise a ValueError naming ``where``: they mean the annotation and the image disagree in size. These
    checks run before pycocotools sees the polygon (it allocates without bound on NaN coordinates or a huge size).
    """
    check_image_size(height, width, where)
    if not polygons:
        raise ValueError(f"{where}: no polygon to rasterise.")
    for index, polygon in enumerate(polygons):
        coords = polygon_coordinates(polygon, where, index)
        if coords is None:
            raise ValueError(f"{where}: polygon {index} has fewer than 3 points; it cannot be rasterised.")
        _check_polygon_bounds(coords, height, width, where)
    rles = mask_utils.frPyObjects([[float(v) for v in p] for p in polygons], height, width)
    return rle_to_schema(mask_utils.merge(rles, intersect=False) if len(rles) > 1 else rles[0])


def _rle_segmentation(segmentation: Mapping[str, Any], height: int, width: int, where: str) -> dict[str, Any]:
    """A COCO RLE (compressed or uncompressed) checked against the image size and its own run lengths."""
    if "counts" not in segmentation or "size" not in segmentation:
        raise ValueError(f"{where}: RLE segmentation needs 'counts' and 'size', got keys {sorted(segmentation)}.")
    size = segmentation["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) and v >= 0 for v in size)):
        raise ValueError(
            f"{where}: RLE 'size' must be [H, W] (two non-negative integers), got {_preview(size)}; the annotation is "
            "corrupted: download it again."
        )
    if [int(v) for v in size] != [height, width]:
        raise ValueError(
            f"{where}: mask size {[int(v) for v in size]} (HxW) disagrees with the image size {[height, width]}; the "
            "annotation belongs to another image or the image was resized."
        )
    counts = segmentation["counts"]
    if isinstance(counts, (list, tuple)):  # uncompressed RLE (iscrowd annotations)
        odd = [c for c in counts if not _is_int(c)]
        if odd:
            raise ValueError(
                f"{where}: malformed RLE: uncompressed counts must be non-negative integers, got {odd[0]!r}; the "
                "annotation is corrupted: download it again."
            )
    try:
        return normalize_rle({"size": [height, width], "counts": counts})
    except ValueError as error:
        raise ValueError(
            f"{where}: malformed RLE ({error}); the annotation is corrupted: download it again."
        ) from None


def segmentation_to_rle(segmentation: Any, height: int, width: int, where: str) -> dict[str, Any] | None:
    """A COCO ``segmentation`` (polygon list, uncompressed RLE or compressed RLE) as a compressed RLE.

    Returns ``None`` when there is nothing to rasterise (missing / empty segmentation, only degenerate polygons, a
    mask without foreground pixels). An RLE whose ``size`` is not ``[height, width]`` or whose run lengths do not
    cover the image, a polygon with NaN / infinite / non-numeric coordinates or outside the image raise a ValueError
    naming ``where``.
    """
    if segmentation is None:
        return None
    if isinstance(segmentation, (Mapping, list, tuple)) and len(segmentation) == 0:
        return None
    check_image_size(height, width, where)
    if isinstance(segmentation, Mapping):
        rle = _rle_segmentation(segmentation, height, width, where)
    elif isinstance(segmentation, (list, tuple)):
        if not isinstance(segmentation[0], (list, tuple, np.ndarray, Mapping)):
            segmentation = [segmentation]  # a single flat polygon
        polygons = valid_polygons(segmentation, where)
        if not polygons:
            return None
        rle = polygons_to_rle(polygons, height, width, where)
    else:
        raise ValueError(f"{where}: unsupported segmentation of type {type(segmentation).__name__}.")
    return rle if rle_area(rle) > 0 else None


def box_values(box: Any) -> list[float] | None:
    """``box`` as 4 finite floats, or ``None`` when it is not 4 finite real numbers."""
    if isinstance(box, (str, bytes, Mapping)) or not hasattr(box, "__len__") or len(box) != 4:
        return None
    values = list(box)
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return None
    return [float(v) for v in values]


def checked_box(box: Any, where: str, name: str = "bbox") -> list[float]:
    """A ``[x, y, w, h]`` box as 4 floats; NaN / infinite / non-numeric values, a wrong length or a negative width or
    height raise a ValueError naming ``where`` and the box."""
    values = box_values(box)
    if values is None:
        raise ValueError(
            f"{where}: {name} {_preview(box)} is not 4 finite numbers [x, y, w, h]; fix the annotation, or remove its "
            f"'{name}' (the mask's tight box is used then)."
        )
    if values[2] < 0 or values[3] < 0:
        raise ValueError(
            f"{where}: {name} {_preview(box)} has a negative width or height; fix the annotation, or remove its "
            f"'{name}' (the mask's tight box is used then)."
        )
    return values


def checked_xyxy_box(box: Any, where: str, name: str = "bbox_2d") -> list[float]:
    """An ``[x1, y1, x2, y2]`` box as ``[x, y, w, h]``; malformed or inverted boxes raise a ValueError naming
    ``where`` and the box."""
    values = box_values(box)
    if values is None:
        raise ValueError(f"{where}: {name} {_preview(box)} is not 4 finite numbers [x1, y1, x2, y2]; the file is "
                         "corrupted: fix the row or download the file again.")
    if values[2] < values[0] or values[3] < values[1]:
        raise ValueError(f"{where}: {name} {_preview(box)} has x2 < x1 or y2 < y1; the file is corrupted: fix the row "
                         "or download the file again.")
    return xyxy_to_xywh(values)


def xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    """``[x1, y1, x2, y2]`` to ``[x, y, w, h]``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]

