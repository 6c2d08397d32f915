"""ReasonSeg (LISA) from its release folders.

On-disk layout::

    <data_dir>/<split>/<name>.jpg     # split: train (239 images), val (200), test (779)
    <data_dir>/<split>/<name>.json    # {"text": [str, ...] | str, "is_sentence": bool,
                                      #  "shapes": [{"label": "target" | "ignore" | "flag", "points": [[x, y], ...]}]}

Decisions:

* **Rows**: one per instruction text (train files have 1-5 rephrasings); ``texts="first"`` keeps only ``text[0]``
  (LISA's evaluation protocol). ``sample_id`` is ``"{name}/{index}"``, ``image_id`` is ``name``.
* **Targets**: all ``target`` polygons of a file form **one** instance (one merged COCO-RLE mask), because the
  benchmark's ground truth is a single binary mask and the release does not say which polygons are parts of one
  object. ``instance_ids == [name]``; the box is the tight box of the merged mask.
* **Ignore**: labels containing ``"ignore"`` form ``ignore_mask`` (pixels excluded from scoring); ``"flag"`` shapes
  are deprecated marks and are dropped; any other label counts as target (as LISA treats it) and is reported as
  a note. Where target and ignore polygons overlap, LISA's painter's order decides: polygons are drawn from
  largest to smallest area, each pixel taking the label of the smallest polygon covering it (only then are masks
  decoded).
* **Query type**: ``is_sentence`` marks long (sentence) versus short (phrase) queries. The schema has no column
  for it, so select with ``query_type="long"`` / ``"short"`` (default ``"all"``).
* Files without any target polygon (two test files) are skipped and counted in the load report, as are files
  without any instruction text. Degenerate polygons (fewer than 3 points, or no pixel inside) are dropped; a
  polygon with NaN / infinite / non-numeric points, ``points`` that are not ``[[x, y], ...]`` or an ``is_sentence``
  that is not a boolean raise a ValueError naming the file.
* Rasterisation is pycocotools' (may differ from LISA's OpenCV fill on boundary pixels).
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any, Literal, Mapping

import datasets
import numpy as np

from ..utils.logging import get_logger
from ..utils.masks import decode_rle, encode_rle
from ._annotations import polygons_to_rle, rle_area, rle_box, rles_overlap, union_rle, valid_polygons
from ._common import LoadReport, dataset_from_rows, make_row
from ._files import PathLike, data_file_not_found, progress, read_json
from ._images import image_by_path, image_size
from .schema import SEGMENTATION_FEATURES

logger = get_logger(__name__)

SOURCE = "reasonseg"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
NO_TARGET_POLYGON = "no target polygon in the annotation"
EMPTY_TEXT = "empty instruction text"


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _texts(annotation: Mapping[str, Any], path: Path) -> list[str]:
    text = annotation.get("text")
    if isinstance(text, str):
        return [text]
    if isinstance(text, list) and all(isinstance(t, str) for t in text):
        return list(text)
    raise ValueError(f"{path}: 'text' must be a string or a list of strings, got {type(text).__name__}.")


def _points(shape: Mapping[str, Any], where: str) -> list:
    """A labelme shape's ``points``, which must be ``[[x, y], ...]`` (the values are checked when rasterised)."""
    points = shape.get("points", [])
    if isinstance(points, list) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in points):
        return points
    if not isinstance(points, list):
        got = f"{type(points).__name__} {points!r}"[:80]
    elif all(isinstance(p, (list, tuple)) for p in points) and len({len(p) for p in points}) == 1:
        got = f"shape ({len(points)}, {len(points[0])})"
    else:
        got = "a ragged list (or not a list of points)"
    raise ValueError(f"{where}: 'points' must be [[x, y], ...], got {got}; fix the annotation or download it again.")


def _flag(annotation: Mapping[str, Any], key: str, path: Path) -> bool:
    value = annotation.get(key, False)
    if isinstance(value, bool) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"{path}: {key!r} must be true or false, got {value!r}; fix the annotation or download it again.")


def _declared_size(annotation: Mapping[str, Any], path: Path) -> tuple[int, int] | None:
    """``(imageHeight, imageWidth)`` when the annotation declares both, checked to be positive integers."""
    declared = []
    for key in ("imageHeight", "imageWidth"):
        value = annotation.get(key)
        if value is None:
            return None
        if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
                and float(value).is_integer() and value > 0):
            raise ValueError(
                f"{path}: {key} {value!r} is not a positive integer; fix it or remove it (the image header gives the "
                "size)."
            )
        declared.append(int(value))
    return declared[0], declared[1]


def _shapes(annotation: Mapping[str, Any], path: Path, height: int, width: int) -> tuple[list, list, list[str]]:
    """Per-polygon ``(area, is_ignore, rle)`` for targets and ignores, plus unexpected labels seen."""
    shapes = annotation.get("shapes")
    if not isinstance(shapes, list):
        raise ValueError(f"{path}: 'shapes' must be a list of labelme shapes; this is not a ReasonSeg annotation.")
    targets, ignores, odd_labels = [], [], []
    for index, shape in enumerate(shapes):
        if not isinstance(shape, Mapping):
            raise ValueError(
                f"{path}: shape {index} must be an object with 'label' and 'points', got {type(shape).__name__}; "
                "this is not a ReasonSeg annotation."
            )
        label = str(shape.get("label", "")).strip().lower()
        if label == "flag":
            continue
        where = f"{path} shape {index}"
        polygons = valid_polygons([_points(shape, where)], where)
        if not polygons:
            continue
        rle = polygons_to_rle(polygons, height, width, where)
        if rle_area(rle) == 0:  # a degenerate polygon with no pixel inside
            continue
        if "ignore" in label:
            ignores.append(rle)
        else:
            if label != "target":
                odd_labels.append(label)
            targets.append(rle)
    return targets, ignores, odd_labels


