"""Library logging: everything in segcompass logs through ``transformers.utils.logging`` so one verbosity knob
(``transformers.logging.set_verbosity_info()``) controls both. Library code never prints."""

from __future__ import annotations

from transformers.utils import logging as hf_logging


def get_logger(name: str):
    """Return a logger under the transformers hierarchy (e.g. ``get_logger(__name__)``)."""
    return hf_logging.get_logger(name)
