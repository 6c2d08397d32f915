"""Bad-input corpus of the data loaders: RefCOCO / RefCOCO+ / RefCOCOg, gRefCOCO, ReasonSeg, the parquet mirrors,
the image-text corpus loader and the synthetic generator.

Every row writes the loader's real on-disk format (``tests/data/loader_fixtures.py``) with one defect, then loads it:
the loader either returns the right rows (a defect it can skip and report) or raises a typed error naming the file,
the value and the fix. Nothing may crash (a NaN polygon used to make pycocotools allocate until the OOM killer came),
hang, or return a silently wrong mask / box / id.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bad_input_cases import Case, Raises, Returns, ids, run_case
from loader_fixtures import (
    EXPECTED_MASKS,
    IMAGE_STRUCT,
    LMMS_SIZE,
    REASONSEG_SIZES,
    SEG_ZERO_MASKS,
    decode,
    grefs,
    instances_json,
    png_bytes,
    reasonseg_annotations,
    rect_mask,
    rect_points,
    rect_polygon,
    refer_refs,
    write_coco_images,
    write_image,
)

from segcompass.data import (
    UnsafePickleError,
    get_load_report,
    load_grefcoco,
    load_image_text_corpus,
    load_parquet_mirror,
    load_reasonseg,
    load_refcoco,
    load_segmentation_dataset,
)

NAN, INF = float("nan"), float("inf")
NO_SEG = "annotation has no usable segmentation"


# ---------------------------------------------------------------------------------------------------------------
# builders: the real on-disk formats with one defect
# ---------------------------------------------------------------------------------------------------------------


def refer(
    *,
    instances: Callable[[dict], Any] | None = None,
    refs: Callable[[list], Any] | None = None,
    instances_text: str | None = None,
    refs_bytes: bytes | None = None,
    dataset: str = "refcoco",
    split: str = "val",
    **kwargs: Any,
) -> Callable[[Path], Callable[[], Any]]:
    """A refer ``data`` folder (``<dataset>/refs(<split_by>).p`` + ``instances.json`` + images), edited in place by
    ``instances(dict)`` / ``refs(list)``, loaded with :func:`load_refcoco`."""
    split_by = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}[dataset]

    def build(tmp_path: Path) -> Callable[[], Any]:
        root = tmp_path / "refer"
        write_coco_images(root)
        folder = root / dataset
        folder.mkdir(parents=True)
        data, ref_list = instances_json(), refer_refs()
        if instances:
            instances(data)
        if refs:
            refs(ref_list)
        (folder / "instances.json").write_text(instances_text if instances_text is not None else json.dumps(data))
        payload = refs_bytes if refs_bytes is not None else pickle.dumps(ref_list, protocol=2)
        (folder / f"refs({split_by}).p").write_bytes(payload)
        return lambda: load_refcoco(root, split, dataset=dataset, **kwargs)

    return build


def ann(index: int, **fields: Any) -> Callable[[dict], None]:
    """Edit annotation ``index`` of instances.json (101, 102, 103, 104, 105 in order)."""
    return lambda data: data["annotations"][index].update(fields)


def without(kind: str, index: int, key: str) -> Callable[[dict], None]:
    return lambda data: data[kind][index].pop(key)


def gref(*, refs: Callable[[list], Any] | None = None, instances: Callable[[dict], Any] | None = None,
         refs_text: str | None = None, split: str = "val") -> Callable[[Path], Callable[[], Any]]:
    def build(tmp_path: Path) -> Callable[[], Any]:
        root = tmp_path / "gres"
        write_coco_images(root, "train2014")
        folder = root / "grefcoco"
        folder.mkdir(parents=True)
        data, ref_list = instances_json(), grefs()
        if instances:
            instances(data)
        if refs:
            refs(ref_list)
        (folder / "instances.json").write_text(json.dumps(data))
        (folder / "grefs(unc).json").write_text(refs_text if refs_text is not None else json.dumps(ref_list))
        return lambda: load_grefcoco(root, split)

    return build


def reasonseg(edit: Callable[[dict], Any] | None = None, *, raw: dict[str, bytes] | None = None,
              image: dict[str, bytes] | None = None, **kwargs: Any) -> Callable[[Path], Callable[[], Any]]:
    """The ReasonSeg ``val`` folder of the fixtures (a, b, c, d) edited by ``edit(annotations)``; ``raw`` / ``image``
    replace a file's bytes."""

    def build(tmp_path: Path) -> Callable[[], Any]:
        root = tmp_path / "ReasonSeg"
        annotations = reasonseg_annotations()
        if edit:
            edit(annotations)
        for name, annotation in annotations.items():
            h, w = REASONSEG_SIZES[name]
            write_image(root / "val" / f"{name}.jpg", h, w)
            (root / "val" / f"{name}.json").write_text(json.dumps(annotation))
        for name, data in (raw or {}).items():
            (root / "val" / f"{name}.json").write_bytes(data)
        for name, data in (image or {}).items():
            (root / "val" / f"{name}.jpg").write_bytes(data)
        return lambda: load_reasonseg(root, "val", **kwargs)

    return build


def shape(name: str, index: int, **fields: Any) -> Callable[[dict], None]:
    return lambda annotations: annotations[name]["shapes"][index].update(fields)


