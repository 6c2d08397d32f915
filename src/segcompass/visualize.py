"""Render pipeline results for people: the readable overlay of the kept instances and one slot's heatmap.

* :func:`render_overlay` - the image enlarged (nearest neighbour, whole-number factor, so pixels stay square and
  masks stay exact) to at least ``min_side`` px on its short side, the instruction as a caption, each kept
  instance's outline and translucent fill in its slot's colour with ``slot k · score`` beside it, a legend (colour,
  slot, score), and a "no target" banner when nothing is kept.
* :func:`render_heatmap` - one slot's heatmap as a colour map with alpha over a grey copy of the image, with a
  0-1 colour bar and an optional title.
* :func:`overlay_instances` - the plain blend at the original size (masks and boxes only), for callers that need
  the image's own pixel grid.

A slot keeps its colour everywhere (:func:`slot_colour`), so the overlay, the legend and the heatmaps agree.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .utils.io import atomic_path

__all__ = ["MIN_SIDE", "PALETTE", "overlay_instances", "render_heatmap", "render_overlay", "save_image_atomic",
           "slot_colour", "upscale"]

#: Distinct, saturated colours (Kelly / Tableau); slot k uses PALETTE[k % len(PALETTE)].
PALETTE = [(230, 25, 75), (0, 130, 200), (60, 180, 75), (245, 130, 48), (145, 30, 180), (0, 190, 190),
           (240, 50, 230), (128, 128, 0), (170, 110, 40), (0, 0, 128)]
#: Short side, in px, that rendered images reach at least.
MIN_SIDE = 384
_INK, _PAPER, _BAND = (255, 255, 255), (20, 20, 20), (34, 34, 38)
# A perceptual "inferno"-like colour map: value 0 -> near black, 1 -> pale yellow.
_CMAP_STOPS = np.array([(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21),
                        (250, 193, 39), (252, 255, 164)], dtype=np.float32)


def slot_colour(slot: int) -> tuple[int, int, int]:
    """The colour of slot ``slot`` in every rendering."""
    return PALETTE[int(slot) % len(PALETTE)]


def upscale(image: Image.Image, min_side: int = MIN_SIDE) -> tuple[Image.Image, int]:
    """``image`` (as RGB) enlarged by the smallest whole factor that brings its short side to ``min_side`` px
    (nearest neighbour: no blur, no distortion); ``(image, factor)``, factor 1 when it is already large enough."""
    image = image.convert("RGB")
    factor = max(1, math.ceil(min_side / max(1, min(image.size))))
    if factor == 1:
        return image, 1
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST), factor


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError, ImportError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """``text`` split into lines no wider than ``width`` px (a single over-long word keeps its own line)."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and _text_size(draw, candidate, font)[0] > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + [line] if line else lines or [""]


