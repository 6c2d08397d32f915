"""RefCOCO / RefCOCO+ / RefCOCOg from refer-toolkit files."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import datasets
import numpy as np
import pytest
from loader_fixtures import EXPECTED_MASKS, IMAGES, coco_name, decode, refer_refs, write_image

from segcompass.data import SEGMENTATION_FEATURES, get_load_report, load_refcoco, load_segmentation_dataset


def test_val_rows_masks_and_ids(refer_root: Path):
    ds = load_refcoco(refer_root, "val")
    assert ds.features == SEGMENTATION_FEATURES
    assert ds["sample_id"] == ["ref1_sent11", "ref1_sent12", "ref2_sent21"]
    assert ds["instruction"] == ["left box", "the red box", "two bars"]
    assert ds["image_id"] == ["1", "1", "1"]
    assert ds["instance_ids"] == [["101"], ["101"], ["102"]]
    assert set(ds["split"]) == {"val"} and set(ds["source"]) == {"refcoco"}
    assert ds["no_target"] == [False] * 3 and ds["ignore_mask"] == [None] * 3
    assert ds["height"] == [24] * 3 and ds["width"] == [32] * 3
    for row in ds:
        assert len(row["masks"]) == 1
        np.testing.assert_array_equal(decode(row["masks"][0]), EXPECTED_MASKS[int(row["instance_ids"][0])])
    assert ds[0]["boxes"] == [[4.0, 4.0, 8.0, 6.0]]


def test_images_are_stored_by_path_and_decoded_lazily(refer_root: Path):
    ds = load_refcoco(refer_root, "val")
    stored = ds.data.column("image")[0].as_py()
    assert stored["bytes"] is None and stored["path"].endswith(coco_name(1))
    image = ds[0]["image"]
    assert image.size == (32, 24)


def test_rle_segmentations_uncompressed_and_compressed(refer_root: Path):
    test_a = load_refcoco(refer_root, "testA")
    assert len(test_a) == 2 and test_a["instance_ids"] == [["103"], ["103"]]
    np.testing.assert_array_equal(decode(test_a[0]["masks"][0]), EXPECTED_MASKS[103])
    test_b = load_refcoco(refer_root, "testB")
    np.testing.assert_array_equal(decode(test_b[0]["masks"][0]), EXPECTED_MASKS[104])
    assert test_b[0]["masks"][0]["size"] == [20, 30]


def test_per_object_uses_first_sentence(refer_root: Path):
    ds = load_refcoco(refer_root, "val", per="object")
    assert ds["sample_id"] == ["ref1", "ref2"]
    assert ds["instruction"] == ["left box", "two bars"]


def test_raw_sentence_field(refer_root: Path):
    assert load_refcoco(refer_root, "val", sentence_field="raw")["instruction"][0] == "LEFT BOX"


def test_skipped_rows_are_reported_and_logged(refer_root: Path, caplog):
    with caplog.at_level(logging.WARNING):
        ds = load_refcoco(refer_root, "val")
    report = get_load_report(ds)
    assert report.num_rows == 3 and report.num_skipped == 2
    assert report.skipped == {"annotation has no usable segmentation": 2}
    assert report.examples["annotation has no usable segmentation"] == ["ref5"]
    assert "skipped 2 row(s)" in caplog.text
    assert get_load_report(ds.select([0])).num_skipped == 2  # the report travels with the dataset


def test_report_and_images_survive_save_to_disk(refer_root: Path, tmp_path: Path):
    load_refcoco(refer_root, "val").save_to_disk(str(tmp_path / "saved"))
    (refer_root / "images" / "train2014" / coco_name(1)).unlink()  # datasets 5.2 embedded the bytes
    reloaded = datasets.load_from_disk(str(tmp_path / "saved"))
    assert get_load_report(reloaded).skipped == {"annotation has no usable segmentation": 2}
    assert reloaded[0]["image"].size == (32, 24)


def test_other_datasets_and_dispatch(refer_root: Path):
    assert len(load_segmentation_dataset("refcocog", refer_root, "val")) == 3  # refs(umd).p by default
    plus = load_segmentation_dataset("refcoco+", refer_root, "train")
    assert plus["source"] == ["refcoco+"] and plus["instruction"] == ["train box"]
    with pytest.raises(ValueError, match=r"refs\(google\)\.p.*present in .*refs\(unc\)\.p"):
        load_refcoco(refer_root, "val", split_by="google")
    with pytest.raises(ValueError, match="not available for refcoco\\+"):
        load_refcoco(refer_root, "val", dataset="refcoco+", split_by="google")


def test_unknown_split_lists_present_ones(refer_root: Path):
    with pytest.raises(ValueError, match=r"split='test'.*\['testA', 'testB', 'train', 'val'\]"):
        load_refcoco(refer_root, "test")


def test_explicit_and_missing_image_dir(refer_root: Path, tmp_path: Path):
    moved = tmp_path / "elsewhere"
    (refer_root / "images" / "train2014").rename(moved)
    with pytest.raises(FileNotFoundError, match="pass image_dir="):
        load_refcoco(refer_root, "val")
    assert len(load_refcoco(refer_root, "val", image_dir=moved)) == 3


def test_truncated_instances_json_names_file(refer_root: Path):
    path = refer_root / "refcoco" / "instances.json"
    path.write_text(path.read_text()[:-40])
    with pytest.raises(ValueError, match=r"instances\.json.*not valid JSON.*download it again"):
        load_refcoco(refer_root, "val")


def test_missing_instances_json(refer_root: Path):
    (refer_root / "refcoco" / "instances.json").unlink()
    with pytest.raises(ValueError, match=r"instances\.json not found"):
        load_refcoco(refer_root, "val")


def test_missing_image_file_names_image(refer_root: Path):
    (refer_root / "images" / "train2014" / coco_name(1)).unlink()
    with pytest.raises(ValueError, match=rf"{coco_name(1)}: .*ref 1: image 1 not found"):
        load_refcoco(refer_root, "val")


def _rewrite_refs(root: Path, **changes) -> None:
    refs = refer_refs()
    refs[0].update(changes)
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))


def test_ref_with_unknown_image_or_annotation(refer_root: Path):
    _rewrite_refs(refer_root, image_id=999)
    with pytest.raises(ValueError, match="ref 1: image id 999 is not in .*instances.json"):
        load_refcoco(refer_root, "val")
    _rewrite_refs(refer_root, ann_id=555)
    with pytest.raises(ValueError, match="ref 1: annotation id 555 is not in"):
        load_refcoco(refer_root, "val")
    _rewrite_refs(refer_root, ann_id=103)
    with pytest.raises(ValueError, match="annotation 103 belongs to image 2, not 1"):
        load_refcoco(refer_root, "val")


def test_size_disagreements(refer_root: Path):
    path = refer_root / "refcoco" / "instances.json"
    instances = json.loads(path.read_text())
    instances["annotations"][3]["segmentation"]["size"] = [40, 30]
    path.write_text(json.dumps(instances))
    with pytest.raises(ValueError, match=r"annotation 104: mask size \[40, 30\].*image size \[20, 30\]"):
        load_refcoco(refer_root, "testB")
    write_image(refer_root / "images" / "train2014" / coco_name(1), 10, 10)
    with pytest.raises(ValueError, match=r"image 1 .* is 10x10 \(HxW\) but .* says 24x32"):
        load_refcoco(refer_root, "val")
    assert len(load_refcoco(refer_root, "val", verify_image_sizes=False)) == 3
    assert IMAGES[1] == (24, 32)


def test_polygon_outside_image_raises(refer_root: Path):
    path = refer_root / "refcoco" / "instances.json"
    instances = json.loads(path.read_text())
    instances["annotations"][0]["segmentation"] = [[100, 100, 200, 100, 200, 200]]
    path.write_text(json.dumps(instances))
    with pytest.raises(ValueError, match="annotation 101: polygon .* outside the 32x24"):
        load_refcoco(refer_root, "val")