def _write_parquet(path: Path, rows: list[dict], schema: pa.Schema) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def seg_zero_rows() -> list[dict]:
    rows = []
    for index, mask in enumerate(SEG_ZERO_MASKS):
        h, w = mask.shape
        rows.append({"image": {"bytes": png_bytes(h, w), "path": None}, "text": f"object number {index}",
                     "mask": mask.tolist(), "image_id": f"img{index}", "ann_id": f"ann{index}", "img_height": h,
                     "img_width": w})
    return rows


BOOL_MASK = pa.list_(pa.list_(pa.bool_()))


def seg_zero(edit: Callable[[list], Any] | None = None, *, mask_type: pa.DataType = BOOL_MASK,
             **kwargs: Any) -> Callable[[Path], Callable[[], Any]]:
    def build(tmp_path: Path) -> Callable[[], Any]:
        schema = pa.schema([("image", IMAGE_STRUCT), ("text", pa.string()), ("mask", mask_type),
                            ("image_id", pa.string()), ("ann_id", pa.string()), ("img_height", pa.int64()),
                            ("img_width", pa.int64())])
        rows = seg_zero_rows()
        if edit:
            edit(rows)
        path = _write_parquet(tmp_path / "mirror" / "test.parquet", rows, schema)
        return lambda: load_parquet_mirror(path, split="test", cache_dir=tmp_path / "cache", **kwargs)

    return build


def lmms_rows() -> list[dict]:
    h, w = LMMS_SIZE
    return [
        {"question_id": "q1", "image": {"bytes": png_bytes(h, w), "path": None}, "question": "caption it",
         "answer": ["left box", "small box"], "segmentation": rect_polygon(4, 4, 12, 10), "bbox": [4, 4, 8, 6],
         "iscrowd": 0, "file_name": "COCO_train2014_000000000042_101.jpg"},
        {"question_id": "q2", "image": {"bytes": png_bytes(h, w), "path": None}, "question": "caption it",
         "answer": ["bar"], "segmentation": rect_polygon(16, 2, 20, 6), "bbox": [16, 2, 4, 4], "iscrowd": 0,
         "file_name": "COCO_train2014_000000000043_102.jpg"},
    ]


def lmms(edit: Callable[[list], Any]) -> Callable[[Path], Callable[[], Any]]:
    def build(tmp_path: Path) -> Callable[[], Any]:
        schema = pa.schema([("question_id", pa.string()), ("image", IMAGE_STRUCT), ("question", pa.string()),
                            ("answer", pa.list_(pa.string())), ("segmentation", pa.list_(pa.float64())),
                            ("bbox", pa.list_(pa.float64())), ("iscrowd", pa.int8()), ("file_name", pa.string())])
        rows = lmms_rows()
        edit(rows)
        path = _write_parquet(tmp_path / "lmms" / "testA-00000-of-00001.parquet", rows, schema)
        return lambda: load_parquet_mirror(path, split="testA", cache_dir=tmp_path / "cache")

    return build


def visionreasoner(solution: str, **kwargs: Any) -> Callable[[Path], Callable[[], Any]]:
    def build(tmp_path: Path) -> Callable[[], Any]:
        schema = pa.schema([("id", pa.string()), ("problem", pa.string()), ("solution", pa.string()),
                            ("image", IMAGE_STRUCT), ("img_height", pa.int64()), ("img_width", pa.int64())])
        rows = [{"id": "vr0", "problem": "the two cups", "solution": solution,
                 "image": {"bytes": png_bytes(84, 84), "path": None}, "img_height": 84, "img_width": 84}]
        path = _write_parquet(tmp_path / "vr" / "vr_840.parquet", rows, schema)
        return lambda: load_parquet_mirror(path, split="train", bbox_only="keep", cache_dir=tmp_path / "cache",
                                           **kwargs)

    return build


def corpus(content: str | bytes, suffix: str = ".jsonl", **kwargs: Any) -> Callable[[Path], Callable[[], Any]]:
    def build(tmp_path: Path) -> Callable[[], Any]:
        root = tmp_path / "corpus"
        write_image(root / "a.png", 8, 8)
        (root / "broken.png").write_bytes(b"this is not an image")
        path = root / f"records{suffix}"
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return lambda: load_image_text_corpus(path, cache_dir=tmp_path / "cache", **kwargs)

    return build


def corpus_parquet(table: pa.Table) -> Callable[[Path], Callable[[], Any]]:
    def build(tmp_path: Path) -> Callable[[], Any]:
        path = tmp_path / "corpus" / "pairs.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(table, path)
        return lambda: load_image_text_corpus(path, cache_dir=tmp_path / "cache")

    return build


def synthetic(data_dir: str | None = None, **kwargs: Any) -> Callable[[Path], Callable[[], Any]]:
    def build(tmp_path: Path) -> Callable[[], Any]:
        directory = None
        if data_dir == "file":
            directory = tmp_path / "not-a-folder"
            directory.write_text("x")
        return lambda: load_segmentation_dataset("synthetic", directory, "test", **{"num_samples": 1, **kwargs})

    return build


def empty_parquet_file(tmp_path: Path) -> Callable[[], Any]:
    path = tmp_path / "empty.parquet"
    path.write_bytes(b"")
    return lambda: load_parquet_mirror(path, split="x")


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (no pixel data): a decompression bomb to a reader."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(
        b"IEND", b"")


