"""Tiny fixture files in each benchmark's real on-disk format, written into ``tmp_path`` (helpers + pytest fixtures;
the fixtures are re-exported by ``conftest.py``).

Geometry is chosen so the expected masks are known exactly: pycocotools fills an axis-aligned polygon
``(x0, y0)-(x1, y1)`` as the pixels ``[y0:y1, x0:x1]``, which :func:`rect_mask` reproduces with numpy.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

# ---------------------------------------------------------------------------------------------------------------
# geometry helpers
# ---------------------------------------------------------------------------------------------------------------


def rect_polygon(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    """Flat COCO polygon of an axis-aligned rectangle."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def rect_points(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    """labelme ``points`` of an axis-aligned rectangle."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def rect_mask(height: int, width: int, *rects: tuple[int, int, int, int]) -> np.ndarray:
    """Boolean mask with the given ``(x0, y0, x1, y1)`` rectangles filled as ``[y0:y1, x0:x1]``."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in rects:
        mask[y0:y1, x0:x1] = True
    return mask


def pixel_centres_inside(height: int, width: int, points: list[list[float]]) -> np.ndarray:
    """Independent rasterisation: pixels whose centre lies inside the polygon (even-odd ray casting)."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    inside = np.zeros((height, width), dtype=bool)
    for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1]):
        if y1 == y2:
            continue
        inside ^= ((y1 > ys) != (y2 > ys)) & (xs < (x2 - x1) * (ys - y1) / (y2 - y1) + x1)
    return inside


