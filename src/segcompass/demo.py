"""An offline demo: run a model on synthetic scenes and write a static HTML gallery that shows *why* per answer.

Each card holds the instruction with a right / wrong mark, the ground truth and the prediction side by side (the
readable overlays of :mod:`segcompass.visualize`, never stretched) with their IoU, the model's reasoning next to
the reference reasoning, and every slot's heatmap laid over the image with its confidence, kept / dropped state
and the SAE concepts that fed it (with each feature's label when the pipeline gives one). Open ``index.html`` in
a browser; ``segcompass app`` is the interactive version.

An answer is marked right when the IoU of the predicted union and the ground-truth union is at least
:data:`RIGHT_IOU` (a no-target sample: right when nothing is kept, since both are empty).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .metrics.per_sample import intersection_and_union
from .utils.io import write_text_atomic
from .utils.logging import get_logger
from .utils.masks import decode_rle
from .visualize import render_heatmap, render_overlay, save_image_atomic

logger = get_logger(__name__)

#: IoU (predicted union vs ground-truth union) from which an answer counts as right.
RIGHT_IOU = 0.5

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:auto;padding:0 12px;color:#222}"
    ".card{border-bottom:1px solid #ccc;padding:16px 0}.card h2{font-size:1.15em;margin:0 0 6px}"
    ".right{color:#1a7f37}.wrong{color:#c62828}.pair,.slots{display:flex;flex-wrap:wrap;gap:12px}"
    "figure{margin:0}.pair figure{width:320px}.slots figure{width:250px;font-size:.85em}"
    "img{display:block;width:100%;height:auto;image-rendering:pixelated}"  # width only: the aspect ratio stays
    "figcaption{margin-top:4px}table{border-collapse:collapse;font-size:.85em;margin-top:4px;width:100%}"
    "td,th{border:1px solid #ddd;padding:1px 5px;text-align:left}p{margin:6px 0}"
)


def _concept_table(concepts: list[dict]) -> str:
    if not concepts:
        return "<p><small>no active concepts</small></p>"
    rows = "".join(
        f"<tr><td>f{c['feature']}</td><td>{html.escape(str(c.get('label') or '-'))}</td><td>{c['weight']:.2f}</td>"
        f"<td>{c['activation']:.2f}</td></tr>" for c in concepts
    )
    return f"<table><tr><th>feature</th><th>label</th><th>weight</th><th>act.</th></tr>{rows}</table>"


def _iou(prediction: np.ndarray, truth: list[np.ndarray]) -> float:
    intersection, union = intersection_and_union(prediction, truth)
    return 1.0 if union == 0 else intersection / union  # both empty: a right no-target answer


def _card(i: int, sample: dict, result: dict, out: Path) -> tuple[str, bool]:
    """Write example ``i``'s images into ``out``; (its HTML card, whether the answer is right)."""
    image, instruction = sample["image"], sample["instruction"]
    instances = sorted(result["instances"], key=lambda x: x["slot"])
    kept = [inst for inst in instances if inst["kept"]]
    truth = [np.asarray(decode_rle(rle), dtype=bool) for rle in sample["masks"]]
    prediction = np.zeros((image.height, image.width), dtype=bool)
    for inst in kept:
        prediction |= np.asarray(inst["mask"], dtype=bool)
    iou = _iou(prediction, truth)
    right = iou >= RIGHT_IOU
    truth_instances = [{"mask": mask, "slot": k, "score": 1.0, "caption": f"target {k + 1}"}
                       for k, mask in enumerate(truth)]
    save_image_atomic(render_overlay(image, truth_instances, no_target_note="ground truth: no target"),
                      out / f"example{i}_truth.png")
    save_image_atomic(render_overlay(image, kept), out / f"example{i}.png")
    slots = []
    for inst in instances:
        state = "kept" if inst["kept"] else "dropped"
        if "heatmap" in inst:
            save_image_atomic(render_heatmap(image, inst["heatmap"]), out / f"example{i}_slot{inst['slot']}.png")
            picture = f"<img src='example{i}_slot{inst['slot']}.png' alt='slot {inst['slot']} heatmap'>"
        else:
            picture = ""
        slots.append(f"<figure>{picture}<figcaption><b>slot {inst['slot']}: {inst['score']:.2f} ({state})</b>"
                     f"{_concept_table(inst['concepts'])}</figcaption></figure>")
    mark = "<span class='right'>&#10003; right</span>" if right else "<span class='wrong'>&#10007; wrong</span>"
    return (
        f"<div class='card'><h2>{mark} &nbsp;{html.escape(instruction)}</h2>"
        f"<p>IoU of prediction and ground truth: <b>{iou:.2f}</b> (right from {RIGHT_IOU:.2f}); "
        f"{len(kept)} slot(s) kept, {len(truth)} target(s).</p>"
        f"<div class='pair'><figure><img src='example{i}_truth.png' alt='ground truth'><figcaption>ground truth"
        f"</figcaption></figure><figure><img src='example{i}.png' alt='prediction'><figcaption>prediction (kept "
        f"slots)</figcaption></figure></div>"
        f"<p><i>reasoning:</i> {html.escape(result['reasoning'] or '(none)')}</p>"
        f"<p><i>reference:</i> {html.escape(sample['reasoning'])}</p>"
        f"<p>Every slot's heatmap over the image, with the SAE concepts that fed it:</p>"
        f"<div class='slots'>{''.join(slots)}</div></div>"
    ), right


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
    cards, right = [], 0
    for i in tqdm(range(num_examples), desc="Demo", unit="example"):
        sample = generate_sample(sample_seed("test", i, seed), SyntheticConfig(image_size=size))
        result = pipe(sample["image"], sample["instruction"], max_new_tokens=max_new_tokens, return_all_slots=True)
        card, is_right = _card(i, sample, result, out)
        cards.append(card)
        right += is_right
    page = (
        f"<!doctype html><meta charset='utf-8'><title>SegCompass demo</title><style>{_STYLE}</style>"
        f"<h1>SegCompass demo</h1><p>model: {html.escape(str(model))}<br>{right} of {num_examples} answers right "
        f"(IoU &ge; {RIGHT_IOU:.2f} against the ground truth; a no-target answer is right when nothing is kept). "
        f"Interactive version: <code>segcompass app</code>.</p>{''.join(cards)}"
    )
    index = out / "index.html"
    write_text_atomic(index, page)
    logger.info("Demo written to %s", index)
    return index
