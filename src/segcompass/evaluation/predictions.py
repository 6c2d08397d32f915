"""``predictions.jsonl``: one JSON record per evaluated row, appended after every batch, read back for resuming and
re-scoring. The predicted mask of a record is the prediction rule (:func:`segcompass.prediction.keep_and_union`) at
the run's threshold; ``slot_masks`` keep every slot so a record can be re-thresholded."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..prediction import keep_and_union
from ..utils.logging import get_logger
from ..utils.masks import decode_rle, encode_rle

logger = get_logger(__name__)

__all__ = ["PREDICTIONS_FILE", "load_predictions", "prediction_mask", "prediction_record"]

PREDICTIONS_FILE = "predictions.jsonl"


def prediction_record(row: dict[str, Any], *, completion: str, reasoning: str, malformed: bool,
                      scores: Sequence[float], slot_masks: np.ndarray, threshold: float,
                      duplicate_iou: float | None = None, max_instances: int | None = None) -> dict[str, Any]:
    """One line of ``predictions.jsonl``.

    Args:
        row: the dataset row (``sample_id``, ``image_id``, ``instruction`` are copied).
        scores: per-slot confidences ``σ(c_k)``, shape ``(K,)``.
        slot_masks: per-slot masks at the original image size, bool ``(K, H, W)``.
        threshold: slots with ``score >= threshold`` are kept; ``mask`` is their union (all False when none is).
        duplicate_iou: the model's ``config.duplicate_iou`` (kept copies of a more confident slot are dropped;
            stored, so re-thresholding applies the same rule).
        max_instances: the most slots kept, the most confident first (the model's ``outputs.instance_limits`` of the
            sample under ``config.limit_instances_to_answer``; None: no limit; stored, like ``duplicate_iou``).
    """
    slot_masks = np.asarray(slot_masks, dtype=bool)
    if slot_masks.ndim != 3 or slot_masks.shape[0] != len(scores):
        raise ValueError(f"slot_masks must be (K, H, W) with K={len(scores)} scores, got shape {slot_masks.shape}.")
    height, width = int(slot_masks.shape[1]), int(slot_masks.shape[2])
    union, kept = keep_and_union(slot_masks, scores, threshold, duplicate_iou=duplicate_iou,
                                 max_instances=max_instances)  # (H, W), kept indices
    return {
        "sample_id": row["sample_id"],
        "image_id": row.get("image_id", ""),
        "instruction": row["instruction"],
        "reasoning": reasoning,
        "completion": completion,
        "malformed": bool(malformed),
        "scores": [float(s) for s in scores],
        "kept_slots": kept,
        "threshold": float(threshold),
        "duplicate_iou": None if duplicate_iou is None else float(duplicate_iou),
        "max_instances": None if max_instances is None else int(max_instances),
        "height": height,
        "width": width,
        "mask": encode_rle(union),
        "slot_masks": [encode_rle(m) for m in slot_masks],
    }


def load_predictions(output_dir: str | os.PathLike, *, repair: bool = False) -> dict[str, dict[str, Any]]:
    """The records of ``output_dir/predictions.jsonl`` keyed by ``sample_id`` (later lines win).

    A last line cut short by an interrupted write is dropped (and, with ``repair=True``, removed from the file so
    appends start on a clean line); a malformed line elsewhere raises ``ValueError``.
    """
    path = Path(output_dir) / PREDICTIONS_FILE
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    records: dict[str, dict[str, Any]] = {}
    good_bytes = 0  # the file is truncated by bytes: count each line's UTF-8 bytes, not its characters
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            good_bytes += len(line.encode("utf-8")) + 1
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "sample_id" not in record or "mask" not in record:
                raise ValueError("not a prediction record")
        except ValueError as err:
            if number == len(lines):  # the unfinished last line of an interrupted run
                logger.warning("%s: dropping an incomplete last line (interrupted write).", path)
                if repair:
                    with open(path, "rb+") as handle:
                        handle.truncate(good_bytes)
                break
            raise ValueError(
                f"{path}, line {number}: {err}; delete the line (or the file, to predict again)."
            ) from err
        records[record["sample_id"]] = record
        good_bytes += len(line.encode("utf-8")) + 1
    return records


def prediction_mask(record: dict[str, Any], threshold: float | None) -> np.ndarray:
    """The predicted union ``(H, W)`` of a record: stored, or rebuilt from ``slot_masks`` at ``threshold``."""
    if threshold is None or float(threshold) == float(record.get("threshold", math.nan)):
        return decode_rle(record["mask"])
    if "slot_masks" not in record:
        raise ValueError(f"prediction {record['sample_id']!r} has no slot_masks, so it cannot be re-thresholded; "
                         "rescore without threshold or predict again.")
    shape = (int(record["height"]), int(record["width"]))
    slot_masks = np.stack([decode_rle(m) for m in record["slot_masks"]]) if record["slot_masks"] else \
        np.zeros((0, *shape), dtype=bool)  # (K, H, W)
    union, _ = keep_and_union(slot_masks, record["scores"], threshold, shape=shape,
                              duplicate_iou=record.get("duplicate_iou"), max_instances=record.get("max_instances"))
    return union  # (H, W)
