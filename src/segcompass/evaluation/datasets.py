"""The datasets the evaluation runner reads: any registered loader of :mod:`segcompass.data` (the synthetic
generator is the built-in ``"synthetic"``; split ``"val"`` is read as ``"validation"``)."""

from __future__ import annotations

from collections import Counter

from ..data import available_datasets, load_segmentation_dataset, register_dataset
from ..data.loaders import load_synthetic_split

__all__ = ["load_evaluation_dataset", "register_synthetic_dataset"]


def register_synthetic_dataset() -> None:
    """Make sure ``"synthetic"`` is registered (it is built into :mod:`segcompass.data.loaders`; this restores the
    built-in loader if it was removed, and keeps a loader a user registered under that name)."""
    if "synthetic" not in available_datasets():
        register_dataset("synthetic", load_synthetic_split)


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
