"""Datasets in one schema (:mod:`segcompass.data.schema`)."""

from .schema import COLUMNS, SEGMENTATION_FEATURES
from ._common import LoadReport, get_load_report
from ._files import DataFileNotFoundError
from .corpus import CORPUS_FEATURES, load_image_text_corpus
from .grefcoco import load_grefcoco
from .loaders import available_datasets, load_segmentation_dataset, register_dataset
from .parquet import load_parquet_mirror
from .reasonseg import load_reasonseg
from .refcoco import load_refcoco
from .safe_pickle import UnsafePickleError, safe_load_pickle

__all__ = [
    "COLUMNS",
    "SEGMENTATION_FEATURES",
    "CORPUS_FEATURES",
    "DataFileNotFoundError",
    "LoadReport",
    "UnsafePickleError",
    "available_datasets",
    "get_load_report",
    "load_grefcoco",
    "load_image_text_corpus",
    "load_parquet_mirror",
    "load_reasonseg",
    "load_refcoco",
    "load_segmentation_dataset",
    "register_dataset",
    "safe_load_pickle",
]
