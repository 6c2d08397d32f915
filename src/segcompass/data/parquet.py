"""Local copies of the Hugging Face parquet mirrors of the benchmarks, converted into the SegCompass schema.

Flavours (detected from the columns with ``flavour="auto"``):

``seg_zero``
    ``Ricky06662/refcoco_*``, ``refcocoplus_*``, ``refcocog_*``, ``ReasonSeg_val`` / ``_test``: ``image, text,
    mask (list<list<bool>>, img_height x img_width), image_id, ann_id, img_height, img_width[, bbox]``. The dense
    mask is RLE-encoded (the one place where a full mask is read, since that is the stored form); ``boxes`` are
    the mask's tight box (the ``bbox`` column's convention is undocumented). A 3-D ``mask`` gives one instance per
    plane (bool, or integers read nonzero as foreground; null cells or float values other than 0 / 1 raise). An
    all-false or missing mask, or an empty ``text``, is skipped (ReasonSeg test has two files without polygons). In the
    ReasonSeg mirrors the ignore regions were merged into the mask as foreground; the report carries a note.
``visionreasoner``
    ``Ricky06662/refCOCOg_9k_840``, ``VisionReasoner_multi_object_*_840`` (RL training sets): ``id, problem,
    solution, image, img_height, img_width`` with ``solution`` a JSON list of ``{"bbox_2d": [x1, y1, x2, y2],
    "point_2d": [x, y]}`` in the 840x840 frame of the stored image. These rows have **no mask**. Default
    ``bbox_only="skip"``: they are skipped and counted in the load report (a mask-less row would read as
    no-target); ``"error"`` raises on the first one; ``"keep"`` keeps them with ``masks=[]``, ``no_target=False``
    and the boxes (``[x, y, w, h]`` in the stored image's frame, whose size is ``height`` / ``width``) - usable for
    box rewards, not for mask metrics.
``lmms_lab``
    ``lmms-lab/RefCOCO`` / ``RefCOCO+`` / ``RefCOCOg``: ``question_id, image, question, answer (list of
    expressions), segmentation (one flat polygon), bbox (xywh), iscrowd, file_name``. ``question`` is a captioning
    prompt, so the instruction is an ``answer`` expression: one row per expression (``per="expression"``,
    ``sample_id`` ``"{question_id}/{k}"``) or per object with the first expression (``per="object"``). Only the
    single polygon stored there is available (multi-part COCO objects lose their other parts).

Images are kept as stored (bytes), so the dataset is built with ``Dataset.from_generator`` into the datasets
cache (``HF_HOME`` or ``cache_dir``); the cache key includes every file's
:func:`~segcompass.data._common.file_stamp` (size, mtime, ctime and a content digest: a mirror rewritten with the same
size and mtime is converted again) and :data:`CONVERSION_VERSION`. Row ids (``id`` / ``question_id``) must be unique.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..utils.logging import get_logger
from ..utils.masks import encode_rle
from ._annotations import checked_box, checked_xyxy_box, rle_box, segmentation_to_rle
from ._common import LoadReport, Skip, dataset_from_generator, make_row
from ._files import PathLike, data_file_not_found, file_stamp
from ._images import image_by_path, image_size
from .schema import SEGMENTATION_FEATURES

logger = get_logger(__name__)

FLAVOUR_COLUMNS: dict[str, tuple[str, ...]] = {
    "seg_zero": ("image", "text", "mask"),
    "visionreasoner": ("image", "problem", "solution"),
    "lmms_lab": ("image", "answer", "segmentation"),
}
"""flavour -> columns that identify it (and are required)."""

BATCH_ROWS = 32
CONVERSION_VERSION = "2"
"""Part of the cache key: bump it whenever the conversion of a row changes."""
MISSING_MASK = "missing mask"
EMPTY_MASK = "empty (all-false) mask"
BBOX_ONLY = "bbox-only row (no mask); pass bbox_only='keep' to keep its boxes"
NO_POLYGON = "no segmentation polygon"
NO_EXPRESSION = "no expression"
COCO_NAME = re.compile(r"COCO_[a-z]+\d{4}_0*(\d+)(?:_(\d+))?\.\w+$")


def resolve_parquet_files(path_or_files: PathLike | Sequence[PathLike], split: str) -> list[Path]:
    """Parquet files to read: a file, a list of files, or a directory.

    In a directory (searched recursively), files named ``{split}.parquet`` or ``{split}-*.parquet`` (the Hub's
    ``data/<split>-00000-of-00002.parquet``) are taken when there are any; otherwise every ``*.parquet``.
    """
    if isinstance(path_or_files, (str, os.PathLike)):
        path = Path(path_or_files)
        if path.is_dir():
            every = sorted(path.rglob("*.parquet"))
            if not every:
                raise data_file_not_found(path, "no *.parquet file in this directory")
            named = [p for p in every if p.name == f"{split}.parquet" or p.name.startswith(f"{split}-")]
            return named or every
        files = [path]
    else:
        files = [Path(p) for p in path_or_files]
        if not files:
            raise ValueError("path_or_files is an empty list; pass at least one parquet file.")
    for file in files:
        if not file.is_file():
            raise data_file_not_found(file, "parquet file not found")
    return files


def _schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise ValueError(f"{path} is not a readable parquet file ({error}); download it again.") from None


def detect_flavour(path: Path) -> str:
    """The flavour whose identifying columns the file has; a ValueError lists the columns otherwise."""
    names = set(_schema(path).names)
    for flavour, required in FLAVOUR_COLUMNS.items():
        if set(required) <= names:
            return flavour
    raise ValueError(
        f"{path}: columns {sorted(names)} match no known mirror; expected one of "
        f"{ {k: list(v) for k, v in FLAVOUR_COLUMNS.items()} }. Pass flavour= only for a file with those columns."
    )


def _image(value: Any, base: Path, where: str) -> tuple[dict[str, Any], tuple[int, int]]:
    """(Image storage, (H, W)) of a stored image: ``{"bytes", "path"}`` struct, raw bytes, or a path string."""
    if isinstance(value, dict):
        if value.get("bytes"):
            data = value["bytes"]
            return {"bytes": data, "path": None}, image_size(data, where)
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value), "path": None}, image_size(bytes(value), where)
    if isinstance(value, str) and value:
        path = Path(value) if os.path.isabs(value) else base / value
        if not path.is_file():
            raise data_file_not_found(path, f"{where}: image not found")
        return image_by_path(path), image_size(path, where)
    raise ValueError(f"{where}: the row has no image (got {type(value).__name__}); the file is incomplete.")


def _masks(value: pa.Scalar, where: str) -> list[np.ndarray] | None:
    """Boolean ``(H, W)`` planes of a ``list<list<bool>>`` (one plane) or ``list<list<list<bool>>>`` scalar."""
    if not value.is_valid:
        return None
    depth, kind = 0, value.type
    while pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        depth, kind = depth + 1, kind.value_type
    if depth not in (2, 3):
        raise ValueError(f"{where}: 'mask' must be 2-D or 3-D nested lists, got type {value.type}.")
    if not (pa.types.is_boolean(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        raise ValueError(f"{where}: 'mask' must hold booleans, got type {value.type}; the file is not a mask mirror.")
    planes = [value.values] if depth == 2 else [value.values[i].values for i in range(len(value.values))]
    out = []
    for rows in planes:
        height = len(rows)
        lengths = pc.list_value_length(rows).to_numpy(zero_copy_only=False) if height else np.zeros(0)
        if height == 0 or rows.null_count or (lengths != lengths[0]).any():
            raise ValueError(f"{where}: 'mask' rows are ragged, missing or empty; the file is corrupted.")
        cells = rows.flatten()
        if cells.null_count:
            raise ValueError(
                f"{where}: 'mask' has {cells.null_count} null cell(s); a pixel is either in the mask or not, so the "
                "file is corrupted: download it again."
            )
        flat = cells.to_numpy(zero_copy_only=False)
        if pa.types.is_floating(kind):
            odd = flat[(flat != 0) & (flat != 1)]  # NaN included
            if odd.size:
                raise ValueError(
                    f"{where}: 'mask' holds float values other than 0 and 1 ({odd[0]:g}); the mirror's masks are "
                    "boolean, so the file is corrupted: download it again."
                )
        out.append(flat.reshape(height, int(lengths[0])) != 0)
    return out


def _text(value: Any, column: str, where: str) -> str:
    """A text column's value, stripped (``""`` for a missing one); a non-string raises naming the column."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where}: {column!r} must be a string, got {type(value).__name__}.")
    return value.strip()


