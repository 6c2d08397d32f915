"""Datasets in one schema (:mod:`segcompass.data.schema`)."""

from .schema import COLUMNS, SEGMENTATION_FEATURES

__all__ = ["COLUMNS", "SEGMENTATION_FEATURES"]