def _band(width: int, lines: list[tuple[str, tuple[int, int, int] | None]], font, pad: int) -> Image.Image:
    """A dark strip holding ``lines`` (text, optional colour swatch drawn before it)."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = _text_size(probe, "Hg", font)[1] + pad // 2
    band = Image.new("RGB", (width, pad + len(lines) * (line_height + pad // 2) + pad // 2), _BAND)
    draw = ImageDraw.Draw(band)
    y = pad
    for text, swatch in lines:
        x = pad
        if swatch is not None:
            draw.rectangle([x, y, x + line_height - 1, y + line_height - 1], fill=swatch, outline=_INK)
            x += line_height + pad // 2
        draw.text((x, y), text, fill=_INK, font=font)
        y += line_height + pad // 2
    return band


def _stack(*parts: Image.Image) -> Image.Image:
    out = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts)), _BAND)
    y = 0
    for part in parts:
        out.paste(part, (0, y))
        y += part.height
    return out


def _erode(mask: np.ndarray, width: int, outside: bool) -> np.ndarray:
    """``mask`` eroded by ``width`` px (4-neighbour, by shifts); pixels beyond the image count as ``outside``."""
    inner = mask.copy()
    for _ in range(width):
        padded = np.pad(inner, 1, constant_values=outside)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inner


def _edges(mask: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(the pixels of ``mask`` within ``width`` px of its border, the ring of ``width // 2 + 1`` px just outside)."""
    inside = mask & ~_erode(mask, width, outside=False)
    outside = ~_erode(~mask, width // 2 + 1, outside=True) & ~mask
    return inside, outside


def _largest_part(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of ``mask`` (labels go beside the bulk of an instance, not a speck)."""
    from scipy import ndimage

    parts, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count <= 1:
        return mask
    return parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:]))


def _label_colour(colour) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``colour``."""
    r, g, b = colour
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else _INK


def _place(rect, placed, bounds):
    """Move label ``rect`` (x0, y0, x1, y1) down until it overlaps no placed label, keeping it inside ``bounds``."""
    x0, y0, x1, y1 = rect
    w, h = x1 - x0, y1 - y0
    x0 = min(max(0, x0), max(0, bounds[0] - w))
    y0 = min(max(0, y0), max(0, bounds[1] - h))
    for _ in range(len(placed) + 1):
        clash = [p for p in placed if x0 < p[2] and p[0] < x0 + w and y0 < p[3] and p[1] < y0 + h]
        if not clash:
            break
        y0 = max(p[3] for p in clash) + 1
        if y0 + h > bounds[1]:
            y0 = max(0, bounds[1] - h)
            break
    return x0, y0, x0 + w, y0 + h


def _name(instance: dict) -> str:
    """An instance's legend text: its ``caption``, else its slot and score."""
    return instance.get("caption") or f"slot {instance['slot']}   score {instance['score']:.2f}"


def _kept(instances: list[dict]) -> list[dict]:
    return [inst for inst in instances if inst.get("kept", True)]


def render_overlay(image: Image.Image, instances: list[dict], instruction: str | None = None, *,
                   min_side: int = MIN_SIDE, alpha: float = 0.45, no_target_note: str | None = None) -> Image.Image:
    """The readable overlay of a pipeline result (see the module docstring).

    Args:
        image: the segmented image (any size; masks are at its size, as the pipeline returns them).
        instances: the pipeline's ``instances``; with ``return_all_slots=True`` only those with ``kept`` are drawn.
            An instance may carry a ``"caption"`` (e.g. ``"target 1"`` for ground truth) to show instead of its
            slot and score.
        instruction: shown as a caption above the image.
        no_target_note: the legend's text when nothing is kept (default: no slot passed the threshold).
    """
    big, factor = upscale(image, min_side)
    kept = _kept(instances)
    base = np.asarray(big, dtype=np.float32).copy()
    scale = max(1, min(big.size) // 128)
    font, small = _font(7 * scale + 4), _font(6 * scale + 3)
    masks = []
    for inst in kept:
        mask = np.asarray(inst["mask"], dtype=bool)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"instance of slot {inst.get('slot')} has a mask of shape {mask.shape}, but the image "
                             f"is {image.height}x{image.width}; pass masks at the image's size.")
        mask = mask.repeat(factor, 0).repeat(factor, 1)
        colour = np.array(slot_colour(inst["slot"]), dtype=np.float32)
        base[mask] = (1 - alpha) * base[mask] + alpha * colour
        masks.append(mask)
    for inst, mask in zip(kept, masks):  # outlines after every fill, so no fill covers another outline
        inside, outside = _edges(mask, max(2, scale))
        base[outside] = np.array(_PAPER, dtype=np.float32)  # a dark halo: the outline reads on any colour
        base[inside] = np.array(slot_colour(inst["slot"]), dtype=np.float32)
    picture = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    placed: list[tuple[int, int, int, int]] = []
    for inst, mask in zip(kept, masks):
        text = inst.get("caption") or f"slot {inst['slot']} · {inst['score']:.2f}"
        tw, th = _text_size(draw, text, small)
        if mask.any():
            ys, xs = np.nonzero(_largest_part(mask))
            x0, y0 = int(xs.min()), int(ys.min()) - th - 8  # above the instance, else pushed inside the image
        else:
            x0, y0 = 0, 0
        rect = _place((x0, y0, x0 + tw + 8, y0 + th + 8), placed, picture.size)
        placed.append(rect)
        draw.rectangle(rect, fill=slot_colour(inst["slot"]), outline=_PAPER)
        draw.text((rect[0] + 4, rect[1] + 4 - draw.textbbox((0, 0), text, font=small)[1]), text,
                  fill=_label_colour(slot_colour(inst["slot"])), font=small)
    if not kept:
        _banner(picture, "NO TARGET", _font(14 * scale + 8))
    pad = 4 * scale + 4
    parts = []
    if instruction is not None:
        wrapped = _wrap(draw, f'"{instruction.strip()}"', font, picture.width - 2 * pad)
        parts.append(_band(picture.width, [(line, None) for line in wrapped], font, pad))
    parts.append(picture)
    if kept:
        legend = [(f"{_name(inst)}   area {int(np.count_nonzero(inst['mask']))} px", slot_colour(inst["slot"]))
                  for inst in kept]
    else:
        note = no_target_note or "no target: no slot passed the confidence threshold"
        legend = [(line, None) for line in _wrap(draw, note, small, picture.width - 2 * pad)]
    parts.append(_band(picture.width, legend, small, pad))
    return _stack(*parts)


def _banner(picture: Image.Image, text: str, font) -> None:
    """Write ``text`` on a translucent dark strip across the middle of ``picture`` (in place)."""
    draw = ImageDraw.Draw(picture, "RGBA")
    tw, th = _text_size(draw, text, font)
    y0 = (picture.height - th) // 2 - th // 2
    draw.rectangle([0, y0, picture.width, y0 + 2 * th], fill=(0, 0, 0, 170))
    top = draw.textbbox((0, 0), text, font=font)[1]
    draw.text(((picture.width - tw) // 2, y0 + th // 2 - top), text, fill=(255, 255, 255, 255), font=font)


def _colour_map(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB float (..., 3) along the inferno-like stops."""
    position = np.clip(values, 0.0, 1.0) * (len(_CMAP_STOPS) - 1)
    low = np.floor(position).astype(int).clip(0, len(_CMAP_STOPS) - 2)
    frac = (position - low)[..., None]
    return (1 - frac) * _CMAP_STOPS[low] + frac * _CMAP_STOPS[low + 1]


def render_heatmap(image: Image.Image, heatmap: np.ndarray, title: str | None = None, *, min_side: int = MIN_SIDE,
                   max_alpha: float = 0.8) -> Image.Image:
    """Slot heatmap ``heatmap`` (probabilities, (h, w), any size: resized bilinearly to the image) laid over a grey
    copy of ``image``: colour and opacity grow with the value, so the image shows through where it is low.
    A 0-1 colour bar sits below; ``title`` (e.g. ``"slot 3 · 0.84 · kept"``) above."""
    big, _ = upscale(image, min_side)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (h, w), got shape {heat.shape}; pass one slot's heatmap.")
    heat = np.asarray(Image.fromarray(np.nan_to_num(heat)).resize(big.size, Image.Resampling.BILINEAR))
    heat = np.clip(heat, 0.0, 1.0)
    grey = np.asarray(big.convert("L"), dtype=np.float32)[..., None] * 0.6 + 90.0  # light: dark hues stand out
    weight = (max_alpha * np.sqrt(heat))[..., None]
    blended = (1 - weight) * grey + weight * _colour_map(heat)
    picture = Image.fromarray(blended.clip(0, 255).astype(np.uint8))
    scale = max(1, min(big.size) // 128)
    small, pad = _font(6 * scale + 3), 4 * scale + 4
    bar = Image.new("RGB", (picture.width, 3 * pad + 2 * scale), _BAND)
    draw = ImageDraw.Draw(bar)
    left, right = pad + _text_size(draw, "0", small)[0] + pad // 2, picture.width - pad - _text_size(draw, "1", small)[0]
    ramp = _colour_map(np.linspace(0, 1, max(1, right - left - pad // 2)))[None].repeat(pad, 0)
    bar.paste(Image.fromarray(ramp.astype(np.uint8)), (left, pad))
    draw.text((pad, pad - draw.textbbox((0, 0), "0", font=small)[1]), "0", fill=_INK, font=small)
    draw.text((right, pad - draw.textbbox((0, 0), "1", font=small)[1]), "1", fill=_INK, font=small)
    parts = [picture, bar]
    if title:
        parts.insert(0, _band(picture.width, [(title, None)], small, pad))
    return _stack(*parts)


def overlay_instances(image: Image.Image, instances: list[dict], alpha: float = 0.5) -> Image.Image:
    """Blend each instance's ``mask`` (bool (H, W)) in its slot's colour and outline its ``box`` ([x, y, w, h]), at
    the image's own size (see :func:`render_overlay` for the readable version)."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    for i, instance in enumerate(instances):
        mask = np.asarray(instance["mask"], dtype=bool)
        if mask.shape != base.shape[:2]:
            raise ValueError(f"Instance {i} mask has shape {mask.shape}, image is {base.shape[:2]}.")
        colour = np.array(slot_colour(instance.get("slot", i)), dtype=np.float32)
        base[mask] = (1 - alpha) * base[mask] + alpha * colour
    out = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for i, instance in enumerate(instances):
        x, y, w, h = instance["box"]
        if w > 0 and h > 0:
            draw.rectangle([x, y, x + w - 1, y + h - 1], outline=slot_colour(instance.get("slot", i)), width=1)
    return out


def save_image_atomic(image: Image.Image, path: str | os.PathLike) -> Path:
    """Save ``image`` to ``path`` (format from its suffix: .png, .jpg, ...) through a temporary file beside it and
    ``os.replace``, so a reader never sees a partial file."""
    path = Path(path)
    format = Image.registered_extensions().get(path.suffix.lower())
    if format is None:
        raise ValueError(f"cannot tell an image format from {str(path)!r}; end the file name with .png or .jpg.")
    with atomic_path(path) as tmp:
        image.save(tmp, format=format)
    return path
