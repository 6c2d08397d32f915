"""Render pipeline results: instance masks and boxes blended over the image."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60)]


def overlay_instances(image: Image.Image, instances: list[dict], alpha: float = 0.5) -> Image.Image:
    """Blend each instance's ``mask`` (bool (H, W)) in its own colour and outline its ``box`` ([x, y, w, h])."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    for i, instance in enumerate(instances):
        mask = np.asarray(instance["mask"], dtype=bool)
        if mask.shape != base.shape[:2]:
            raise ValueError(f"Instance {i} mask has shape {mask.shape}, image is {base.shape[:2]}.")
        colour = np.array(PALETTE[i % len(PALETTE)], dtype=np.float32)
        base[mask] = (1 - alpha) * base[mask] + alpha * colour
    out = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for i, instance in enumerate(instances):
        x, y, w, h = instance["box"]
        if w > 0 and h > 0:
            draw.rectangle([x, y, x + w - 1, y + h - 1], outline=PALETTE[i % len(PALETTE)], width=1)
    return out