class Evil:
    """Unpickling this would create a file (any global would do: the safe unpickler refuses them all)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def evil_refs(tmp_path: Path) -> Callable[[], Any]:
    marker = tmp_path / "PWNED"

    def call() -> None:
        try:
            refer(refs_bytes=pickle.dumps([Evil(str(marker))], protocol=2))(tmp_path)()
        finally:
            assert not marker.exists(), "the pickle ran code"

    return call


def rewritten_same_size_and_mtime(tmp_path: Path) -> Callable[[], Any]:
    """Load a mirror, rewrite it with a different mask of the same byte size and restore the mtime, load again."""
    schema = pa.schema([("image", IMAGE_STRUCT), ("text", pa.string()), ("mask", pa.list_(pa.list_(pa.bool_()))),
                        ("img_height", pa.int64()), ("img_width", pa.int64())])

    def rows(x0: int) -> list[dict]:
        return [{"image": {"bytes": png_bytes(8, 8), "path": None}, "text": "the box",
                 "mask": rect_mask(8, 8, (x0, 0, x0 + 2, 2)).tolist(), "img_height": 8, "img_width": 8}]

    path = _write_parquet(tmp_path / "mirror" / "test.parquet", rows(0), schema)
    cache = tmp_path / "cache"
    first = load_parquet_mirror(path, split="test", cache_dir=cache)
    assert decode(first[0]["masks"][0])[0, 0]
    stat = path.stat()
    for x0 in range(1, 7):  # a mask whose file has exactly the same size
        _write_parquet(path.with_name("new.parquet"), rows(x0), schema)
        if path.with_name("new.parquet").stat().st_size == stat.st_size:
            break
    else:
        pytest.fail("no same-size rewrite found")
    os.replace(path.with_name("new.parquet"), path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    return lambda: (x0, load_parquet_mirror(path, split="test", cache_dir=cache))


# ---------------------------------------------------------------------------------------------------------------
# checks of the "works correctly" rows
# ---------------------------------------------------------------------------------------------------------------


def refcoco_val_without_ref1(ds: datasets.Dataset) -> None:
    """Ref 1's annotation (101) is unusable: its two sentences are skipped and counted, ref 2 stays right."""
    assert ds["sample_id"] == ["ref2_sent21"]
    np.testing.assert_array_equal(decode(ds[0]["masks"][0]), EXPECTED_MASKS[102])
    report = get_load_report(ds)
    assert report.skipped == {NO_SEG: 4} and report.examples[NO_SEG] == ["ref1", "ref5"]


def refcoco_val_intact(ds: datasets.Dataset) -> None:
    assert ds["sample_id"] == ["ref1_sent11", "ref1_sent12", "ref2_sent21"]
    for row in ds:
        np.testing.assert_array_equal(decode(row["masks"][0]), EXPECTED_MASKS[int(row["instance_ids"][0])])
    assert ds[0]["boxes"] == [[4.0, 4.0, 8.0, 6.0]]


def refcoco_duplicate_ref_dropped(ds: datasets.Dataset) -> None:
    assert ds["sample_id"] == ["ref1_sent11", "ref1_sent12", "ref2_sent21"]
    report = get_load_report(ds)
    assert report.skipped == {NO_SEG: 2, "duplicate ref (listed twice in the refs file)": 2}


def grefcoco_duplicate_ref_dropped(ds: datasets.Dataset) -> None:
    assert ds["sample_id"] == ["ref1_sent11", "ref1_sent12", "ref2_sent21", "ref3_sent31"]
    assert get_load_report(ds).skipped == {"duplicate ref (listed twice in the refs file)": 2}


def grefcoco_no_sentences_reported(ds: datasets.Dataset) -> None:
    assert ds["sample_id"] == ["ref1_sent11", "ref1_sent12", "ref3_sent31"]
    report = get_load_report(ds)
    assert report.skipped == {"ref has no sentences": 1} and report.examples["ref has no sentences"] == ["ref2"]


def reasonseg_b_skipped(reason: str, count: int) -> Callable[[datasets.Dataset], None]:
    """File b gives no row, and is counted under ``reason`` (``count`` files in all: d has no target either)."""

    def check(ds: datasets.Dataset) -> None:
        assert ds["sample_id"] == ["a/0", "a/1", "c/0"]
        report = get_load_report(ds)
        assert report.skipped.get(reason) == count
        assert "b" in [sample_id.split("/")[0] for sample_id in report.examples[reason]]

    return check


def reasonseg_b_is_second_rect(ds: datasets.Dataset) -> None:
    assert ds["sample_id"] == ["a/0", "a/1", "b/0", "c/0"]
    np.testing.assert_array_equal(decode(ds[2]["masks"][0]), rect_mask(20, 20, (10, 10, 15, 18)))
    assert ds[2]["boxes"] == [[10.0, 10.0, 5.0, 8.0]]


def rows_and_skips(sample_ids: list[str], skipped: dict[str, int]) -> Callable[[datasets.Dataset], None]:
    def check(ds: datasets.Dataset) -> None:
        assert ds["sample_id"] == sample_ids
        assert get_load_report(ds).skipped == skipped

    return check


def empty_corpus(ds: datasets.Dataset) -> None:
    assert len(ds) == 0 and ds.column_names == ["image", "text"]
    assert get_load_report(ds).num_rows == 0


