"""Images of the benchmark loaders: the by-path ``Image()`` storage, the header-only size read and the image size
check (decompression bombs, impossible sizes)."""

from __future__ import annotations

import io
import numbers
import os
import re
from typing import Any

from PIL import Image, UnidentifiedImageError

from ._files import PathLike, data_file_not_found

MAX_IMAGE_SIDE = 1 << 15
"""Largest image side (pixels) a loader accepts from an annotation's declared size; beyond it a mask is gigabytes."""
MAX_IMAGE_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
"""Largest image (pixels) a loader accepts: PIL's own decompression-bomb limit."""


def image_by_path(path: PathLike) -> dict[str, Any]:
    """The ``Image()`` storage for an image on disk: decoded lazily from ``path`` when a row is accessed."""
    return {"path": os.path.abspath(path), "bytes": None}


def image_size(path_or_bytes: PathLike | bytes, where: str) -> tuple[int, int]:
    """``(height, width)`` from the image header only (no pixel decoding).

    A header claiming more than :data:`MAX_IMAGE_PIXELS` pixels (a decompression bomb) or no pixels raises a
    ValueError naming ``where`` and the size.
    """
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else path_or_bytes
    try:
        with Image.open(source) as image:
            width, height = image.size
    except FileNotFoundError:
        raise data_file_not_found(path_or_bytes, f"image of {where} not found") from None
    except Image.DecompressionBombError as error:
        found = re.search(r"\((\d+) pixels\)", str(error))
        size = found.group(1) if found else "too many"
        raise ValueError(
            f"the image of {where} is too large to load ({size} pixels, more than {MAX_IMAGE_PIXELS}); it is not a "
            "benchmark image: check the file or download it again."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(
            f"cannot read the image of {where} ({error}); the file is corrupted, download it again."
        ) from None
    check_image_size(height, width, f"the image of {where}")
    return int(height), int(width)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_image_size(height: Any, width: Any, where: str, fix: str = "check the file or download it again") -> None:
    """Raise a ValueError naming ``where`` unless ``height`` and ``width`` are ints in ``[1, MAX_IMAGE_SIDE]`` with at
    most :data:`MAX_IMAGE_PIXELS` pixels (a mask of that size must fit in memory)."""
    ok = _is_int(height) and _is_int(width) and 1 <= height <= MAX_IMAGE_SIDE and 1 <= width <= MAX_IMAGE_SIDE
    if not ok or height * width > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"{where} has height {height!r} and width {width!r}, which is too large or not a positive integer size "
            f"(each side in [1, {MAX_IMAGE_SIDE}], at most {MAX_IMAGE_PIXELS} pixels); {fix}."
        )
