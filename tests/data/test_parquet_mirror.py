"""Local copies of the HF parquet mirrors (Seg-Zero eval sets, VisionReasoner RL sets, lmms-lab RefCOCO)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from loader_fixtures import SEG_ZERO_MASKS, decode, rect_mask

from segcompass.data import SEGMENTATION_FEATURES, get_load_report, load_parquet_mirror, load_segmentation_dataset


def test_seg_zero_masks_and_skipped_empty_mask(seg_zero_file: Path):
    ds = load_parquet_mirror(seg_zero_file, split="testA", source="refcoco")
    assert ds.features == SEGMENTATION_FEATURES
    assert ds["instruction"] == ["object number 0", "object number 1"]
    assert ds["image_id"] == ["img0", "img1"] and ds["instance_ids"] == [["ann0"], ["ann1"]]
    assert set(ds["split"]) == {"testA"} and set(ds["source"]) == {"refcoco"}
    for row, mask in zip(ds, SEG_ZERO_MASKS):
        np.testing.assert_array_equal(decode(row["masks"][0]), mask)
        assert (row["height"], row["width"]) == mask.shape
        assert row["image"].size == (mask.shape[1], mask.shape[0])
    assert ds[0]["boxes"] == [[2.0, 3.0, 7.0, 5.0]]
    report = get_load_report(ds)
    assert report.skipped == {"empty (all-false) mask": 1} and report.num_rows == 2


def test_directory_picks_split_files_and_cache_hit_keeps_report(seg_zero_file: Path, tmp_path: Path):
    folder = seg_zero_file.parents[1]  # .../refcoco_testA with data/test-00000-of-00001.parquet
    pq.write_table(pa.table({"unrelated": [1]}), folder / "data" / "train-00000-of-00001.parquet")
    cache = tmp_path / "cache"
    first = load_segmentation_dataset("parquet", folder, "test", cache_dir=cache)
    second = load_segmentation_dataset("parquet", folder, "test", cache_dir=cache)  # served from the arrow cache
    assert len(first) == len(second) == 2
    assert first.cache_files and first.cache_files == second.cache_files
    assert get_load_report(second).skipped == {"empty (all-false) mask": 1}


def test_seg_zero_mask_size_mismatch(seg_zero_file: Path):
    table = pq.read_table(seg_zero_file)
    rows = table.to_pylist()
    rows[1]["mask"] = rect_mask(10, 12, (0, 0, 3, 3)).tolist()
    rows[1]["img_width"] = 10
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), seg_zero_file)
    with pytest.raises(ValueError, match=r"row 1 \(id test-00000-of-00001/1\): mask is 10x12 but the image is 10x10"):
        load_parquet_mirror(seg_zero_file, split="testA")


def test_visionreasoner_bbox_only_rows(visionreasoner_file: Path):
    skipped = load_parquet_mirror(visionreasoner_file, split="train")
    assert len(skipped) == 0
    report = get_load_report(skipped)
    assert report.num_skipped == 2 and report.examples[next(iter(report.skipped))] == ["vr0", "vr1"]
    kept = load_parquet_mirror(visionreasoner_file, split="train", bbox_only="keep")
    assert kept["masks"] == [[], []] and kept["no_target"] == [False, False]
    assert kept[0]["boxes"] == [[1.0, 2.0, 10.0, 20.0], [30.0, 30.0, 10.0, 20.0]]
    assert kept["instruction"] == ["the two cups", "the plate"] and kept["height"] == [84, 84]
    with pytest.raises(ValueError, match="row vr0 has boxes only"):
        load_parquet_mirror(visionreasoner_file, split="train", bbox_only="error")


def test_lmms_lab_rows_per_expression_and_object(lmms_lab_file: Path):
    ds = load_parquet_mirror(lmms_lab_file.parent, split="testA", source="refcoco")
    assert ds["sample_id"] == ["q1/0", "q1/1", "q2/0"]
    assert ds["instruction"] == ["left box", "small box", "bar"]
    assert ds["image_id"] == ["42", "42", "43"] and ds["instance_ids"] == [["101"], ["101"], ["102"]]
    np.testing.assert_array_equal(decode(ds[0]["masks"][0]), rect_mask(24, 32, (4, 4, 12, 10)))
    np.testing.assert_array_equal(decode(ds[2]["masks"][0]), rect_mask(24, 32, (16, 2, 20, 6)))
    assert ds[2]["boxes"] == [[16.0, 2.0, 4.0, 4.0]]
    per_object = load_parquet_mirror(lmms_lab_file, split="testA", per="object")
    assert per_object["sample_id"] == ["q1", "q2"] and per_object["instruction"] == ["left box", "bar"]


def test_unknown_columns_and_wrong_flavour(tmp_path: Path, lmms_lab_file: Path):
    path = tmp_path / "odd.parquet"
    pq.write_table(pa.table({"foo": [1], "bar": ["x"]}), path)
    with pytest.raises(ValueError, match=r"odd\.parquet: columns \['bar', 'foo'\] match no known mirror"):
        load_parquet_mirror(path, split="val")
    with pytest.raises(ValueError, match=r"lacks the seg_zero column\(s\) \['mask', 'text'\]"):
        load_parquet_mirror(lmms_lab_file, split="val", flavour="seg_zero")


def test_truncated_parquet_and_missing_file(seg_zero_file: Path, tmp_path: Path):
    data = seg_zero_file.read_bytes()
    seg_zero_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"test-00000-of-00001\.parquet is not a readable parquet file"):
        load_parquet_mirror(seg_zero_file, split="test")
    with pytest.raises(FileNotFoundError, match="parquet file not found"):
        load_parquet_mirror(tmp_path / "nope.parquet", split="test")


def test_reasonseg_mirror_note(seg_zero_file: Path, tmp_path: Path, caplog):
    target = tmp_path / "ReasonSeg_val" / "val.parquet"
    target.parent.mkdir()
    target.write_bytes(seg_zero_file.read_bytes())
    ds = load_parquet_mirror(target, split="val", source="reasonseg")
    assert "ignore regions" in get_load_report(ds).notes[0]
    assert "ignore regions" in caplog.text
    assert ds["ignore_mask"] == [None, None]


def test_image_bytes_kept(seg_zero_file: Path):
    ds = load_parquet_mirror(seg_zero_file, split="testA")
    stored = ds.data.column("image")[0].as_py()
    assert stored["path"] is None and stored["bytes"][:4] == b"\x89PNG"
    assert json.loads(ds.info.description.split(": ", 1)[1])["source"] == "seg_zero"
    assert io.BytesIO(stored["bytes"]).getbuffer().nbytes > 0


def test_edited_file_is_not_served_from_a_stale_cache(seg_zero_file: Path, tmp_path: Path):
    cache = tmp_path / "cache"

    def arrow_files() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in cache.rglob("*.arrow")}

    assert len(load_parquet_mirror(seg_zero_file, split="test", cache_dir=cache)) == 2
    written = arrow_files()
    assert len(load_parquet_mirror(seg_zero_file, split="test", cache_dir=cache)) == 2
    assert arrow_files() == written  # second call: cache hit, nothing regenerated
    table = pq.read_table(seg_zero_file)
    pq.write_table(table.slice(0, 1), seg_zero_file)
    assert len(load_parquet_mirror(seg_zero_file, split="test", cache_dir=cache)) == 1
    assert len(arrow_files()) > len(written)