def fresh_mask(result: tuple[int, datasets.Dataset]) -> None:
    x0, ds = result
    np.testing.assert_array_equal(decode(ds[0]["masks"][0]), rect_mask(8, 8, (x0, 0, x0 + 2, 2)))


def one_synthetic_sample(ds: datasets.Dataset) -> None:
    assert len(ds) == 1 and ds[0]["height"] == ds[0]["width"] == 48
    assert ds["sample_id"] == ["synthetic-test-000000"] and ds["split"] == ["test"]


def zero_rows(ds: datasets.Dataset) -> None:
    assert len(ds) == 0 and get_load_report(ds).num_rows == 0


# ---------------------------------------------------------------------------------------------------------------
# the corpus
# ---------------------------------------------------------------------------------------------------------------

DUP_ANN = lambda data: data["annotations"].append({**data["annotations"][1], "id": 101})
SAME_ANN_TWICE = lambda data: data["annotations"].append(copy.deepcopy(data["annotations"][0]))
DUP_REF = lambda refs: refs.append(copy.deepcopy(refs[0]))

REFCOCO = [
    # polygons: non-finite, huge, negative, degenerate, malformed
    Case("refcoco/polygon-nan", refer(instances=ann(0, segmentation=[[4, 4, 12, 4, NAN, 10, 4, 10]])),
         Raises(ValueError, r"annotation 101: polygon 0 has non-finite coordinates \(nan\)")),
    Case("refcoco/polygon-inf", refer(instances=ann(0, segmentation=[[4, 4, 12, 4, INF, 10, 4, 10]])),
         Raises(ValueError, r"annotation 101: polygon 0 has non-finite coordinates \(inf\)")),
    Case("refcoco/polygon-null-coordinate", refer(instances=ann(0, segmentation=[[4, 4, 12, 4, None, 10, 4, 10]])),
         Raises(ValueError, r"annotation 101: polygon 0 has non-finite coordinates")),
    Case("refcoco/polygon-huge", refer(instances=ann(0, segmentation=[[0, 0, 1e30, 0, 1e30, 1e30]])),
         Raises(ValueError, r"annotation 101: polygon spans x 0\.0\.\.1e\+30.*outside the 32x24")),
    Case("refcoco/polygon-negative", refer(instances=ann(0, segmentation=[[-50, -50, 5, 0, 5, 5]])),
         Raises(ValueError, r"annotation 101: polygon spans x -50\.0\.\.5\.0.*outside the 32x24")),
    Case("refcoco/polygon-two-points-skipped", refer(instances=ann(0, segmentation=[[4, 4, 12, 10]])),
         Returns(refcoco_val_without_ref1)),
    Case("refcoco/polygon-zero-area-skipped", refer(instances=ann(0, segmentation=[[4, 4, 8, 8, 12, 12]])),
         Returns(refcoco_val_without_ref1)),
    Case("refcoco/polygon-odd-length", refer(instances=ann(0, segmentation=[[4, 4, 12, 4, 12, 10, 4]])),
         Raises(ValueError, r"annotation 101: polygon 0 has an odd number of coordinates \(7\)")),
    Case("refcoco/polygon-strings", refer(instances=ann(0, segmentation=[["4", "4", "12", "4", "x", "10"]])),
         Raises(ValueError, r"annotation 101: polygon 0 is not a list of numbers")),
    Case("refcoco/polygon-of-dicts", refer(instances=ann(0, segmentation=[{"x": 4}])),
         Raises(ValueError, r"annotation 101: polygon 0 is not a list of numbers")),
    Case("refcoco/segmentation-string", refer(instances=ann(0, segmentation="4 4 12 4 12 10")),
         Raises(ValueError, r"annotation 101: unsupported segmentation of type str")),
    # boxes
    Case("refcoco/bbox-nan", refer(instances=ann(0, bbox=[NAN, 4, 8, 6])),
         Raises(ValueError, r"annotation 101: bbox \[nan, 4, 8, 6\] is not 4 finite numbers")),
    Case("refcoco/bbox-inf", refer(instances=ann(0, bbox=[4, 4, INF, 6])),
         Raises(ValueError, r"annotation 101: bbox \[4, 4, inf, 6\] is not 4 finite numbers")),
    Case("refcoco/bbox-negative-size", refer(instances=ann(0, bbox=[4, 4, -8, -6])),
         Raises(ValueError, r"annotation 101: bbox \[4, 4, -8, -6\] has a negative width or height")),
    Case("refcoco/bbox-strings", refer(instances=ann(0, bbox=["a", 4, 8, 6])),
         Raises(ValueError, r"annotation 101: bbox \['a', 4, 8, 6\] is not 4 finite numbers")),
    Case("refcoco/bbox-missing-uses-mask-box", refer(instances=without("annotations", 0, "bbox")),
         Returns(refcoco_val_intact)),
    # RLE
    Case("refcoco/rle-foreign-characters", refer(instances=ann(0, segmentation={"size": [24, 32], "counts": "zzzz"})),
         Raises(ValueError, r"annotation 101: malformed RLE .*character 'z'")),
    Case("refcoco/rle-counts-too-short", refer(instances=ann(0, segmentation={"size": [24, 32], "counts": [10, 5]})),
         Raises(ValueError, r"annotation 101: malformed RLE .*cover 15 pixels but 'size' \[24, 32\] has 768")),
    Case("refcoco/rle-counts-negative",
         refer(instances=ann(0, segmentation={"size": [24, 32], "counts": [-5, 773]})),
         Raises(ValueError, r"annotation 101: malformed RLE .*negative run length")),
    Case("refcoco/rle-counts-floats",
         refer(instances=ann(0, segmentation={"size": [24, 32], "counts": [100.5, 667.5]})),
         Raises(ValueError, r"annotation 101: malformed RLE.*counts must be non-negative integers")),
    Case("refcoco/rle-compressed-truncated",
         refer(instances=ann(0, segmentation={"size": [24, 32], "counts": "02"})),
         Raises(ValueError, r"annotation 101: malformed RLE .*cover 2 pixels")),
    Case("refcoco/rle-size-of-another-image", refer(instances=ann(0, segmentation={"size": [20, 30], "counts": [600]})),
         Raises(ValueError, r"annotation 101: mask size \[20, 30\] \(HxW\) disagrees with the image size \[24, 32\]")),
    Case("refcoco/rle-size-null", refer(instances=ann(0, segmentation={"size": None, "counts": [768]})),
         Raises(ValueError, r"annotation 101: RLE 'size' must be \[H, W\].*got None")),
    Case("refcoco/rle-empty-mask-skipped", refer(instances=ann(0, segmentation={"size": [24, 32], "counts": [768]})),
         Returns(refcoco_val_without_ref1)),
    # ids, duplicates, missing fields, wrong types
    Case("refcoco/duplicate-annotation-id", refer(instances=DUP_ANN),
         Raises(ValueError, r"annotation id 101 occurs twice .*with different content")),
    Case("refcoco/same-annotation-listed-twice", refer(instances=SAME_ANN_TWICE), Returns(refcoco_val_intact)),
    Case("refcoco/duplicate-ref-dropped-and-reported", refer(refs=DUP_REF), Returns(refcoco_duplicate_ref_dropped)),
    Case("refcoco/duplicate-sentence-id",
         refer(refs=lambda refs: refs[0]["sentences"][1].update(sent_id=11)),
         Raises(ValueError, r"sample_id 'ref1_sent11' occurs 2 times")),
    Case("refcoco/annotation-without-id", refer(instances=without("annotations", 0, "id")),
         Raises(ValueError, r"instances\.json: annotation 0 lacks 'id'")),
    Case("refcoco/annotation-without-image-id", refer(instances=without("annotations", 0, "image_id")),
         Raises(ValueError, r"instances\.json: annotation 101 lacks 'image_id'")),
    Case("refcoco/image-without-file-name", refer(instances=without("images", 0, "file_name")),
         Raises(ValueError, r"instances\.json: image 1 lacks 'file_name'")),
    Case("refcoco/annotations-not-a-list", refer(instances=lambda data: data.update(annotations={"101": {}})),
         Raises(ValueError, r"instances\.json: 'annotations' must be a list of objects, got dict")),
    Case("refcoco/declared-height-huge", refer(instances=lambda data: data["images"][0].update(height=10**9),
                                                verify_image_sizes=False),
         Raises(ValueError, r"image 1 .*height 1000000000.*verify_image_sizes=True")),
    Case("refcoco/declared-height-string", refer(instances=lambda data: data["images"][0].update(height="24px"),
                                                  verify_image_sizes=False),
         Raises(ValueError, r"image 1 .*height '24px'")),
    Case("refcoco/ref-ann-id-null", refer(refs=lambda refs: refs[0].update(ann_id=None)),
         Raises(ValueError, r"ref 1: ann_id None is not an integer id")),
    Case("refcoco/ref-image-id-fractional", refer(refs=lambda refs: refs[0].update(image_id=1.5)),
         Raises(ValueError, r"ref 1: image_id 1\.5 is not an integer id")),
    Case("refcoco/ref-sentences-string", refer(refs=lambda refs: refs[0].update(sentences="left box")),
         Raises(ValueError, r"ref 1: 'sentences' must be a list of sentence objects, got str")),
    Case("refcoco/sentence-text-list", refer(refs=lambda refs: refs[0]["sentences"][0].update(sent=["left", "box"])),
         Raises(ValueError, r"ref 1 sentence 11: 'sent' must be a string, got list")),
    # files
    Case("refcoco/instances-empty-file", refer(instances_text=""),
         Raises(ValueError, r"instances\.json is not valid JSON.*download it again")),
    Case("refcoco/instances-truncated", refer(instances_text='{"images": [{"id": 1'),
         Raises(ValueError, r"instances\.json is not valid JSON.*truncated")),
    Case("refcoco/refs-empty-pickle", refer(refs_bytes=b""),
         Raises(ValueError, r"refs\(unc\)\.p is not a readable pickle.*download it again")),
    Case("refcoco/refs-garbage-pickle", refer(refs_bytes=b"\x80\x02garbage"),
         Raises(ValueError, r"refs\(unc\)\.p is not a readable pickle")),
    Case("refcoco/refs-code-pickle", evil_refs, Raises(UnsafePickleError, r"refusing to load the global posix\.mkdir")),
    Case("refcoco/refs-not-a-list", refer(refs_bytes=pickle.dumps({"refs": []}, protocol=2)),
         Raises(ValueError, r"does not hold a list of refs")),
    # RefCOCO+ / RefCOCOg share the reader
    Case("refcoco+/polygon-nan", refer(dataset="refcoco+", instances=ann(1, segmentation=[[16, 2, NAN, 2, 20, 6]])),
         Raises(ValueError, r"annotation 102: polygon 0 has non-finite coordinates")),
    Case("refcoco+/duplicate-ref-dropped-and-reported", refer(dataset="refcoco+", refs=DUP_REF),
         Returns(refcoco_duplicate_ref_dropped)),
    Case("refcocog/bbox-nan", refer(dataset="refcocog", instances=ann(1, bbox=[16, 2, NAN, 10])),
         Raises(ValueError, r"annotation 102: bbox \[16, 2, nan, 10\] is not 4 finite numbers")),
    Case("refcocog/uncompressed-rle-counts-null",
         refer(dataset="refcocog", split="testA", instances=ann(2, segmentation={"size": [20, 30], "counts": [None]})),
         Raises(ValueError, r"annotation 103: malformed RLE.*counts must be non-negative integers")),
]

