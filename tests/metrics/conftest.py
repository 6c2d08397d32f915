"""Shared fixtures of the metric tests."""

import evaluate
import pytest

import segcompass.metrics


@pytest.fixture(scope="module")
def modules():
    """The three ``evaluate`` modules, loaded offline from the package by path."""
    return {
        "ciou": evaluate.load(segcompass.metrics.CIOU, keep_in_memory=True),
        "giou": evaluate.load(segcompass.metrics.GIOU, keep_in_memory=True),
        "all": evaluate.load(segcompass.metrics.REASONING_SEGMENTATION, keep_in_memory=True),
    }