def _sample_id(row: dict[str, Any], stem: str, index: int) -> str:
    for key in ("id", "question_id"):
        if row.get(key) is not None:
            return str(row[key])
    return f"{stem}/{index}"


def _check_size(size: tuple[int, int], row: dict[str, Any], where: str) -> None:
    declared = (row.get("img_height"), row.get("img_width"))
    if None not in declared and not all(isinstance(v, int) and not isinstance(v, bool) for v in declared):
        raise ValueError(f"{where}: img_height x img_width = {declared[0]!r}x{declared[1]!r} are not integers.")
    if None not in declared and (int(declared[0]), int(declared[1])) != size:
        raise ValueError(
            f"{where}: img_height x img_width = {declared[0]}x{declared[1]} but the stored image is "
            f"{size[0]}x{size[1]}; the mirror file is inconsistent."
        )


Row = dict[str, Any]


def _seg_zero_rows(
    row: Row, mask_value: pa.Scalar, size: tuple[int, int], common: Row, where: str
) -> Iterator[Row | Skip]:
    """One row with the RLE of each non-empty mask plane, or a :class:`Skip`."""
    _check_size(size, row, where)
    instruction = _text(row.get("text"), "text", where)
    if not instruction:
        yield Skip(NO_EXPRESSION, common["sample_id"])
        return
    planes = _masks(mask_value, where)
    if planes is None:
        yield Skip(MISSING_MASK, common["sample_id"])
        return
    for plane in planes:
        if plane.shape != size:
            raise ValueError(
                f"{where}: mask is {plane.shape[0]}x{plane.shape[1]} but the image is {size[0]}x{size[1]} (HxW)."
            )
    planes = [p for p in planes if p.any()]
    if not planes:
        yield Skip(EMPTY_MASK, common["sample_id"])
        return
    masks = [encode_rle(p) for p in planes]
    ann = row.get("ann_id")
    if ann is None:
        ann = common["sample_id"]
    ann_ids = [str(a) for a in ann] if isinstance(ann, list) else [str(ann)]
    if len(ann_ids) != len(masks):
        ann_ids = [f"{common['sample_id']}/{k}" for k in range(len(masks))]
    yield make_row(
        instruction=instruction, masks=masks, boxes=[rle_box(m) for m in masks],
        instance_ids=ann_ids, **common,
    )


