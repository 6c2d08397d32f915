"""ReasonSeg: target / ignore polygons, texts, is_sentence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from loader_fixtures import decode, pixel_centres_inside, rect_mask, rect_points

from segcompass.data import SEGMENTATION_FEATURES, get_load_report, load_reasonseg, load_segmentation_dataset


def test_rows_texts_masks_and_ignore(reasonseg_root: Path):
    ds = load_reasonseg(reasonseg_root, "val")
    assert ds.features == SEGMENTATION_FEATURES
    assert ds["sample_id"] == ["a/0", "a/1", "b/0", "c/0"]
    assert ds["instruction"] == [
        "What would you sit on here?", "Find the seat.", "the lamp", "Which region is the table?"
    ]
    assert ds["image_id"] == ["a", "a", "b", "c"] and ds["instance_ids"] == [["a"], ["a"], ["b"], ["c"]]
    assert set(ds["source"]) == {"reasonseg"} and ds["no_target"] == [False] * 4
    a = ds[0]
    assert (a["height"], a["width"]) == (24, 32)
    np.testing.assert_array_equal(decode(a["masks"][0]), rect_mask(24, 32, (2, 2, 14, 12)))  # flag shape dropped
    np.testing.assert_array_equal(decode(a["ignore_mask"]), rect_mask(24, 32, (20, 2, 28, 10)))
    assert a["boxes"] == [[2.0, 2.0, 12.0, 10.0]]
    b = ds[2]  # two target polygons -> one merged instance, no ignore
    assert len(b["masks"]) == 1 and b["ignore_mask"] is None
    np.testing.assert_array_equal(decode(b["masks"][0]), rect_mask(20, 20, (0, 0, 5, 5), (10, 10, 15, 18)))


def test_overlapping_ignore_follows_painters_order(reasonseg_root: Path):
    c = load_reasonseg(reasonseg_root, "val")[3]
    hole = rect_mask(20, 20, (4, 4, 8, 8))
    np.testing.assert_array_equal(decode(c["masks"][0]), rect_mask(20, 20, (0, 0, 16, 16)) & ~hole)
    np.testing.assert_array_equal(decode(c["ignore_mask"]), hole)


def test_non_rectangular_polygon_matches_rasterisation(reasonseg_root: Path):
    points = [[2.0, 2.0], [18.0, 4.0], [8.0, 17.0]]
    (reasonseg_root / "val" / "b.json").write_text(
        json.dumps({"text": ["t"], "is_sentence": False, "shapes": [{"label": "target", "points": points}]})
    )
    row = load_reasonseg(reasonseg_root, "val")[2]
    expected = pixel_centres_inside(20, 20, points)
    got = decode(row["masks"][0])
    assert (got & expected).sum() / (got | expected).sum() > 0.95  # boundary pixels may differ


def test_query_type_and_first_text(reasonseg_root: Path):
    long = load_reasonseg(reasonseg_root, "val", query_type="long")
    assert long["image_id"] == ["a", "a", "c"]
    short = load_reasonseg(reasonseg_root, "val", query_type="short")
    assert short["image_id"] == ["b"]
    first = load_segmentation_dataset("reasonseg", reasonseg_root, "val", texts="first")
    assert first["sample_id"] == ["a/0", "b/0", "c/0"]


def test_file_without_target_is_reported(reasonseg_root: Path):
    report = get_load_report(load_reasonseg(reasonseg_root, "val"))
    assert report.skipped == {"no target polygon in the annotation": 1} and report.examples[
        "no target polygon in the annotation"
    ] == ["d"]


def test_missing_and_orphan_annotation_files(reasonseg_root: Path):
    (reasonseg_root / "val" / "b.json").unlink()
    with pytest.raises(ValueError, match=r"b\.json: annotation of image b\.jpg not found"):
        load_reasonseg(reasonseg_root, "val")
    (reasonseg_root / "val" / "b.jpg").unlink()
    (reasonseg_root / "val" / "c.jpg").unlink()
    with pytest.raises(ValueError, match=r"c\.json: annotation without an image"):
        load_reasonseg(reasonseg_root, "val")


def test_truncated_json_and_missing_split(reasonseg_root: Path):
    path = reasonseg_root / "val" / "a.json"
    path.write_text(path.read_text()[:30])
    with pytest.raises(ValueError, match=r"a\.json is not valid JSON"):
        load_reasonseg(reasonseg_root, "val")
    with pytest.raises(FileNotFoundError, match=r"split folder not found \(folders present: \['val'\]\)"):
        load_reasonseg(reasonseg_root, "test")


def test_size_disagreements(reasonseg_root: Path):
    path = reasonseg_root / "val" / "a.json"
    annotation = json.loads(path.read_text())
    path.write_text(json.dumps({**annotation, "imageHeight": 48, "imageWidth": 64}))
    with pytest.raises(ValueError, match=r"a\.json: annotation is for a 48x64 \(HxW\) image but .*a\.jpg is 24x32"):
        load_reasonseg(reasonseg_root, "val")
    annotation["shapes"][0]["points"] = rect_points(2, 2, 60, 40)
    path.write_text(json.dumps(annotation))
    with pytest.raises(ValueError, match=r"a\.json shape 0: polygon .* outside the 32x24"):
        load_reasonseg(reasonseg_root, "val")


def test_cp1252_annotation_is_read(reasonseg_root: Path):
    path = reasonseg_root / "val" / "b.json"
    annotation = json.loads(path.read_text())
    annotation["text"] = "the caf\u00e9 lamp"
    path.write_bytes(json.dumps(annotation, ensure_ascii=False).encode("cp1252"))
    assert load_reasonseg(reasonseg_root, "val")["instruction"][2] == "the caf\u00e9 lamp"


def test_unexpected_label_counts_as_target_with_note(reasonseg_root: Path, caplog):
    path = reasonseg_root / "val" / "b.json"
    annotation = json.loads(path.read_text())
    annotation["shapes"][1]["label"] = "Target-2"
    path.write_text(json.dumps(annotation))
    ds = load_reasonseg(reasonseg_root, "val")
    np.testing.assert_array_equal(decode(ds[2]["masks"][0]), rect_mask(20, 20, (0, 0, 5, 5), (10, 10, 15, 18)))
    assert get_load_report(ds).notes == ["shape labels other than target/ignore/flag were treated as target: "
                                         "{'target-2': 1}"]
    assert "treated as target" in caplog.text
