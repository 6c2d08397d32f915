"""``report.json``: metrics of the saved predictions against the ground truth, laid out like the paper's tables
(Table 1: RefCOCO/+/g cIoU; Table 2: gRefCOCO gIoU, cIoU, N-acc, T-acc; Table 3: ReasonSeg gIoU, cIoU)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics import DEFAULT_PR_THRESHOLDS, SegmentationMetricAccumulator
from ..utils.io import write_text_atomic
from .predictions import prediction_mask

__all__ = ["PAPER_TABLES", "REPORT_FILE", "build_report", "json_safe", "normalize_metric_options", "score_predictions",
           "write_json"]

REPORT_FILE = "report.json"

# dataset (or row ``source``) -> (paper table, table name, the columns the paper prints)
PAPER_TABLES: dict[str, tuple[str | None, str, tuple[str, ...]]] = {
    "refcoco": ("Table 1", "RefCOCO", ("cIoU",)),
    "refcoco+": ("Table 1", "RefCOCO+", ("cIoU",)),
    "refcocog": ("Table 1", "RefCOCOg", ("cIoU",)),
    "grefcoco": ("Table 2", "gRefCOCO", ("gIoU", "cIoU", "N-acc", "T-acc")),
    "reasonseg": ("Table 3", "ReasonSeg", ("gIoU", "cIoU")),
}
_DEFAULT_COLUMNS = ("gIoU", "cIoU", "N-acc", "T-acc")
_METRIC_KEYS = {"gIoU": "giou", "cIoU": "ciou", "N-acc": "n_acc", "T-acc": "t_acc"}
_METRIC_OPTIONS = ("protocol", "empty_policy", "pr_thresholds", "eval_size")


def json_safe(value: Any) -> Any:
    """``nan``/``inf`` -> ``None``; numpy scalars and tuples -> plain JSON types (recursively)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n")


def normalize_metric_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Complete ``options`` with the accumulator defaults; refuse unknown keys."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(_METRIC_OPTIONS))
    if unknown:
        raise ValueError(f"unknown metric option(s) {unknown}; valid options are {list(_METRIC_OPTIONS)}.")
    eval_size = options.get("eval_size")
    if isinstance(eval_size, (list, tuple)):
        eval_size = [int(s) for s in eval_size]
    return {
        "protocol": options.get("protocol") or "lisa",
        "empty_policy": options.get("empty_policy") or "one",
        "pr_thresholds": [float(t) for t in (options.get("pr_thresholds") or DEFAULT_PR_THRESHOLDS)],
        "eval_size": eval_size,
    }


def _table_for(dataset_name: str, sources: Sequence[str]) -> tuple[str | None, str, tuple[str, ...]]:
    if dataset_name in PAPER_TABLES:
        return PAPER_TABLES[dataset_name]
    known = {s for s in sources if s in PAPER_TABLES}
    if len(known) == 1:  # e.g. a parquet mirror of one benchmark
        return PAPER_TABLES[known.pop()]
    return None, dataset_name, _DEFAULT_COLUMNS


def build_report(metrics: dict[str, Any], *, dataset: str, split: str, sources: Sequence[str] = (),
                 **fields: Any) -> dict[str, Any]:
    """``report.json`` content from accumulator ``metrics`` (fractions).

    Returns:
        ``{"dataset", "split", "num_samples", "num_no_target", "metrics": {ciou, giou, pr@t, n_acc, t_acc} (fractions),
        "table_row": {"table", "paper_table", "split", <paper columns>, <other columns>} (×100),
        "paper_columns": [...], **fields}`` where ``fields`` holds the run description (model, data_dir,
        metric_options, threshold, ...).
    """
    paper_table, table, columns = _table_for(dataset, sources)
    values = {name: metrics[key] for name, key in _METRIC_KEYS.items()}
    values.update({f"Pr@{k[3:]}": v for k, v in metrics.items() if k.startswith("pr@")})
    row: dict[str, Any] = {"table": table, "paper_table": paper_table, "split": split}
    for name in (*columns, *[c for c in values if c not in columns]):
        value = float(values[name])
        row[name] = value * 100.0 if math.isfinite(value) else None
    raw = {k: v for k, v in metrics.items() if k not in ("num_samples", "num_no_target")}
    return {
        "dataset": dataset,
        "split": split,
        "num_samples": int(metrics["num_samples"]),
        "num_no_target": int(metrics["num_no_target"]),
        **fields,
        "metrics": raw,
        "paper_columns": list(columns),
        "table_row": row,
    }


def score_predictions(dataset, records: dict[str, dict[str, Any]], metric_options: dict[str, Any],
           threshold: float | None) -> tuple[dict[str, Any], list[str], int]:
    """Score every dataset row against its record. Returns ``(metrics, sources, num_malformed)``."""
    accumulator = SegmentationMetricAccumulator(**metric_options)
    wanted = ("sample_id", "masks", "ignore_mask", "height", "width", "source")
    columns = [c for c in wanted if c in dataset.column_names]
    gt = dataset.select_columns(columns)
    missing = [sid for sid in gt["sample_id"] if sid not in records]
    if missing:
        raise ValueError(f"{len(missing)} of {len(gt)} samples have no prediction (first: {missing[:3]}); run "
                         "evaluate_model on the same output_dir to complete them (it resumes).")
    num_malformed = 0
    for row in gt:
        record = records[row["sample_id"]]
        prediction = prediction_mask(record, threshold)
        if "height" in row and prediction.shape != (row["height"], row["width"]):
            raise ValueError(f"prediction {row['sample_id']!r} has shape {prediction.shape} but the image is "
                             f"{(row['height'], row['width'])}; predictions must be at the original image size.")
        accumulator.add(prediction, list(row["masks"]), row.get("ignore_mask"))
        num_malformed += bool(record.get("malformed", False))
    sources = sorted(set(gt["source"])) if "source" in columns else []
    return accumulator.compute(), sources, num_malformed
