"""Shared fixtures of the training tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random checkpoint on disk, its processor, and a 4-row synthetic dataset: ``(directory, processor, rows)``."""
    from segcompass.data.synthetic import SyntheticConfig, build_synthetic_dataset
    from segcompass.testing import make_tiny_checkpoint

    directory = tmp_path_factory.mktemp("tiny_ckpt")
    _, processor = make_tiny_checkpoint(directory)
    dataset = build_synthetic_dataset("train", 4, config=SyntheticConfig(image_size=64))
    return directory, processor, dataset
