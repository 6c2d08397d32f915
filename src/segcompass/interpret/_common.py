"""Per-sample plumbing shared by the interpretability analyses: argument checks, the samples and their reference
completions, the processor call of one sample and the eval-mode / no-grad context.

Every analysis runs one teacher-forced forward per sample over ``prompt + reference completion + <REF_POS> + slots``
(``processor(image, instruction, completions=[completion], append_slots=True)``); the reference completion is
``<think>{sample["reasoning"]}</think><REF_POS>`` unless ``completions`` are given.

Dimension glossary: ``T`` tokens of one scored sequence, ``(H, W)`` original image size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..answer_format import reference_completion
from ..image_utils import load_image
from ..utils.masks import to_binary_mask, union_masks
from .tokens import check_qwen


def check_values(values, name: str, low: float, high: float, low_open: bool) -> list[float]:
    """``values`` as floats, each in ``[low, high]`` (``(low, high]`` when ``low_open``); raises on none or NaN."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError(f"`{name}` is empty; pass at least one value.")
    for v in values:
        if not (low < v if low_open else low <= v) or v > high or math.isnan(v):
            bound = "(" if low_open else "["
            raise ValueError(f"`{name}` values must lie in {bound}{low}, {high}], got {v}.")
    return values


def _sample_fields(sample: Mapping[str, Any], index: int):
    """``(image, instances, union)``: the PIL image, the list of ``(H, W)`` bool instance masks and their ``(H, W)``
    union (all False without instances)."""
    for key in ("image", "instruction"):
        if key not in sample:
            raise ValueError(f"Sample {index} has no {key!r}; pass rows of the SegCompass dataset schema.")
    image = load_image(sample["image"])
    height, width = image.height, image.width
    instances = [to_binary_mask(m) for m in (sample.get("masks") or [])]  # [(H, W)]
    for i, m in enumerate(instances):
        if m.shape != (height, width):
            raise ValueError(
                f"Sample {index}: mask {i} has shape {m.shape} but the image is {(height, width)}; masks must be at "
                "the original image size."
            )
    union = union_masks(instances, shape=(height, width)) if instances else np.zeros((height, width), dtype=bool)
    return image, instances, union


def _completion_for(sample: Mapping[str, Any], processor, index: int) -> str:
    return reference_completion((sample.get("reasoning") or "").strip(), processor.ref_token,
                                sample_id=f"{index} ({sample.get('sample_id', '?')})",
                                fix="Pass `completions=` (one '<think>...</think><REF_POS>' string per sample).")


def prepare(model, processor, samples, completions):
    """Check the model / processor are Qwen2.5-VL; return ``(samples, completions)`` as two lists of equal length
    (the reference completions when ``completions`` is None)."""
    check_qwen(processor)
    backbone_type = getattr(model.config.backbone_config, "model_type", "")
    if not str(backbone_type).startswith("qwen2_5_vl"):
        raise ValueError(
            f"The model's backbone is {backbone_type!r}; the analyses support Qwen2.5-VL only. Load a Qwen2.5-VL "
            "SegCompass checkpoint."
        )
    samples = list(samples)
    if not samples:
        raise ValueError("`samples` is empty; pass at least one dataset row.")
    if completions is None:
        completions = [_completion_for(s, processor, i) for i, s in enumerate(samples)]
    else:
        completions = list(completions)
        if len(completions) != len(samples):
            raise ValueError(f"Got {len(completions)} completions for {len(samples)} samples; pass one per sample.")
    return samples, completions


def _encode(processor, image, instruction: str, completion: str, device, dtype):
    batch = processor(image, instruction, completions=[completion], append_slots=True)
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            batch[key] = value.to(dtype) if value.is_floating_point() else value
    return batch


def encode_sample(model, processor, sample: Mapping[str, Any], completion: str, index: int):
    """The processor's batch of one sample (one row, on the model's device, floats in its dtype).

    Returns:
        ``(batch, inputs, instances, union)``: ``batch`` the processor output (``input_ids`` ``(1, T)``, ...),
        ``inputs`` its backbone inputs (``processor.backbone_processor.model_input_names``), ``instances`` the
        list of ``(H, W)`` bool ground-truth masks and ``union`` their ``(H, W)`` union.
    """
    image, instances, union = _sample_fields(sample, index)
    batch = _encode(processor, image, sample["instruction"], completion, model.device, model.dtype)
    names = processor.backbone_processor.model_input_names
    inputs = {k: batch[k] for k in names if k in batch and batch[k] is not None}
    return batch, inputs, instances, union


class EvalMode:
    """Run a block with the model in eval mode and without gradients; restores the previous mode."""

    def __init__(self, model):
        self.model, self.grad = model, torch.no_grad()

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        self.grad.__enter__()

    def __exit__(self, *exc):
        self.grad.__exit__(*exc)
        self.model.train(self.was_training)