def _resolve(
    targets: list[dict[str, Any]], ignores: list[dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(target RLE, ignore RLE or None); painter's order (largest area first) only where the two overlap."""
    target = union_rle(targets)
    if not ignores:
        return target, None
    ignore = union_rle(ignores)
    if not rles_overlap(target, ignore):
        return target, ignore
    labelled = [(rle_area(r), 1, r) for r in targets] + [(rle_area(r), 255, r) for r in ignores]
    labelled.sort(key=lambda item: -item[0])  # stable: equal areas keep file order
    canvas = np.zeros(decode_rle(target).shape, dtype=np.uint8)
    for _, value, rle in labelled:
        canvas[decode_rle(rle).astype(bool)] = value
    ignore_mask = encode_rle(canvas == 255)
    return encode_rle(canvas == 1), ignore_mask if rle_area(ignore_mask) else None


def load_reasonseg(
    data_dir: PathLike,
    split: str,
    *,
    query_type: Literal["all", "long", "short"] = "all",
    texts: Literal["all", "first"] = "all",
) -> datasets.Dataset:
    """Load one ReasonSeg split as :data:`~segcompass.data.schema.SEGMENTATION_FEATURES` (see module docstring).

    Args:
        data_dir: folder holding ``train/``, ``val/``, ``test/``.
        split: the sub-folder to read.
        query_type: ``"all"``, ``"long"`` (``is_sentence`` true) or ``"short"`` (``is_sentence`` false).
        texts: ``"all"`` (one row per text) or ``"first"`` (only ``text[0]``, LISA's protocol).

    Image sizes come from the image headers (a ``imageHeight`` / ``imageWidth`` in the json must agree).
    An image without its ``.json`` (or the reverse), invalid JSON, or a polygon outside the image raise a
    ValueError naming the file.
    """
    if query_type not in ("all", "long", "short"):
        raise ValueError(f"query_type={query_type!r} must be 'all', 'long' or 'short'.")
    if texts not in ("all", "first"):
        raise ValueError(f"texts={texts!r} must be 'all' or 'first'.")
    data_dir = Path(data_dir)
    folder = data_dir / split
    if not folder.is_dir():
        present = sorted(p.name for p in data_dir.iterdir() if p.is_dir()) if data_dir.is_dir() else []
        raise data_file_not_found(folder, f"ReasonSeg split folder not found (folders present: {present or 'none'})")
    images = _image_files(folder)
    stems = {p.stem for p in images}
    orphans = sorted(p.name for p in folder.glob("*.json") if p.stem not in stems)
    if orphans:
        raise data_file_not_found(
            folder / orphans[0], f"annotation without an image ({len(orphans)} such json files, e.g. {orphans[:3]})"
        )
    report = LoadReport(source=SOURCE, split=split)
    odd_labels: dict[str, int] = {}
    rows = []
    for image_path in progress(images, desc=f"reasonseg {split}", unit="image"):
        name = image_path.stem
        json_path = image_path.with_suffix(".json")
        if not json_path.is_file():
            raise data_file_not_found(json_path, f"annotation of image {image_path.name} not found; download it again")
        annotation = read_json(json_path, "ReasonSeg annotation")
        if not isinstance(annotation, Mapping):
            raise ValueError(f"{json_path}: expected a JSON object with 'text', 'is_sentence' and 'shapes'.")
        is_sentence = _flag(annotation, "is_sentence", json_path)
        if query_type != "all" and is_sentence != (query_type == "long"):
            continue
        height, width = image_size(image_path, f"{image_path}")
        declared = _declared_size(annotation, json_path)
        if declared is not None and declared != (height, width):
            raise ValueError(
                f"{json_path}: annotation is for a {declared[0]}x{declared[1]} (HxW) image but {image_path} is "
                f"{height}x{width}; use the original image."
            )
        instructions = _texts(annotation, json_path)
        if texts == "first":
            instructions = instructions[:1]
        if not instructions:
            report.skip(EMPTY_TEXT, f"{name}/0")
            continue
        targets, ignores, odd = _shapes(annotation, json_path, height, width)
        for label in odd:
            odd_labels[label] = odd_labels.get(label, 0) + 1
        if not targets:
            report.skip(NO_TARGET_POLYGON, name, count=max(len(instructions), 1))
            continue
        target, ignore = _resolve(targets, ignores)
        image = image_by_path(image_path)
        for index, text in enumerate(instructions):
            sample_id = f"{name}/{index}"
            if not text.strip():
                report.skip(EMPTY_TEXT, sample_id)
                continue
            rows.append(
                make_row(
                    image=image,
                    instruction=text.strip(),
                    masks=[target],
                    boxes=[rle_box(target)],
                    height=height,
                    width=width,
                    image_id=name,
                    sample_id=sample_id,
                    instance_ids=[name],
                    split=split,
                    source=SOURCE,
                    ignore_mask=ignore,
                )
            )
    if odd_labels:
        report.notes.append(f"shape labels other than target/ignore/flag were treated as target: {odd_labels}")
    logger.info("reasonseg %s: %d rows from %d images", split, len(rows), len(images))
    return dataset_from_rows(rows, SEGMENTATION_FEATURES, report)
