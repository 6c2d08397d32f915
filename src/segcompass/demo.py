"""An offline demo: run a model on synthetic scenes and write an HTML gallery that shows *why* for each answer.

Each card holds the image with the kept instances overlaid, the instruction, the model's reasoning, every slot's
heatmap and confidence, and the SAE concepts that fed each kept slot. Open ``index.html`` in a browser.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .utils.logging import get_logger
from .visualize import overlay_instances

logger = get_logger(__name__)


def _heatmap_image(heatmap: np.ndarray) -> Image.Image:
    """A (H, W) probability map as a red-on-black PNG."""
    values = (np.clip(heatmap, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(np.stack([values, values // 4, np.zeros_like(values)], axis=-1))


def build_demo(output_dir, model: str | None = None, num_examples: int = 6, seed: int = 0,
               image_size: int | None = None, max_new_tokens: int = 128) -> Path:
    """Write ``index.html`` (+ PNGs) for ``num_examples`` synthetic test scenes; returns the HTML path.

    Args:
        model: a checkpoint directory; ``None`` uses the embedded default.
        image_size: synthetic scene size (default: the model's SAM input size).
    """
    from transformers import pipeline

    from .data.synthetic import SyntheticConfig, generate_sample, sample_seed
    from .pipelines import TASK
    from .presets import default_model_path

    model = model or default_model_path()
    if model is None:
        raise ValueError("No model given and this installation ships no embedded default; pass a checkpoint path.")
    pipe = pipeline(TASK, model=model)
    size = image_size or pipe.model.config.sam_config.vision_config.image_size
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cards = []
    for i in tqdm(range(num_examples), desc="Demo", unit="example"):
        sample = generate_sample(sample_seed("test", i, seed), SyntheticConfig(image_size=size))
        result = pipe(sample["image"], sample["instruction"], max_new_tokens=max_new_tokens, return_all_slots=True)
        overlay_instances(sample["image"], [inst for inst in result["instances"] if inst["kept"]]).save(
            out / f"example{i}.png")
        slots = []
        for inst in sorted(result["instances"], key=lambda x: x["slot"]):
            _heatmap_image(inst["heatmap"]).save(out / f"example{i}_slot{inst['slot']}.png")
            concepts = ", ".join(f"f{c['feature']} ({c['activation']:.2f}, w {c['weight']:.2f})" for c in inst["concepts"])
            state = "kept" if inst["kept"] else "dropped"
            slots.append(
                f"<div class='slot'><img src='example{i}_slot{inst['slot']}.png'><br>slot {inst['slot']}: "
                f"{inst['score']:.2f} ({state})<br><small>{html.escape(concepts)}</small></div>"
            )
        cards.append(
            f"<div class='card'><img class='main' src='example{i}.png'><div><b>{html.escape(sample['instruction'])}"
            f"</b><p><i>reasoning:</i> {html.escape(result['reasoning'] or '(none)')}</p>"
            f"<p><i>reference:</i> {html.escape(sample['reasoning'])}</p>{''.join(slots)}</div></div>"
        )
    page = (
        "<!doctype html><meta charset='utf-8'><title>SegCompass demo</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:auto}.card{display:flex;gap:16px;border-bottom:1px "
        "solid #ccc;padding:12px}.main{width:256px;image-rendering:pixelated}.slot{display:inline-block;"
        "width:150px;vertical-align:top;margin:4px}.slot img{width:128px;image-rendering:pixelated}</style>"
        f"<h1>SegCompass demo</h1><p>model: {html.escape(str(model))}</p>{''.join(cards)}"
    )
    index = out / "index.html"
    index.write_text(page)
    logger.info("Demo written to %s", index)
    return index