def decode(rle: dict[str, Any]) -> np.ndarray:
    """Decode a schema RLE (counts as str) with pycocotools."""
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE (``iscrowd`` style): column-major run lengths starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def write_image(path: Path, height: int, width: int, color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    """A small solid RGB image (JPEG or PNG by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), color).save(path)
    return path


def png_bytes(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def coco_name(image_id: int) -> str:
    return f"COCO_train2014_{image_id:012d}.jpg"


# ---------------------------------------------------------------------------------------------------------------
# COCO images + instances.json (shared by RefCOCO and gRefCOCO)
# ---------------------------------------------------------------------------------------------------------------

IMAGES = {1: (24, 32), 2: (20, 30), 3: (16, 16)}
"""image id -> (height, width)."""

MASK_103 = rect_mask(20, 30, (10, 5, 20, 10))
MASK_104 = rect_mask(20, 30, (0, 0, 4, 4))
EXPECTED_MASKS = {
    101: rect_mask(24, 32, (4, 4, 12, 10)),
    102: rect_mask(24, 32, (16, 2, 20, 6), (22, 8, 26, 12)),
    103: MASK_103,
    104: MASK_104,
}


def instances_json() -> dict[str, Any]:
    compressed = mask_utils.encode(np.asfortranarray(MASK_104.astype(np.uint8)))
    return {
        "images": [
            {"id": i, "file_name": coco_name(i), "height": h, "width": w} for i, (h, w) in IMAGES.items()
        ],
        "annotations": [
            {"id": 101, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [4, 4, 8, 6],
             "segmentation": [rect_polygon(4, 4, 12, 10)]},
            {"id": 102, "image_id": 1, "category_id": 2, "iscrowd": 0, "bbox": [16, 2, 10, 10],
             "segmentation": [rect_polygon(16, 2, 20, 6), rect_polygon(22, 8, 26, 12)]},
            {"id": 103, "image_id": 2, "category_id": 1, "iscrowd": 1, "bbox": [10, 5, 10, 5],
             "segmentation": uncompressed_rle(MASK_103)},
            {"id": 104, "image_id": 2, "category_id": 3, "iscrowd": 0, "bbox": [0, 0, 4, 4],
             "segmentation": {"size": [20, 30], "counts": compressed["counts"].decode("ascii")}},
            {"id": 105, "image_id": 3, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 1, 1], "segmentation": []},
        ],
        "categories": [{"id": 1, "name": "box"}, {"id": 2, "name": "bar"}, {"id": 3, "name": "dot"}],
    }


def write_coco_images(root: Path, subdir: str = "images/train2014") -> Path:
    folder = root / subdir
    for image_id, (h, w) in IMAGES.items():
        write_image(folder / coco_name(image_id), h, w)
    return folder


def sentence(sent_id: int, text: str) -> dict[str, Any]:
    return {"sent_id": sent_id, "raw": text.upper(), "sent": text, "tokens": text.split()}


def refer_refs() -> list[dict[str, Any]]:
    def ref(ref_id, ann_id, image_id, split, sents):
        return {
            "ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": 1, "split": split,
            "sent_ids": [s["sent_id"] for s in sents], "sentences": sents,
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
        }

    return [
        ref(1, 101, 1, "val", [sentence(11, "left box"), sentence(12, "the red box")]),
        ref(2, 102, 1, "val", [sentence(21, "two bars")]),
        ref(3, 103, 2, "testA", [sentence(31, "crowd"), sentence(32, "the crowd region")]),
        ref(4, 104, 2, "testB", [sentence(41, "corner dot")]),
        ref(5, 105, 3, "val", [sentence(51, "nothing drawn"), sentence(52, "unsegmented")]),
        ref(6, 101, 1, "train", [sentence(61, "train box")]),
    ]


@pytest.fixture
def refer_root(tmp_path: Path) -> Path:
    """refer layout: ``refcoco/refs(unc).p`` (pickle protocol 2), ``refcocog/refs(umd).p``, instances.json, images."""
    root = tmp_path / "refer"
    write_coco_images(root)
    for dataset, split_by in (("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")):
        folder = root / dataset
        folder.mkdir(parents=True)
        (folder / "instances.json").write_text(json.dumps(instances_json()))
        with open(folder / f"refs({split_by}).p", "wb") as handle:
            pickle.dump(refer_refs(), handle, protocol=2)
    return root


def grefs() -> list[dict[str, Any]]:
    def ref(ref_id, ann_ids, image_id, split, sents, no_target):
        return {
            "ref_id": ref_id, "ann_id": ann_ids, "image_id": image_id, "category_id": [1] * len(ann_ids),
            "split": split, "sent_ids": [s["sent_id"] for s in sents], "sentences": sents, "no_target": no_target,
            "file_name": coco_name(image_id),
        }

    return [
        ref(1, [101, 102], 1, "val", [sentence(11, "all shapes"), sentence(12, "box and bars")], False),
        ref(2, [-1], 2, "val", [sentence(21, "the blue elephant")], True),
        ref(3, [103], 2, "val", [sentence(31, "crowd")], False),
        ref(4, [104], 2, "testA", [sentence(41, "dot")], False),
    ]


@pytest.fixture
def grefcoco_root(tmp_path: Path) -> Path:
    root = tmp_path / "gres"
    write_coco_images(root, "train2014")
    folder = root / "grefcoco"
    folder.mkdir(parents=True)
    (folder / "instances.json").write_text(json.dumps(instances_json()))
    (folder / "grefs(unc).json").write_text(json.dumps(grefs()))
    return root


# ---------------------------------------------------------------------------------------------------------------
# ReasonSeg
# ---------------------------------------------------------------------------------------------------------------

REASONSEG_SIZES = {"a": (24, 32), "b": (20, 20), "c": (20, 20), "d": (16, 16)}


def reasonseg_annotations() -> dict[str, dict[str, Any]]:
    return {
        "a": {
            "text": ["What would you sit on here?", "Find the seat."], "is_sentence": True,
            "shapes": [
                {"label": "target", "points": rect_points(2, 2, 14, 12), "shape_type": "polygon"},
                {"label": "ignore", "points": rect_points(20, 2, 28, 10), "shape_type": "polygon"},
                {"label": "flag", "points": rect_points(0, 0, 30, 20), "shape_type": "polygon"},
            ],
        },
        "b": {
            "text": "the lamp", "is_sentence": False,
            "shapes": [
                {"label": "target", "points": rect_points(0, 0, 5, 5)},
                {"label": "target", "points": rect_points(10, 10, 15, 18)},
            ],
        },
        "c": {  # an ignore hole inside the target: painter's order (large first) keeps the hole as ignore
            "text": ["Which region is the table?"], "is_sentence": True,
            "shapes": [
                {"label": "ignore", "points": rect_points(4, 4, 8, 8)},
                {"label": "target", "points": rect_points(0, 0, 16, 16)},
            ],
        },
        "d": {"text": ["no polygon here"], "is_sentence": False, "shapes": [{"label": "ignore",
                                                                             "points": rect_points(0, 0, 4, 4)}]},
    }


@pytest.fixture
def reasonseg_root(tmp_path: Path) -> Path:
    root = tmp_path / "ReasonSeg"
    for name, annotation in reasonseg_annotations().items():
        h, w = REASONSEG_SIZES[name]
        write_image(root / "val" / f"{name}.jpg", h, w)
        (root / "val" / f"{name}.json").write_text(json.dumps(annotation))
    return root


# ---------------------------------------------------------------------------------------------------------------
# parquet mirrors
# ---------------------------------------------------------------------------------------------------------------

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _write_parquet(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


SEG_ZERO_MASKS = [rect_mask(12, 16, (2, 3, 9, 8)), rect_mask(10, 10, (0, 0, 10, 5))]


@pytest.fixture
def seg_zero_file(tmp_path: Path) -> Path:
    """Seg-Zero-style eval mirror: 2 usable rows + 1 all-false mask."""
    schema = pa.schema([
        ("image", IMAGE_STRUCT), ("text", pa.string()), ("mask", pa.list_(pa.list_(pa.bool_()))),
        ("image_id", pa.string()), ("ann_id", pa.string()), ("img_height", pa.int64()), ("img_width", pa.int64()),
    ])
    rows = []
    for index, mask in enumerate([*SEG_ZERO_MASKS, np.zeros((8, 8), dtype=bool)]):
        h, w = mask.shape
        rows.append({
            "image": {"bytes": png_bytes(h, w), "path": None}, "text": f"object number {index}",
            "mask": mask.tolist(), "image_id": f"img{index}", "ann_id": f"ann{index}", "img_height": h, "img_width": w,
        })
    path = tmp_path / "mirrors" / "refcoco_testA" / "data" / "test-00000-of-00001.parquet"
    return _write_parquet(path, rows, schema)


@pytest.fixture
def visionreasoner_file(tmp_path: Path) -> Path:
    schema = pa.schema([
        ("id", pa.string()), ("problem", pa.string()), ("solution", pa.string()), ("image", IMAGE_STRUCT),
        ("img_height", pa.int64()), ("img_width", pa.int64()),
    ])
    rows = [
        {"id": "vr0", "problem": "the two cups", "image": {"bytes": png_bytes(84, 84), "path": None},
         "img_height": 84, "img_width": 84,
         "solution": json.dumps([{"bbox_2d": [1, 2, 11, 22], "point_2d": [5, 10]},
                                 {"bbox_2d": [30, 30, 40, 50], "point_2d": [35, 40]}])},
        {"id": "vr1", "problem": "the plate", "image": {"bytes": png_bytes(84, 84), "path": None},
         "img_height": 84, "img_width": 84, "solution": json.dumps([{"bbox_2d": [0, 0, 8, 8], "point_2d": [4, 4]}])},
    ]
    return _write_parquet(tmp_path / "mirrors" / "vr_7k_840.parquet", rows, schema)


LMMS_SIZE = (24, 32)


@pytest.fixture
def lmms_lab_file(tmp_path: Path) -> Path:
    schema = pa.schema([
        ("question_id", pa.string()), ("image", IMAGE_STRUCT), ("question", pa.string()),
        ("answer", pa.list_(pa.string())), ("segmentation", pa.list_(pa.float32())),
        ("bbox", pa.list_(pa.float32())), ("iscrowd", pa.int8()), ("file_name", pa.string()),
    ])
    h, w = LMMS_SIZE
    question = "Please carefully observe the area circled in the image and come up with a caption for the area."
    rows = [
        {"question_id": "q1", "image": {"bytes": png_bytes(h, w), "path": None}, "question": question,
         "answer": ["left box", "small box"], "segmentation": rect_polygon(4, 4, 12, 10), "bbox": [4, 4, 8, 6],
         "iscrowd": 0, "file_name": "COCO_train2014_000000000042_101.jpg"},
        {"question_id": "q2", "image": {"bytes": png_bytes(h, w), "path": None}, "question": question,
         "answer": ["bar"], "segmentation": rect_polygon(16, 2, 20, 6), "bbox": [16, 2, 4, 4], "iscrowd": 0,
         "file_name": "COCO_train2014_000000000043_102.jpg"},
    ]
    return _write_parquet(tmp_path / "mirrors" / "lmms" / "testA-00000-of-00001.parquet", rows, schema)


# ---------------------------------------------------------------------------------------------------------------
# corpora
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def obelics_file(tmp_path: Path) -> Path:
    root = tmp_path / "obelics"
    write_image(root / "imgs" / "x.png", 8, 10)
    write_image(root / "imgs" / "y.png", 6, 6)
    docs = [
        {"texts": ["Intro text.", None, "After the image.", None], "images": [None, "imgs/x.png", None, "imgs/y.png"],
         "metadata": "{}"},
        {"texts": ["Only words."], "images": [None]},
        {"texts": [None, "caption"], "images": ["https://example.com/cat.jpg", None]},
    ]
    path = root / "docs.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    return path


@pytest.fixture
def pairs_dir(tmp_path: Path) -> Path:
    root = tmp_path / "pairs"
    write_image(root / "a.jpg", 8, 8)
    write_image(root / "b.jpg", 6, 9)
    (root / "pairs.jsonl").write_text(
        json.dumps({"image": "a.jpg", "text": "a red square"}) + "\n" + json.dumps({"image": "b.jpg", "text": "wide"})
    )
    (root / "pairs.csv").write_text("image,text\na.jpg,again red\n")
    pq.write_table(
        pa.Table.from_pylist(
            [{"image": {"bytes": png_bytes(5, 7), "path": None}, "caption": "embedded"}],
            schema=pa.schema([("image", IMAGE_STRUCT), ("caption", pa.string())]),
        ),
        root / "pairs.parquet",
    )
    return root