GREFCOCO = [
    Case("grefcoco/polygon-nan", gref(instances=ann(0, segmentation=[[4, 4, 12, 4, NAN, 10]])),
         Raises(ValueError, r"annotation 101: polygon 0 has non-finite coordinates")),
    Case("grefcoco/duplicate-target-ids", gref(refs=lambda refs: refs[0].update(ann_id=[101, 101])),
         Raises(ValueError, r"ref 1: ann_id \[101, 101\] lists annotation 101 twice")),
    Case("grefcoco/target-id-string", gref(refs=lambda refs: refs[0].update(ann_id=["a"])),
         Raises(ValueError, r"ref 1: ann_id 'a' is not an integer id")),
    Case("grefcoco/no-target-flag-string", gref(refs=lambda refs: refs[1].update(no_target="false")),
         Raises(ValueError, r"ref 2: no_target='false' must be true or false")),
    Case("grefcoco/no-target-ref-without-sentences", gref(refs=lambda refs: refs[1].update(sentences=[])),
         Returns(grefcoco_no_sentences_reported)),
    Case("grefcoco/duplicate-ref-dropped-and-reported", gref(refs=DUP_REF), Returns(grefcoco_duplicate_ref_dropped)),
    Case("grefcoco/refs-null", gref(refs_text="null"), Raises(ValueError, r"does not hold a list of refs")),
    Case("grefcoco/refs-empty-file", gref(refs_text=""), Raises(ValueError, r"grefs\(unc\)\.json is not valid JSON")),
]

