"""load_segmentation_dataset dispatch and register_dataset."""

from __future__ import annotations

import pytest

from segcompass.data import SEGMENTATION_FEATURES, available_datasets, load_segmentation_dataset, register_dataset
from segcompass.data import loaders


def test_builtin_names():
    assert available_datasets() == ["grefcoco", "parquet", "reasonseg", "refcoco", "refcoco+", "refcocog", "synthetic"]


def test_synthetic_is_built_in_and_reads_val():
    rows = load_segmentation_dataset("synthetic", None, "val", num_samples=2, image_size=64)
    assert len(rows) == 2 and set(rows["split"]) == {"validation"}


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown dataset 'refclef'; valid names are \['grefcoco', 'parquet'"):
        load_segmentation_dataset("refclef", "/nowhere", "val")


def test_register_and_overwrite(monkeypatch):
    monkeypatch.setattr(loaders, "_REGISTRY", dict(loaders._REGISTRY))
    calls = []

    def fake(data_dir, split, **kwargs):
        calls.append((data_dir, split, kwargs))
        return "dataset"

    register_dataset("mine", fake)
    assert "mine" in available_datasets()
    assert load_segmentation_dataset("mine", "/d", "test", num_samples=3) == "dataset"
    assert calls == [("/d", "test", {"num_samples": 3})]
    with pytest.raises(ValueError, match="already registered; pass overwrite=True"):
        register_dataset("mine", fake)
    register_dataset("mine", lambda data_dir, split: "other", overwrite=True)
    assert load_segmentation_dataset("mine", "/d", "test") == "other"
    with pytest.raises(ValueError, match="must be callable"):
        register_dataset("x", "not a function")
    with pytest.raises(ValueError, match="non-empty string"):
        register_dataset("", fake)
    assert SEGMENTATION_FEATURES  # the registry's contract is this schema
