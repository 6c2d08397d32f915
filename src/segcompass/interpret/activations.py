"""SAE activation patterns per token type (paper §4.3, Figure 4): one teacher-forced backbone forward + SAE encoding
per sample, the number of active features per token at each threshold, pooled per token type.

Dimension glossary: ``T`` tokens of one scored sequence, ``D`` backbone hidden size, ``d_sae`` SAE features,
``P`` thresholds, ``(g_h, g_w)`` the merged image-token grid, ``n = g_h * g_w`` image tokens, ``(H, W)`` original
image size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..utils.logging import get_logger
from ._common import EvalMode, check_values, encode_sample, prepare
from .tokens import TOKEN_TYPES, image_token_grid, token_types

logger = get_logger(__name__)


def sample_activations(
    model, processor, sample, completion: str, index: int, thresholds: Sequence[float], total_threshold: float = 0.0
):
    """One teacher-forced backbone forward (``model.get_hook_states``) + SAE encoding of one sample.

    Returns a dict: ``types`` (T,) names, ``counts`` (T, P) active features per token at each threshold,
    ``total`` (T,) activation summed over the features with ``|h| >= total_threshold``, ``grid`` (g_h, g_w),
    ``instances`` list of (H, W) masks, ``image_positions`` (n,) token positions of the image tokens in grid order.
    """
    batch, inputs, instances, union = encode_sample(model, processor, sample, completion, index)
    hidden = model.get_hook_states(**inputs)[0]  # (T, D)
    types = token_types(batch["input_ids"][0], processor, sample["instruction"], completion,
                        image_grid_thw=batch["image_grid_thw"], masks=[union])  # (T,)
    sparse = model.sae.encode_sparse(hidden, threshold=0.0)  # CSR over T tokens
    num_tokens = hidden.shape[0]
    rows = torch.repeat_interleave(torch.arange(num_tokens, device=sparse.offsets.device), sparse.offsets.diff())
    magnitude = sparse.values.abs().float()  # (nnz,)
    counts = torch.stack(
        [torch.bincount(rows[magnitude >= t], minlength=num_tokens) for t in thresholds], dim=1
    )  # (T, P)
    kept = magnitude >= total_threshold
    total = torch.zeros(num_tokens, dtype=torch.float32, device=rows.device)  # (T,)
    total.index_add_(0, rows[kept], sparse.values.float()[kept])
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    merge = int(getattr(processor.image_processor, "merge_size", 2))
    return {
        "types": types,
        "counts": counts.cpu().numpy(),
        "total": total.cpu().numpy(),
        "grid": image_token_grid(batch["image_grid_thw"][0], merge),
        "instances": instances,
        "image_positions": (batch["input_ids"][0] == image_id).nonzero().flatten().cpu().numpy(),
    }


def activation_patterns(
    model,
    processor,
    samples: Iterable[Mapping[str, Any]],
    thresholds: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.5),
    *,
    completions: Sequence[str] | None = None,
) -> dict:
    """Figure 4: mean number of active SAE features per token, per token type, at each threshold τ.

    A feature is active at a token when its SAE code ``h`` on the hook-layer states (``model.get_hook_states``) is
    non-zero and ``|h| >= τ`` (``model.sae.encode_sparse``). Means are over all tokens of a type, pooled across
    samples.

    Args:
        model: a Qwen2.5-VL [`SegCompassForReasoningSegmentation`].
        processor: its [`SegCompassProcessor`].
        samples: dataset rows (``image``, ``instruction``, ``masks``, ``reasoning``).
        thresholds: the P values of τ (>= 0).
        completions: optional teacher-forced completions (default ``<think>{reasoning}</think><REF_POS>``).

    Returns:
        ``{"thresholds": [P], "token_types": [...], "mean_active_features": {type: [P] or None when no token has
        the type}, "token_counts": {type: int}, "num_samples": int, "hook_layer": int, "d_sae": int}``.
    """
    thresholds = check_values(thresholds, "thresholds", 0.0, math.inf, low_open=False)
    samples, completions = prepare(model, processor, samples, completions)
    sums = {t: np.zeros(len(thresholds), dtype=np.float64) for t in TOKEN_TYPES}
    tokens = dict.fromkeys(TOKEN_TYPES, 0)
    with EvalMode(model):
        for index, (sample, completion) in enumerate(zip(samples, completions)):
            acts = sample_activations(model, processor, sample, completion, index, thresholds)
            for name in TOKEN_TYPES:
                chosen = acts["types"] == name
                sums[name] += acts["counts"][chosen].sum(0)
                tokens[name] += int(chosen.sum())
    means = {name: (sums[name] / tokens[name]).tolist() if tokens[name] else None for name in TOKEN_TYPES}
    logger.info("activation_patterns over %d samples: token counts %s", len(samples), tokens)
    return {
        "thresholds": thresholds,
        "token_types": list(TOKEN_TYPES),
        "mean_active_features": means,
        "token_counts": tokens,
        "num_samples": len(samples),
        "hook_layer": int(model.config.sae_config.hook_layer),
        "d_sae": int(model.config.sae_config.d_sae),
    }
