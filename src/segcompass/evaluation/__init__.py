"""Benchmark evaluation: batched greedy inference over a dataset split, resumable predictions, paper-style reports.

    >>> from segcompass.evaluation import evaluate_model, rescore
    >>> report = evaluate_model("ckpt/", "grefcoco", "val", "/data/gres", output_dir="runs/gres-val")  # doctest: +SKIP
    >>> report["table_row"]  # {"table": "gRefCOCO", "split": "val", "gIoU": 76.1, ...}  # doctest: +SKIP
    >>> rescore("runs/gres-val", protocol="rela")  # saved predictions, other options, no model  # doctest: +SKIP

Protocol (the standard ReLA / LISA one, not the official code's oracle matching; see
``official-implementation.md`` §6):

* one evaluated unit = one (image, instruction) row of the dataset; every row is scored, no-target rows included,
  nothing is dropped at the end of the split;
* generation is greedy (``do_sample=False``);
* the prediction is the union of the slots whose confidence ``σ(c_k) >= threshold`` (default
  ``model.config.confidence_threshold``); it is never matched to the ground truth;
* the ground truth is the union of the row's instance masks (empty for a no-target row); ``ignore_mask`` pixels are
  removed from intersection and union;
* metrics come from :class:`~segcompass.metrics.SegmentationMetricAccumulator` with its defaults unless
  ``metric_options`` says otherwise (``protocol="lisa"``, ``empty_policy="one"``: a no-target row scores IoU 1 when
  the prediction is empty and 0 otherwise; the "no target" decision is read from the predicted mask's emptiness).

Files written into ``output_dir``:

* ``run.json``: what was evaluated (model, dataset, split, data_dir, loader options, threshold, generation length);
  a resumed run must match it.
* ``predictions.jsonl``: one JSON object per row, appended after every batch (see :func:`prediction_record`):
  ``sample_id``, ``image_id``, ``instruction``, ``reasoning``, ``completion``, ``malformed``, ``scores`` (per-slot
  confidences, ``(K,)``), ``kept_slots``, ``threshold``, ``height``, ``width``, ``mask`` (the predicted union as a
  COCO RLE) and ``slot_masks`` (every slot's mask as a COCO RLE, so :func:`rescore` can re-threshold).
* ``report.json``: see :func:`build_report`. Raw metric values are fractions in ``[0, 1]`` under ``"metrics"``;
  ``"table_row"`` holds the same numbers ×100 laid out like the paper's tables (Table 1: RefCOCO/+/g cIoU;
  Table 2: gRefCOCO gIoU, cIoU (+ N-acc, T-acc); Table 3: ReasonSeg gIoU, cIoU). Undefined values (``nan``, e.g.
  N-acc on a split without no-target rows) are written as ``null``.

The synthetic generator is registered as the dataset ``"synthetic"`` (split ``"val"`` is read as ``"validation"``) by
:func:`register_synthetic_dataset`, which every entry point here calls first; a loader already registered under that
name is kept. (Registration is deferred to first use, not done at import, so importing this module leaves the
dataset registry as :mod:`segcompass.data` defines it.)
"""

from __future__ import annotations

from ..data import available_datasets
from .datasets import register_synthetic_dataset
from .predictions import PREDICTIONS_FILE, load_predictions, prediction_record
from .report import PAPER_TABLES, REPORT_FILE, build_report
from .runner import RUN_FILE, evaluate_model, rescore

__all__ = [
    "PAPER_TABLES",
    "PREDICTIONS_FILE",
    "REPORT_FILE",
    "RUN_FILE",
    "available_datasets",
    "build_report",
    "evaluate_model",
    "load_predictions",
    "prediction_record",
    "register_synthetic_dataset",
    "rescore",
]
