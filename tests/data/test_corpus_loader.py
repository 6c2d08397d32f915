"""Image-text corpora for SAE training (OBELICS-style documents and caption pairs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segcompass.data import CORPUS_FEATURES, get_load_report, load_image_text_corpus


def test_obelics_adjacent_text_and_skips(obelics_file: Path):
    ds = load_image_text_corpus(obelics_file)
    assert ds.features == CORPUS_FEATURES
    assert ds["text"] == ["After the image.", "After the image."]  # y.png is last: the text before it
    assert [image.size for image in ds["image"]] == [(10, 8), (6, 6)]
    report = get_load_report(ds)
    assert report.num_rows == 2 and report.num_skipped == 2
    assert set(report.skipped) == {"document without images",
                                   "remote image URL (download the images and point the records at local files)"}
    assert report.examples["document without images"] == ["docs.jsonl:2"]


def test_obelics_document_context(obelics_file: Path):
    ds = load_image_text_corpus(obelics_file, format="obelics", text_context="document")
    assert ds["text"][0] == "Intro text.\n\nAfter the image."


def test_pairs_from_jsonl_csv_and_parquet(pairs_dir: Path):
    ds = load_image_text_corpus(pairs_dir)  # every file in the folder, sorted: csv, jsonl, parquet
    assert ds["text"] == ["again red", "a red square", "wide", "embedded"]
    assert [image.size for image in ds["image"]] == [(8, 8), (8, 8), (9, 6), (7, 5)]
    stored = ds.data.column("image").to_pylist()
    assert stored[0]["bytes"] is None and stored[0]["path"].endswith("a.jpg") and stored[3]["bytes"]
    assert get_load_report(ds).num_skipped == 0


def test_missing_image_and_bad_records(pairs_dir: Path, tmp_path: Path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps({"image": "missing.jpg", "text": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"missing\.jpg: broken\.jsonl:1: image not found"):
        load_image_text_corpus(path)
    path.write_text('{"image": "a.jpg", "te')
    with pytest.raises(ValueError, match=r"broken\.jsonl:1 is not valid JSON"):
        load_image_text_corpus(path)
    path.write_text(json.dumps({"picture": "a.jpg"}) + "\n")
    with pytest.raises(ValueError, match=r"broken\.jsonl:1: record keys \['picture'\] match no corpus format"):
        load_image_text_corpus(path)
    path.write_text(json.dumps({"image": "a.jpg", "text": "ok"}) + "\n")
    assert load_image_text_corpus(path, image_root=pairs_dir)["text"] == ["ok"]


def test_explicit_format_must_match(obelics_file: Path):
    with pytest.raises(ValueError, match=r"docs\.jsonl:1: format='pairs' but the record looks like 'obelics'"):
        load_image_text_corpus(obelics_file, format="pairs")
