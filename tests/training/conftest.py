"""Shared fixtures of the training tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    """The session's tiny checkpoint directory (tests/conftest.py, read-only), a processor loaded from it, and a 4-row
    synthetic dataset: ``(directory, processor, rows)``. Tests that train load their own model from ``directory``."""
    from segcompass import SegCompassProcessor
    from segcompass.data.synthetic import SyntheticConfig, build_synthetic_dataset

    processor = SegCompassProcessor.from_pretrained(tiny_checkpoint)
    dataset = build_synthetic_dataset("train", 4, config=SyntheticConfig(image_size=64))
    return tiny_checkpoint, processor, dataset