def _visionreasoner_rows(row: Row, common: Row, where: str, bbox_only: str) -> Iterator[Row | Skip]:
    """A :class:`Skip` (``bbox_only="skip"``), an error, or a box-only row (``"keep"``)."""
    if bbox_only == "skip":
        yield Skip(BBOX_ONLY, common["sample_id"])
        return
    if bbox_only == "error":
        raise ValueError(
            f"{where}: row {common['sample_id']} has boxes only (no mask); pass bbox_only='skip' to skip such rows "
            "(they are counted in the load report) or 'keep' to keep their boxes with empty masks."
        )
    instruction = _text(row.get("problem"), "problem", where)
    if not instruction:
        yield Skip(NO_EXPRESSION, common["sample_id"])
        return
    solution = row.get("solution")
    try:
        items = json.loads(solution) if isinstance(solution, str) else (solution or [])
    except json.JSONDecodeError:
        raise ValueError(f"{where}: 'solution' is not valid JSON: {str(solution)[:80]!r}.") from None
    if not isinstance(items, list):
        raise ValueError(
            f"{where}: 'solution' must be a JSON list of {{\"bbox_2d\": [x1, y1, x2, y2], ...}} objects, got "
            f"{type(items).__name__}; the file is corrupted: download it again."
        )
    for index, item in enumerate(items):
        if not isinstance(item, dict) or "bbox_2d" not in item:
            raise ValueError(
                f"{where}: 'solution' item {index} must be an object with 'bbox_2d', got "
                f"{type(item).__name__}; the file is corrupted: download it again."
            )
    boxes = [checked_xyxy_box(item["bbox_2d"], where) for item in items]
    yield make_row(
        instruction=instruction, masks=[], boxes=boxes,
        instance_ids=[f"{common['sample_id']}/{k}" for k in range(len(boxes))], **{**common, "no_target": not boxes},
    )


def _lmms_lab_rows(row: Row, size: tuple[int, int], common: Row, where: str, per: str) -> Iterator[Row | Skip]:
    """One row per expression (or the first one) sharing the polygon's RLE, or a :class:`Skip`."""
    answers = [str(a).strip() for a in (row.get("answer") or []) if str(a).strip()]
    if per == "object":
        answers = answers[:1]
    if not answers:
        yield Skip(NO_EXPRESSION, common["sample_id"])
        return
    rle = segmentation_to_rle(row.get("segmentation"), size[0], size[1], where)
    if rle is None:
        yield Skip(NO_POLYGON, common["sample_id"])
        return
    bbox = row.get("bbox")
    box = rle_box(rle) if bbox is None or len(bbox) == 0 else checked_box(bbox, where)
    match = COCO_NAME.search(str(row.get("file_name") or ""))
    image_id = str(int(match.group(1))) if match else common["image_id"]
    instance = match.group(2) if match and match.group(2) else common["sample_id"]
    for k, answer in enumerate(answers):
        sample_id = common["sample_id"] if per == "object" else f"{common['sample_id']}/{k}"
        yield make_row(
            instruction=answer, masks=[rle], boxes=[box], instance_ids=[instance],
            **{**common, "image_id": image_id, "sample_id": sample_id},
        )