REASONSEG = [
    Case("reasonseg/point-nan", reasonseg(shape("b", 0, points=[[0, 0], [5, 0], [NAN, 5], [0, 5]])),
         Raises(ValueError, r"b\.json shape 0: polygon 0 has non-finite coordinates \(nan\)")),
    Case("reasonseg/point-inf", reasonseg(shape("b", 1, points=[[10, 10], [INF, 10], [15, 18]])),
         Raises(ValueError, r"b\.json shape 1: polygon 0 has non-finite coordinates \(inf\)")),
    Case("reasonseg/point-null", reasonseg(shape("b", 0, points=[[0, 0], [5, None], [5, 5]])),
         Raises(ValueError, r"b\.json shape 0: polygon 0 has non-finite coordinates")),
    Case("reasonseg/points-three-columns", reasonseg(shape("b", 0, points=[[0, 0, 1], [5, 0, 1], [5, 5, 1]])),
         Raises(ValueError, r"b\.json shape 0: 'points' must be \[\[x, y\], \.\.\.\], got shape \(3, 3\)")),
    Case("reasonseg/points-string", reasonseg(shape("b", 0, points="0,0 5,0 5,5")),
         Raises(ValueError, r"b\.json shape 0: 'points' must be \[\[x, y\], \.\.\.\]")),
    Case("reasonseg/points-ragged", reasonseg(shape("b", 0, points=[[0, 0], [5], [5, 5]])),
         Raises(ValueError, r"b\.json shape 0: 'points' must be \[\[x, y\], \.\.\.\]")),
    Case("reasonseg/polygon-outside-image", reasonseg(shape("b", 0, points=rect_points(0, 0, 500, 5))),
         Raises(ValueError, r"b\.json shape 0: polygon spans x 0\.0\.\.500\.0.*outside the 20x20")),
    Case("reasonseg/only-target-has-zero-area",
         reasonseg(lambda a: a["b"].update(shapes=[{"label": "target", "points": [[1, 1], [2, 2], [3, 3]]}])),
         Returns(reasonseg_b_skipped("no target polygon in the annotation", 2))),
    Case("reasonseg/degenerate-second-target-dropped", reasonseg(shape("b", 0, points=[[0, 0], [5, 5]])),
         Returns(reasonseg_b_is_second_rect)),
    Case("reasonseg/shape-not-an-object", reasonseg(lambda a: a["b"]["shapes"].append("target")),
         Raises(ValueError, r"b\.json: shape 2 must be an object with 'label' and 'points', got str")),
    Case("reasonseg/text-empty-list", reasonseg(lambda a: a["b"].update(text=[])),
         Returns(reasonseg_b_skipped("empty instruction text", 1))),
    Case("reasonseg/text-number", reasonseg(lambda a: a["b"].update(text=5)),
         Raises(ValueError, r"b\.json: 'text' must be a string or a list of strings, got int")),
    Case("reasonseg/is-sentence-string", reasonseg(lambda a: a["b"].update(is_sentence="false"), query_type="long"),
         Raises(ValueError, r"b\.json: 'is_sentence' must be true or false, got 'false'")),
    Case("reasonseg/declared-height-string", reasonseg(lambda a: a["b"].update(imageHeight="20px", imageWidth=20)),
         Raises(ValueError, r"b\.json: imageHeight '20px' is not a positive integer")),
    Case("reasonseg/declared-size-mismatch", reasonseg(lambda a: a["b"].update(imageHeight=40, imageWidth=40)),
         Raises(ValueError, r"b\.json: annotation is for a 40x40 \(HxW\) image but .*b\.jpg is 20x20")),
    Case("reasonseg/annotation-empty-file", reasonseg(raw={"b": b""}),
         Raises(ValueError, r"b\.json is not valid JSON.*download it again")),
    Case("reasonseg/annotation-is-a-list", reasonseg(raw={"b": b"[]"}),
         Raises(ValueError, r"b\.json: expected a JSON object with 'text', 'is_sentence' and 'shapes'")),
    Case("reasonseg/image-corrupt", reasonseg(image={"b": b"not a jpeg"}),
         Raises(ValueError, r"cannot read the image of .*b\.jpg.*download it again")),
    Case("reasonseg/image-decompression-bomb", reasonseg(image={"b": png_header(100_000, 100_000)}),
         Raises(ValueError, r"b\.jpg is too large to load \(10000000000 pixels")),
]

