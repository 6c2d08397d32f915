"""Loading and validating input images: everything becomes an 8-bit RGB ``PIL.Image``, or a one-line ``ValueError``.

Accepted inputs (:func:`load_image`):

- ``PIL.Image.Image`` in any of the modes below;
- ``numpy.ndarray`` (or a CPU ``torch.Tensor``, converted with ``.numpy()``) shaped ``(H, W)``, ``(H, W, 1)``,
  ``(H, W, 3)`` or ``(H, W, 4)`` (channels last), ``uint8`` in 0..255, ``bool``, or floating point in [0, 1];
- a path (``str`` or ``os.PathLike``) to an image file that PIL can decode.

Modes and what happens to them:

- ``RGB``: kept.
- ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``RGBX``: converted to RGB.
- ``LA``, ``La``, ``PA``, ``RGBA``, ``RGBa`` and ``P`` with a transparent colour: **alpha-composited on white**.
- ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` (16-bit grey): scaled to 8 bits (value / 257, rounded), then RGB.
- anything else (``I``, ``F``, ``LAB``, ``HSV``, ...): refused with a ``ValueError``, because the value range is
  unknown (depth maps, float images, ...) and any silent mapping would be a guess.

Transparent pixels are composited on white rather than having the alpha dropped: the colour stored under a fully
transparent pixel is arbitrary (often black), and white is what image viewers show.

The EXIF orientation tag is **not** applied by default: masks come back in the coordinates of the pixels as they
are stored, which is the convention of COCO-style annotations and of ``datasets.Image`` decoding. Pass
``exif_transpose=True`` to rotate a photo to its camera orientation first (masks then follow the rotated image).
The processor keeps the stored pixels (training annotations are drawn on them); ``pipeline("reasoning-segmentation")``
and ``segcompass segment`` pass ``exif_transpose=True``: their masks come back in the orientation the user sees.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageInput", "SUPPORTED_MODES", "load_image", "load_image_batch", "load_images"]

ImageInput = Any
"""Anything :func:`load_image` accepts: a PIL image, an array, or a path."""

_RGB_CONVERTIBLE = ("RGB", "L", "1", "P", "CMYK", "YCbCr", "RGBX")
_WITH_ALPHA = ("LA", "La", "PA", "RGBA", "RGBa")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
SUPPORTED_MODES = (*_RGB_CONVERTIBLE, *_WITH_ALPHA, *_SIXTEEN_BIT)
"""PIL modes :func:`load_image` converts to RGB; any other mode raises ``ValueError``."""

_FLOAT_TOLERANCE = 1e-3


def load_image(image: ImageInput, *, exif_transpose: bool = False) -> Image.Image:
    """Return ``image`` as an 8-bit RGB ``PIL.Image`` (see the module docstring for the accepted inputs).

    Args:
        image: a ``PIL.Image.Image``; an array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` (``uint8``,
            ``bool`` or float in [0, 1]); or a path to an image file.
        exif_transpose: rotate/flip according to the EXIF orientation tag first (default ``False``: stored pixels).

    Returns:
        ``PIL.Image.Image`` in mode ``"RGB"`` with both sides ≥ 1 (a new object; the input is never modified).

    Raises:
        ValueError: unsupported mode, dtype or shape; zero-size image; a file that cannot be decoded (corrupt,
            truncated, not an image); a URL.
        FileNotFoundError: ``image`` is a path that does not exist.
        TypeError: any other input type.
    """
    if isinstance(image, Image.Image):
        pil, where = image, "image"
    elif isinstance(image, (str, os.PathLike)):
        pil, where = _open_file(image), f"image file '{os.fspath(image)}'"
    elif isinstance(image, np.ndarray) or _is_tensor(image):
        return _from_array(image)
    else:
        raise TypeError(
            f"Expected a PIL image, a numpy array (H, W[, C]) or a path to an image file, got {type(image).__name__}."
        )
    _check_size(pil.size, where)
    if exif_transpose:
        pil = ImageOps.exif_transpose(pil)
    return _to_rgb(pil, where)


def load_images(images: ImageInput | list[ImageInput], *, exif_transpose: bool = False) -> list[Image.Image]:
    """:func:`load_image` over one image or a list/tuple of images; returns a list of RGB ``PIL.Image``."""
    if isinstance(images, (list, tuple)):
        return [load_image(image, exif_transpose=exif_transpose) for image in images]
    return [load_image(images, exif_transpose=exif_transpose)]


def load_image_batch(images: ImageInput | list[ImageInput], batch_size: int) -> list[Image.Image]:
    """One RGB image per sample of a batch of ``batch_size``: a single image is shared by every sample (decoded once),
    a list must hold one image per sample (``ProcessorMixin.apply_chat_template``'s one-element lists per
    conversation are unwrapped)."""
    if isinstance(images, (list, tuple)):
        flat = []
        for item in images:
            if isinstance(item, (list, tuple)):
                if len(item) != 1:
                    raise ValueError(
                        f"Each sample takes exactly one image, got a sample with {len(item)}; pass one image per "
                        "sample."
                    )
                item = item[0]
            flat.append(item)
    else:
        flat = [images]
    if len(flat) == 1 and batch_size > 1:
        flat = flat * batch_size  # one image, several instructions: the image is shared
    elif len(flat) != batch_size:
        raise ValueError(
            f"Got {len(flat)} images for {batch_size} instructions; pass one image per instruction, or a single "
            "image to share across all instructions."
        )
    loaded: dict[int, Image.Image] = {}  # a shared image is decoded once
    for image in flat:
        if id(image) not in loaded:
            loaded[id(image)] = load_image(image)
    return [loaded[id(image)] for image in flat]


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _check_size(size: tuple[int, int], where: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(
            f"The {where} is empty ({width}x{height} pixels, width x height); pass an image with at least one pixel "
            "(re-save the image if it should not be empty)."
        )


def _open_file(path: str | os.PathLike) -> Image.Image:
    text = os.fspath(path)
    if isinstance(text, str) and text.startswith(("http://", "https://")):
        raise ValueError(f"Image URLs are not fetched ('{text}'); download the file and pass its local path.")
    file = Path(text)
    if not file.is_file():
        raise FileNotFoundError(f"Image file '{text}' does not exist (or is not a file); check the path.")
    try:
        with warnings.catch_warnings():  # over MAX_IMAGE_PIXELS PIL only warns (it raises over twice that): refuse both
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as opened:
                opened.load()  # decode now: truncated data fails here, not later inside an image processor
                image = opened.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ValueError(
            f"Image file '{text}' is larger than PIL's decompression-bomb limit ({error}); if you trust the file, "
            "raise `PIL.Image.MAX_IMAGE_PIXELS`."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        truncated = "image file is truncated" in str(error)
        problem = "is truncated" if truncated else "cannot be decoded as an image"
        raise ValueError(
            f"Image file '{text}' {problem} ({type(error).__name__}: {error}); check the file, or re-save it with an "
            "image editor or PIL."
        ) from None
    return image


def _to_rgb(image: Image.Image, where: str) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"  # palette transparency: handle like any alpha channel
    if mode in _WITH_ALPHA:
        rgba = (image.convert("LA") if mode == "La" else image).convert("RGBA")  # PIL has no direct La -> RGBA
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in _SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode in _RGB_CONVERTIBLE:
        return image.convert("RGB")
    raise ValueError(
        f"The {where} has PIL mode '{mode}', which has no defined mapping to 8-bit RGB (supported modes: "
        f"{', '.join(SUPPORTED_MODES)}). Convert it first, e.g. scale the values to 0..255 and pass "
        "`Image.fromarray(array.astype(np.uint8))`, or `image.convert('RGB')` if clipping is acceptable."
    )


def _from_array(array: Any) -> Image.Image:
    if _is_tensor(array):
        array = array.detach().cpu().numpy()
    shape, dtype = tuple(array.shape), array.dtype
    if array.ndim == 3 and shape[-1] not in (1, 3, 4) and shape[0] in (1, 3, 4):
        raise ValueError(
            f"The image array has shape {shape}, which looks channels-first; pass (H, W, C), e.g. "
            "`array.transpose(1, 2, 0)`."
        )
    if array.ndim not in (2, 3) or (array.ndim == 3 and shape[-1] not in (1, 3, 4)):
        raise ValueError(f"The image array must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {shape}.")
    _check_size((shape[1], shape[0]), f"image array of shape {shape}")
    if dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("The image array contains NaN or infinite values; clean them before passing the image.")
        low, high = float(array.min()), float(array.max())
        if low < -_FLOAT_TOLERANCE or high > 1 + _FLOAT_TOLERANCE:
            raise ValueError(
                f"A floating-point image array must hold values in [0, 1]; got [{low:g}, {high:g}]. Divide by 255 if "
                "it holds 0..255 values, or cast it to uint8."
            )
        array = np.clip(np.rint(array.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    elif dtype != np.uint8:
        raise ValueError(
            f"Image arrays must be uint8 (0..255), bool, or float in [0, 1]; got dtype {dtype}. Scale and cast it, "
            "e.g. `(array / array.max() * 255).astype(np.uint8)` for 16-bit data."
        )
    array = np.ascontiguousarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return _to_rgb(Image.fromarray(array), "image array")  # uint8 (H, W) / (H, W, 3) / (H, W, 4): L / RGB / RGBA
