"""gRefCOCO: multi-target and no-target refs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from loader_fixtures import EXPECTED_MASKS, decode, grefs

from segcompass.data import SEGMENTATION_FEATURES, get_load_report, load_grefcoco, load_segmentation_dataset


def test_val_rows_multi_and_no_target(grefcoco_root: Path):
    ds = load_grefcoco(grefcoco_root, "val")
    assert ds.features == SEGMENTATION_FEATURES
    assert ds["sample_id"] == ["ref1_sent11", "ref1_sent12", "ref2_sent21", "ref3_sent31"]
    assert ds["no_target"] == [False, False, True, False]
    assert ds["instance_ids"] == [["101", "102"], ["101", "102"], [], ["103"]]
    assert ds["instruction"][2] == "the blue elephant"
    assert set(ds["source"]) == {"grefcoco"} and set(ds["split"]) == {"val"}
    multi = ds[0]
    assert len(multi["masks"]) == 2 and len(multi["boxes"]) == 2
    for rle, ann_id in zip(multi["masks"], (101, 102)):
        np.testing.assert_array_equal(decode(rle), EXPECTED_MASKS[ann_id])
    empty = ds[2]
    assert empty["masks"] == [] and empty["boxes"] == [] and (empty["height"], empty["width"]) == (20, 30)
    np.testing.assert_array_equal(decode(ds[3]["masks"][0]), EXPECTED_MASKS[103])
    assert get_load_report(ds).num_skipped == 0


def test_dispatch_and_other_split(grefcoco_root: Path):
    ds = load_segmentation_dataset("grefcoco", grefcoco_root, "testA")
    assert ds["sample_id"] == ["ref4_sent41"]


def _write(root: Path, refs) -> None:
    (root / "grefcoco" / "grefs(unc).json").write_text(json.dumps(refs))


def test_no_target_marker_without_ann_minus_one_and_disagreement(grefcoco_root: Path):
    refs = grefs()
    del refs[1]["no_target"]  # only ann_id == [-1] marks it
    _write(grefcoco_root, refs)
    assert load_grefcoco(grefcoco_root, "val")["no_target"][2] is True
    refs = grefs()
    refs[2]["no_target"] = True  # has a real annotation
    _write(grefcoco_root, refs)
    with pytest.raises(ValueError, match=r"ref 3: no_target=True disagrees with ann_id=\[103\]"):
        load_grefcoco(grefcoco_root, "val")


def test_truncated_grefs_json_names_file(grefcoco_root: Path):
    path = grefcoco_root / "grefcoco" / "grefs(unc).json"
    path.write_text(path.read_text()[:100])
    with pytest.raises(ValueError, match=r"grefs\(unc\)\.json is not valid JSON.*download it again"):
        load_grefcoco(grefcoco_root, "val")


def test_missing_grefs_file(grefcoco_root: Path):
    (grefcoco_root / "grefcoco" / "grefs(unc).json").unlink()
    with pytest.raises(FileNotFoundError, match=r"grefs\(unc\)\.json: gRefCOCO refs file not found"):
        load_grefcoco(grefcoco_root, "val")


def test_multi_target_ref_with_unsegmented_annotation_is_skipped_whole(grefcoco_root: Path):
    refs = grefs()
    refs.append({**refs[2], "ref_id": 9, "ann_id": [104, 105], "image_id": 2, "sentences": refs[0]["sentences"]})
    _write(grefcoco_root, refs)
    with pytest.raises(ValueError, match="annotation 105 belongs to image 3, not 2"):
        load_grefcoco(grefcoco_root, "val")
    refs[-1].update(ann_id=[105], image_id=3)
    _write(grefcoco_root, refs)
    ds = load_grefcoco(grefcoco_root, "val")
    assert len(ds) == 4 and get_load_report(ds).skipped == {"a target annotation has no usable segmentation": 2}