SEG_ZERO_NULLS = lambda rows: rows[0].update(mask=[[None] + [True] * 15] + rows[0]["mask"][1:])

PARQUET = [
    Case("parquet/seg-zero-mask-null-cells", seg_zero(SEG_ZERO_NULLS),
         Raises(ValueError, r"row 0 \(id test/0\): 'mask' has 1 null cell")),
    Case("parquet/seg-zero-float-mask-nan",
         seg_zero(lambda rows: rows[0].update(mask=np.full((12, 16), np.nan).tolist()),
                  mask_type=pa.list_(pa.list_(pa.float32()))),
         Raises(ValueError, r"row 0 \(id test/0\): 'mask' holds float values other than 0 and 1 \(nan\)")),
    Case("parquet/seg-zero-integer-mask",
         seg_zero(lambda rows: [r.update(mask=np.asarray(r["mask"]).astype(int).tolist()) for r in rows],
                  mask_type=pa.list_(pa.list_(pa.int64()))),
         Returns(lambda ds: [np.testing.assert_array_equal(decode(row["masks"][0]), mask)
                             for row, mask in zip(ds, SEG_ZERO_MASKS)])),
    Case("parquet/seg-zero-mask-wrong-size", seg_zero(lambda rows: rows[0].update(mask=np.ones((3, 3), bool).tolist())),
         Raises(ValueError, r"row 0 \(id test/0\): mask is 3x3 but the image is 12x16")),
    Case("parquet/seg-zero-mask-one-dimensional",
         seg_zero(lambda rows: [r.update(mask=[True, False]) for r in rows], mask_type=pa.list_(pa.bool_())),
         Raises(ValueError, r"'mask' must be 2-D or 3-D nested lists, got type list<element: bool>")),
    Case("parquet/seg-zero-empty-text-skipped", seg_zero(lambda rows: rows[0].update(text="  ")),
         Returns(rows_and_skips(["test/1"], {"no expression": 1}))),
    Case("parquet/seg-zero-declared-height-wrong", seg_zero(lambda rows: rows[0].update(img_height=5)),
         Raises(ValueError, r"img_height x img_width = 5x16 but the stored image is 12x16")),
    Case("parquet/seg-zero-image-corrupt",
         seg_zero(lambda rows: rows[0].update(image={"bytes": b"garbage", "path": None})),
         Raises(ValueError, r"cannot read the image of .*row 0 \(id test/0\).*download it again")),
    Case("parquet/seg-zero-image-bomb",
         seg_zero(lambda rows: rows[0].update(image={"bytes": png_header(100_000, 100_000), "path": None})),
         Raises(ValueError, r"row 0 \(id test/0\) is too large to load \(10000000000 pixels")),
    Case("parquet/zero-rows", seg_zero(lambda rows: rows.clear()), Returns(zero_rows)),
    Case("parquet/every-mask-empty-skipped",
         seg_zero(lambda rows: [r.update(mask=np.zeros(np.shape(r["mask"]), bool).tolist()) for r in rows]),
         Returns(rows_and_skips([], {"empty (all-false) mask": 2}))),
    Case("parquet/empty-file", empty_parquet_file,
         Raises(ValueError, r"empty\.parquet is not a readable parquet file.*download it again")),
    Case("parquet/lmms-polygon-nan", lmms(lambda rows: rows[0].update(segmentation=[4, 4, 12, 4, NAN, 10, 4, 10])),
         Raises(ValueError, r"row 0 \(id q1\): polygon 0 has non-finite coordinates \(nan\)")),
    Case("parquet/lmms-bbox-nan", lmms(lambda rows: rows[0].update(bbox=[NAN, 4, 8, 6])),
         Raises(ValueError, r"row 0 \(id q1\): bbox \[nan, 4\.0, 8\.0, 6\.0\] is not 4 finite numbers")),
    Case("parquet/lmms-duplicate-question-id", lmms(lambda rows: rows[1].update(question_id="q1")),
         Raises(ValueError, r"sample_id 'q1/0' occurs 2 times")),
    Case("parquet/vr-bbox-nan", visionreasoner('[{"bbox_2d": [NaN, 2, 11, 22]}]'),
         Raises(ValueError, r"row 0 \(id vr0\): bbox_2d \[nan, 2, 11, 22\] is not 4 finite numbers")),
    Case("parquet/vr-bbox-inverted", visionreasoner('[{"bbox_2d": [11, 22, 1, 2]}]'),
         Raises(ValueError, r"row 0 \(id vr0\): bbox_2d \[11, 22, 1, 2\] has x2 < x1 or y2 < y1")),
    Case("parquet/vr-bbox-three-values", visionreasoner('[{"bbox_2d": [1, 2, 11]}]'),
         Raises(ValueError, r"row 0 \(id vr0\): bbox_2d \[1, 2, 11\] is not 4 finite numbers")),
    Case("parquet/vr-solution-object", visionreasoner('{"bbox_2d": [1, 2, 11, 22]}'),
         Raises(ValueError, r"row 0 \(id vr0\): 'solution' must be a JSON list of \{\"bbox_2d\"")),
    Case("parquet/vr-solution-items-not-objects", visionreasoner('[1, "x"]'),
         Raises(ValueError, r"row 0 \(id vr0\): 'solution' item 0 must be an object with 'bbox_2d', got int")),
    Case("parquet/vr-solution-invalid-json", visionreasoner("[{"),
         Raises(ValueError, r"row 0 \(id vr0\): 'solution' is not valid JSON")),
    Case("parquet/stale-cache-same-size-and-mtime", rewritten_same_size_and_mtime, Returns(fresh_mask)),
]