def _mirror_rows(
    files: list[str],
    stamps: list[tuple[str, int, int, int, str]],
    flavour: str,
    split: str,
    source: str,
    bbox_only: str,
    per: str,
) -> Iterator[dict[str, Any] | Skip]:
    del stamps  # only part of the cache key
    for file in files:
        path = Path(file)
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        light = [n for n in names if n != "mask"]
        index = 0
        batches = parquet.iter_batches(batch_size=BATCH_ROWS, columns=names)
        for batch in datasets.utils.tqdm(batches, desc=f"{path.name}", unit="batch", leave=False,
                                         total=(parquet.metadata.num_rows + BATCH_ROWS - 1) // BATCH_ROWS):
            records = batch.select(light).to_pylist()
            mask_column = batch.column("mask") if "mask" in names else None
            for i, row in enumerate(records):
                sample_id = _sample_id(row, path.stem, index)
                where = f"{path} row {index} (id {sample_id})"
                index += 1
                image, size = _image(row.get("image"), path.parent, where)
                common = dict(
                    image=image, height=size[0], width=size[1], split=split, source=source,
                    image_id=str(row.get("image_id") if row.get("image_id") is not None else sample_id),
                    sample_id=sample_id,
                )
                if flavour == "seg_zero":
                    yield from _seg_zero_rows(row, mask_column[i], size, common, where)
                elif flavour == "visionreasoner":
                    yield from _visionreasoner_rows(row, common, where, bbox_only)
                else:
                    yield from _lmms_lab_rows(row, size, common, where, per)


def load_parquet_mirror(
    path_or_files: PathLike | Sequence[PathLike],
    *,
    split: str,
    flavour: Literal["auto", "seg_zero", "visionreasoner", "lmms_lab"] = "auto",
    source: str | None = None,
    bbox_only: Literal["skip", "error", "keep"] = "skip",
    per: Literal["expression", "object"] = "expression",
    cache_dir: PathLike | None = None,
) -> datasets.Dataset:
    """Convert local parquet mirror files into :data:`~segcompass.data.schema.SEGMENTATION_FEATURES`.

    Args:
        path_or_files: a parquet file, a list of them, or a directory (see :func:`resolve_parquet_files`).
        split: the value of the ``split`` column. Required: the mirrors' own split names do not always match the
            benchmark split (``Ricky06662/refcoco_testA`` stores its rows as split ``test``).
        flavour: ``"auto"`` (from the columns) or one of ``"seg_zero"``, ``"visionreasoner"``, ``"lmms_lab"``.
        source: the ``source`` column (e.g. ``"refcoco"``); default the flavour name.
        bbox_only: what to do with rows that have boxes but no mask (visionreasoner): ``"skip"`` (count them in
            the load report), ``"error"`` or ``"keep"`` (see the module docstring).
        per: lmms_lab only: ``"expression"`` (a row per expression) or ``"object"`` (first expression).
        cache_dir: datasets cache folder (default under ``HF_HOME``).
    """
    if flavour not in ("auto", *FLAVOUR_COLUMNS):
        raise ValueError(f"flavour={flavour!r} is not one of {['auto', *FLAVOUR_COLUMNS]}.")
    if bbox_only not in ("skip", "error", "keep"):
        raise ValueError(f"bbox_only={bbox_only!r} must be 'skip', 'error' or 'keep'.")
    if per not in ("expression", "object"):
        raise ValueError(f"per={per!r} must be 'expression' or 'object'.")
    files = resolve_parquet_files(path_or_files, split)
    detected = [detect_flavour(f) for f in files]
    if flavour == "auto":
        if len(set(detected)) > 1:
            raise ValueError(f"the files mix mirror flavours {dict(zip(map(str, files), detected))}; load them apart.")
        flavour = detected[0]
    else:
        for file in files:
            missing = set(FLAVOUR_COLUMNS[flavour]) - set(_schema(file).names)
            if missing:
                raise ValueError(f"{file} lacks the {flavour} column(s) {sorted(missing)}; check flavour=.")
    report = LoadReport(source=source or flavour, split=split)
    if flavour == "seg_zero" and any("reasonseg" in str(f).lower() for f in files):
        report.notes.append(
            "Seg-Zero's ReasonSeg mirrors merged the ignore regions into the target mask (ignore counted as target); "
            "load the original release with load_reasonseg for LISA-style scoring with ignore_mask."
        )
    gen_kwargs = dict(
        files=[str(f) for f in files], stamps=[file_stamp(f) for f in files], flavour=flavour, split=split,
        source=source or flavour, bbox_only=bbox_only, per=per,
    )
    dataset = dataset_from_generator(
        _mirror_rows, gen_kwargs, SEGMENTATION_FEATURES, report, version=CONVERSION_VERSION, cache_dir=cache_dir
    )
    logger.info("%s mirror (%d file(s)) %s: %d rows", flavour, len(files), split, len(dataset))
    return dataset
