"""All interpretability analyses of the paper on one model and dataset, with their figures (``segcompass explain``).

:func:`explain` walks the samples once (one progress bar). For each sample, with its teacher-forced reference
completion ``<think>{reasoning}</think><REF_POS>``, it runs

- :func:`~segcompass.interpret.activation_patterns` (Fig. 4) and :func:`~segcompass.interpret.instance_coverage`
  (Fig. 5) on that sample, pooled afterwards exactly as over all samples at once (the random baseline of sample i is
  seeded with ``(seed, i)``);
- :func:`~segcompass.interpret.agreement.sample_agreement` (Fig. 8 right) and
  :func:`~segcompass.interpret.reconstruction.sample_reconstruction` (Fig. 8 left) on one shared forward;
- for the first ``num_panels`` samples, :func:`~segcompass.interpret.panels.sample_panel` (Fig. 9).

It writes into ``output_dir``: ``explain.json`` (every number, :data:`FILES`), ``fig4_activation_patterns.png``,
``fig5_instance_coverage.png``, ``fig8_agreement.png`` and ``panels/sample_<id>.png``.

Dimension glossary: ``B`` samples, ``P`` thresholds or fractions, ``K`` slots.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..utils.io import write_json_atomic
from ..utils.logging import get_logger
from ._common import EvalMode, check_values, prepare
from .activations import activation_patterns
from .agreement import pearson_and_fit, sample_agreement, summarize_agreement
from .coverage import instance_coverage
from .figures import (
    plot_activation_patterns,
    plot_agreement,
    plot_instance_coverage,
    plot_sample_panel,
    require_matplotlib,
)
from .jsonable import to_jsonable
from .panels import ARRAY_FIELDS, sample_panel
from .reconstruction import sample_reconstruction, summarize_reconstruction
from .tokens import TOKEN_TYPES

logger = get_logger(__name__)

__all__ = ["FILES", "explain"]

FILES = {"json": "explain.json", "fig4": "fig4_activation_patterns.png", "fig5": "fig5_instance_coverage.png",
         "fig8": "fig8_agreement.png", "panels": "panels"}
"""What :func:`explain` writes into its output directory (``panels`` is a folder of ``sample_<id>.png``)."""


def _positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    return value


def _first_rows(dataset: Iterable[Mapping[str, Any]], count: int) -> list:
    if hasattr(dataset, "select") and hasattr(dataset, "__len__"):  # a datasets.Dataset: decode only those rows
        return list(dataset.select(range(min(count, len(dataset)))))
    return list(itertools.islice(dataset, count))


def _panel_file(sample_id: str) -> str:
    return f"sample_{re.sub(r'[^A-Za-z0-9._-]', '_', sample_id)}.png"


def _pool_activations(parts: Sequence[Mapping[str, Any]]) -> dict:
    """One :func:`activation_patterns` result from its results on disjoint samples (token-weighted means)."""
    first = parts[0]
    sums = {t: np.zeros(len(first["thresholds"])) for t in TOKEN_TYPES}
    tokens = dict.fromkeys(TOKEN_TYPES, 0)
    for part in parts:
        for name in TOKEN_TYPES:
            if part["mean_active_features"][name] is not None:
                sums[name] += np.asarray(part["mean_active_features"][name]) * part["token_counts"][name]
                tokens[name] += part["token_counts"][name]
    means = {name: (sums[name] / tokens[name]).tolist() if tokens[name] else None for name in TOKEN_TYPES}
    return {**first, "mean_active_features": means, "token_counts": tokens,
            "num_samples": sum(p["num_samples"] for p in parts)}


def _pool_coverage(parts: Sequence[Mapping[str, Any]]) -> dict:
    """One :func:`instance_coverage` result from its results on one sample each (sample i = ``parts[i]``)."""
    top = [row for p in parts for row in p["per_instance_top_k"]]
    rand = [row for p in parts for row in p["per_instance_random"]]
    owners = [i for i, p in enumerate(parts) for _ in p["per_instance_top_k"]]
    return {
        "fractions": parts[0]["fractions"],
        "top_k_coverage": np.mean(top, axis=0).tolist() if top else None,
        "random_coverage": np.mean(rand, axis=0).tolist() if rand else None,
        "per_instance_top_k": top,
        "per_instance_random": rand,
        "instance_sample_index": owners,
        "num_instances": len(top),
        "num_samples": len(parts),
        "num_skipped_samples": sum(p["num_skipped_samples"] for p in parts),
    }


def explain(
    model,
    processor,
    dataset: Iterable[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    *,
    num_samples: int = 32,
    num_panels: int = 8,
    thresholds: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.5),
    fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5),
    seed: int = 0,
    confidence_threshold: float | None = None,
    heatmap_threshold: float = 0.5,
    top_concepts: int = 5,
    metadata: Mapping[str, Any] | None = None,
) -> dict:
    """Run the paper's interpretability analyses on the first ``num_samples`` rows of ``dataset`` and draw them.

    Args:
        model: a Qwen2.5-VL [`SegCompassForReasoningSegmentation`].
        processor: its [`SegCompassProcessor`].
        dataset: rows of the SegCompass dataset schema (``image``, ``instruction``, ``masks``, ``reasoning``,
            ``sample_id``), e.g. a ``datasets.Dataset`` from
            :func:`~segcompass.evaluation.datasets.load_evaluation_dataset`.
        output_dir: receives ``explain.json``, the three figures and ``panels/`` (:data:`FILES`).
        num_samples: analyse the first N rows.
        num_panels: draw Fig. 9-style panels of the first ``min(num_panels, N)`` samples (0: none).
        thresholds: τ values of Fig. 4 (>= 0).
        fractions: K values of Fig. 5, in (0, 1].
        seed: seed of Fig. 5's random baseline.
        confidence_threshold: keep threshold of the slots (default ``model.config.confidence_threshold``).
        heatmap_threshold: σ(H_k) threshold of the heatmap prediction (Fig. 8 right).
        top_concepts: concepts listed per kept slot in the panels.
        metadata: extra JSON-ready fields stored under ``"metadata"`` (e.g. the dataset and split).

    Returns:
        The dict written to ``explain.json``: ``{"model", "num_samples", "sample_ids": [B], "completions":
        "reference (teacher-forced)", "confidence_threshold", "heatmap_threshold", "activation_patterns"`` (Fig. 4,
        layout of :func:`activation_patterns`), ``"instance_coverage"`` (Fig. 5, :func:`instance_coverage`),
        ``"heatmap_mask_agreement"`` (Fig. 8 right, :func:`heatmap_mask_agreement` + ``"has_target": [B]``,
        ``"heatmap_threshold"`` and ``"targets_only": {"pearson_r", "ols_slope", "ols_intercept", "num_points"}``:
        the fit without the no-target samples),
        ``"reconstruction_mask_loss"`` (Fig. 8 left, :func:`reconstruction_mask_loss`), ``"panels"`` (per panel:
        ``sample_id``, ``file``, ``instruction``, ``reasoning``, ``token_grid``, ``token_activation``,
        ``confidences``, ``kept``, ``threshold``, ``heatmap_iou``, ``mask_iou``, ``concepts``), ``"figures"``
        (file names relative to ``output_dir``), ``"metadata"}``.
    """
    require_matplotlib()  # before the expensive part
    _positive_int(num_samples, "num_samples")
    _positive_int(num_panels, "num_panels", minimum=0)
    _positive_int(top_concepts, "top_concepts")
    threshold = float(model.config.confidence_threshold if confidence_threshold is None else confidence_threshold)
    check_values([threshold, heatmap_threshold], "confidence_threshold / heatmap_threshold", 0.0, 1.0,
                 low_open=False)
    check_values(thresholds, "thresholds", 0.0, float("inf"), low_open=False)
    check_values(fractions, "fractions", 0.0, 1.0, low_open=True)
    samples, completions = prepare(model, processor, _first_rows(dataset, num_samples), None)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    patterns, coverage, agreement, reconstruction, panels = [], [], [], [], []
    with EvalMode(model):
        for index, (sample, completion) in enumerate(tqdm(list(zip(samples, completions)), desc="explain",
                                                          unit="sample")):
            patterns.append(activation_patterns(model, processor, [sample], thresholds, completions=[completion]))
            coverage.append(instance_coverage(model, processor, [sample], fractions, seed=[seed, index],
                                              completions=[completion]))
            row = sample_agreement(model, processor, sample, completion, index, confidence_threshold=threshold,
                                   heatmap_threshold=heatmap_threshold)
            reconstruction.append(sample_reconstruction(model, sample, row["batch"], row["inputs"], row["out"],
                                                        row["union"]))
            if index < num_panels:
                panel = sample_panel(model, processor, sample, completion, index, row, threshold=threshold,
                                     top_concepts=top_concepts)
                panel["file"] = f"{FILES['panels']}/{_panel_file(panel['sample_id'])}"
                plot_sample_panel(panel, out / panel["file"])
                panels.append({k: v for k, v in panel.items() if k not in ARRAY_FIELDS})
            agreement.append({k: row[k] for k in ("heatmap_iou", "mask_iou", "heatmap_iu", "mask_iu", "kept")}
                             | {"has_target": bool(row["union"].any())})

    ids = [str(s.get("sample_id", i)) for i, s in enumerate(samples)]
    agree = summarize_agreement(agreement, ids)
    agree["has_target"] = [row["has_target"] for row in agreement]
    agree["heatmap_threshold"] = float(heatmap_threshold)
    targets = [i for i, t in enumerate(agree["has_target"]) if t]
    agree["targets_only"] = {**pearson_and_fit([agree["heatmap_iou"][i] for i in targets],
                                               [agree["mask_iou"][i] for i in targets]), "num_points": len(targets)}
    result = {
        "model": str(getattr(model, "name_or_path", "") or type(model).__name__),
        "num_samples": len(samples),
        "sample_ids": ids,
        "completions": "reference (teacher-forced)",
        "confidence_threshold": threshold,
        "heatmap_threshold": float(heatmap_threshold),
        "activation_patterns": _pool_activations(patterns),
        "instance_coverage": _pool_coverage(coverage),
        "heatmap_mask_agreement": agree,
        "reconstruction_mask_loss": summarize_reconstruction(reconstruction, ids),
        "panels": panels,
        "figures": {key: FILES[key] for key in ("fig4", "fig5", "fig8")} | {"panels": [p["file"] for p in panels]},
        "metadata": dict(metadata or {}),
    }
    result = to_jsonable(result)
    plot_activation_patterns(result["activation_patterns"], out / FILES["fig4"])
    plot_instance_coverage(result["instance_coverage"], out / FILES["fig5"])
    plot_agreement(result["reconstruction_mask_loss"], result["heatmap_mask_agreement"], out / FILES["fig8"])
    write_json_atomic(out / FILES["json"], result)
    logger.info("explain: %d samples, %d panels written to %s", len(samples), len(panels), out)
    return result