CORPUS = [
    Case("corpus/empty-jsonl", corpus(""), Returns(empty_corpus)),
    Case("corpus/empty-json-list", corpus("[]", ".json"), Returns(empty_corpus)),
    Case("corpus/csv-header-only", corpus("image,text\n", ".csv"), Returns(empty_corpus)),
    Case("corpus/invalid-json-line", corpus('{"image": "a.png", "text": "x"}\n{"image": '),
         Raises(ValueError, r"records\.jsonl:2 is not valid JSON")),
    Case("corpus/texts-string", corpus(json.dumps({"texts": "abc", "images": ["a.png", None, None]})),
         Raises(ValueError, r"records\.jsonl:1: 'texts' must be a list, got str")),
    Case("corpus/text-number", corpus(json.dumps({"image": "a.png", "text": 5})),
         Raises(ValueError, r"records\.jsonl:1: 'text' must be a string, got int")),
    Case("corpus/text-list", corpus(json.dumps({"image": "a.png", "text": ["a", "b"]})),
         Raises(ValueError, r"records\.jsonl:1: 'text' must be a string, got list")),
    Case("corpus/image-bytes-as-string", corpus(json.dumps({"image": {"bytes": "abc"}, "text": "x"})),
         Raises(ValueError, r"records\.jsonl:1: image 'bytes' must be bytes, got str")),
    Case("corpus/image-file-corrupt", corpus(json.dumps({"image": "broken.png", "text": "x"})),
         Raises(ValueError, r"cannot read the image of records\.jsonl:1.*download it again")),
    Case("corpus/parquet-image-bytes-corrupt",
         corpus_parquet(pa.table({"image": [b"garbage"], "text": ["x"]})),
         Raises(ValueError, r"cannot read the image of pairs\.parquet:0")),
]

SYNTHETIC = [
    Case("synthetic/min-shapes-string", synthetic(min_shapes="2"),
         Raises(ValueError, r"min_shapes='2' must be an int")),
    Case("synthetic/family-weight-nan", synthetic(family_weights={"spatial": NAN}),
         Raises(ValueError, r"family_weights=\{'spatial': nan\} must be finite")),
    Case("synthetic/no-target-fraction-string", synthetic(no_target_fraction="0.5"),
         Raises(ValueError, r"no_target_fraction='0\.5' is not a number")),
    Case("synthetic/occlusion-string", synthetic(occlusion="no"),
         Raises(ValueError, r"occlusion='no' must be True or False")),
    Case("synthetic/max-attempts-fraction", synthetic(max_attempts=1.5),
         Raises(ValueError, r"max_attempts=1\.5 must be an int")),
    Case("synthetic/seed-string", synthetic(seed="0"), Raises(ValueError, r"seed='0' must be a non-negative int")),
    Case("synthetic/num-samples-beyond-seed-range", synthetic(num_samples=10**10),
         Raises(ValueError, r"num_samples=10000000000 .* at most 1000000000")),
    Case("synthetic/data-dir-is-a-file", synthetic(data_dir="file"),
         Raises(ValueError, r"not-a-folder is not a directory")),
    Case("synthetic/one-sample-works", synthetic(image_size=48), Returns(one_synthetic_sample)),
]

CASES = REFCOCO + GREFCOCO + REASONSEG + PARQUET + CORPUS + SYNTHETIC


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_data_bad_input(case: Case, tmp_path: Path) -> None:
    datasets.disable_progress_bars()
    run_case(case, tmp_path)


def test_corpus_size() -> None:
    assert len(CASES) >= 45
