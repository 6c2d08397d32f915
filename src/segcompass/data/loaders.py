"""One entry point for every benchmark loader, plus a registry so other modules can add datasets.

>>> from segcompass.data import load_segmentation_dataset
>>> ds = load_segmentation_dataset("refcocog", "/data/refer", "val")          # doctest: +SKIP
>>> ds = load_segmentation_dataset("parquet", "/data/refcoco_testA", "test", source="refcoco")  # doctest: +SKIP
>>> ds = load_segmentation_dataset("synthetic", None, "test", num_samples=8)  # generated offline  # doctest: +SKIP

A loader is any callable ``fn(data_dir, split, **kwargs) -> datasets.Dataset`` returning
:data:`~segcompass.data.schema.SEGMENTATION_FEATURES` rows; add one with :func:`register_dataset`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import datasets

from ._files import PathLike
from .grefcoco import load_grefcoco
from .parquet import load_parquet_mirror
from .reasonseg import load_reasonseg
from .refcoco import load_refcoco

Loader = Callable[..., datasets.Dataset]


def _parquet(data_dir: PathLike, split: str, **kwargs: Any) -> datasets.Dataset:
    """``load_parquet_mirror(data_dir, split=split, **kwargs)`` in the registry's calling convention."""
    return load_parquet_mirror(data_dir, split=split, **kwargs)


def load_synthetic_split(data_dir: PathLike | None, split: str, **kwargs: Any) -> datasets.Dataset:
    """:func:`~segcompass.data.synthetic.load_synthetic` in the registry's calling convention (``data_dir`` may be
    ``None``: scenes are generated; the benchmark split name ``"val"`` is read as ``"validation"``)."""
    from .synthetic import load_synthetic

    return load_synthetic(data_dir, {"val": "validation"}.get(split, split), **kwargs)


_REGISTRY: dict[str, Loader] = {
    "refcoco": functools.partial(load_refcoco, dataset="refcoco"),
    "refcoco+": functools.partial(load_refcoco, dataset="refcoco+"),
    "refcocog": functools.partial(load_refcoco, dataset="refcocog"),
    "grefcoco": load_grefcoco,
    "reasonseg": load_reasonseg,
    "parquet": _parquet,
    "synthetic": load_synthetic_split,
}


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_segmentation_dataset`, sorted."""
    return sorted(_REGISTRY)


def register_dataset(name: str, fn: Loader, *, overwrite: bool = False) -> None:
    """Make ``load_segmentation_dataset(name, data_dir, split, **kwargs)`` call ``fn(data_dir, split, **kwargs)``.

    Raises:
        ValueError: ``name`` is empty or already registered (pass ``overwrite=True`` to replace it), or ``fn`` is
            not callable.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name={name!r} must be a non-empty string.")
    if not callable(fn):
        raise ValueError(f"fn for {name!r} must be callable as fn(data_dir, split, **kwargs), got {fn!r}.")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"dataset {name!r} is already registered; pass overwrite=True to replace it.")
    _REGISTRY[name] = fn


def load_segmentation_dataset(name: str, data_dir: PathLike, split: str, **kwargs: Any) -> datasets.Dataset:
    """Load ``split`` of the dataset registered as ``name`` from ``data_dir`` (keyword options go to its loader).

    Built in: ``"refcoco"``, ``"refcoco+"``, ``"refcocog"`` (:func:`~segcompass.data.refcoco.load_refcoco`),
    ``"grefcoco"``, ``"reasonseg"``, ``"parquet"`` (:func:`~segcompass.data.parquet.load_parquet_mirror`, with
    ``data_dir`` the file or folder) and ``"synthetic"`` (:func:`load_synthetic_split`: generated, ``data_dir``
    ``None`` or a cache folder).

    Raises:
        ValueError: unknown ``name`` (the message lists the valid names).
    """
    loader = _REGISTRY.get(name)
    if loader is None:
        raise ValueError(f"unknown dataset {name!r}; valid names are {available_datasets()} (or register_dataset).")
    return loader(data_dir, split, **kwargs)
