"""JSON-ready copies of the analyses' results (plain dicts of Python scalars and lists)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def to_jsonable(value: Any) -> Any:
    """A copy of ``value`` made of dicts, lists, str, int, float, bool and None (numpy / torch values converted,
    NaN and infinities as ``None``), ready for ``json.dumps``."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
