"""The datasets the evaluation runner reads: any registered loader (:mod:`segcompass.data`), plus the synthetic
generator registered as ``"synthetic"`` on first use (split ``"val"`` read as ``"validation"``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..data import available_datasets, load_segmentation_dataset, register_dataset
from ..data.synthetic import load_synthetic

__all__ = ["load_evaluation_dataset", "register_synthetic_dataset"]


def _load_synthetic_split(data_dir, split: str, **kwargs: Any):
    """``load_synthetic`` with the benchmark split name ``"val"`` accepted for ``"validation"``."""
    return load_synthetic(data_dir, {"val": "validation"}.get(split, split), **kwargs)


def register_synthetic_dataset() -> None:
    """Register :func:`~segcompass.data.synthetic.load_synthetic` as the dataset ``"synthetic"`` (idempotent).

    A loader already registered under ``"synthetic"`` (by the user or another module) is kept, not overwritten.
    """
    if "synthetic" in available_datasets():
        return
    register_dataset("synthetic", _load_synthetic_split)


def load_evaluation_dataset(dataset_name: str, data_dir, split: str, num_samples: int | None, loader_kwargs: dict):
    register_synthetic_dataset()
    if dataset_name not in available_datasets():
        raise ValueError(f"unknown dataset {dataset_name!r}; choose one of {available_datasets()} "
                         "(or add one with segcompass.data.register_dataset).")
    if num_samples is not None and num_samples <= 0:
        raise ValueError(f"num_samples={num_samples} must be a positive number of rows (or None for the whole split).")
    kwargs = dict(loader_kwargs)
    if dataset_name == "synthetic" and num_samples is not None:
        kwargs.setdefault("num_samples", num_samples)  # generate only what is evaluated
    dataset = load_segmentation_dataset(dataset_name, data_dir, split, **kwargs)
    if len(dataset) == 0:
        raise ValueError(f"{dataset_name}/{split} in {data_dir} has no rows; check the split name and data_dir.")
    if num_samples is not None and num_samples < len(dataset):
        dataset = dataset.select(range(num_samples))
    counts = Counter(dataset["sample_id"])
    if len(counts) != len(dataset):
        duplicate = next(i for i, n in counts.items() if n > 1)
        raise ValueError(f"sample_id {duplicate!r} occurs more than once in {dataset_name}/{split}; predictions are "
                         "keyed by sample_id, so give each row a unique one.")
    return dataset
