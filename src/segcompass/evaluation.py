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

import argparse
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .data import available_datasets, load_segmentation_dataset, register_dataset
from .data.synthetic import load_synthetic
from .metrics import DEFAULT_PR_THRESHOLDS, EMPTY_POLICIES, PROTOCOLS, SegmentationMetricAccumulator
from .utils.io import write_text_atomic
from .utils.logging import get_logger
from .utils.masks import decode_rle, encode_rle, union_masks

logger = get_logger(__name__)

__all__ = [
    "PAPER_TABLES",
    "PREDICTIONS_FILE",
    "REPORT_FILE",
    "RUN_FILE",
    "build_report",
    "evaluate_command",
    "evaluate_model",
    "load_predictions",
    "prediction_record",
    "register_synthetic_dataset",
    "rescore",
]

PREDICTIONS_FILE = "predictions.jsonl"
REPORT_FILE = "report.json"
RUN_FILE = "run.json"

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
# run.json fields a resumed run must share (num_samples may grow: rows are always the first num_samples of the split)
_RUN_IDENTITY = ("model", "dataset", "split", "data_dir", "loader_kwargs", "threshold", "max_new_tokens", "ablation")


# ------------------------------------------------------------------------------------------------ dataset "synthetic"
def _load_synthetic_split(data_dir, split: str, **kwargs: Any):
    """``load_synthetic`` with the benchmark split name ``"val"`` accepted for ``"validation"``."""
    return load_synthetic(data_dir, {"val": "validation"}.get(split, split), **kwargs)


def register_synthetic_dataset() -> None:
    """Register :func:`~segcompass.data.synthetic.load_synthetic` as the dataset ``"synthetic"`` (idempotent).

    A loader already registered under ``"synthetic"`` (by the user or another module) is kept, not overwritten.
    """
    if "synthetic" in available_datasets():
        return
    register_dataset("synthetic", _load_synthetic_split)


# ------------------------------------------------------------------------------------------------ helpers
def _json_safe(value: Any) -> Any:
    """``nan``/``inf`` -> ``None``; numpy scalars and tuples -> plain JSON types (recursively)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
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


def _write_json(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(_json_safe(payload), indent=2, allow_nan=False) + "\n")


def _normalize_metric_options(options: dict[str, Any] | None) -> dict[str, Any]:
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


def _check_threshold(threshold: float | None) -> None:
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold={threshold!r} is a slot confidence in [0, 1]; pass e.g. 0.5 (or None for "
                         "model.config.confidence_threshold).")


def _resolve_model_path(path: str | os.PathLike) -> str:
    """Refuse a model path that does not exist before anything heavy is loaded."""
    text = str(path)
    local = Path(text).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ValueError(f"model {text!r} has no config.json; pass a directory written by "
                             "model.save_pretrained(...) (with its processor saved next to it).")
        return str(local.resolve())
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep in text.replace("/", "")
    if looks_local or not text:
        raise ValueError(f"model path {text!r} does not exist; pass a checkpoint directory written by "
                         "save_pretrained (see segcompass.testing.make_tiny_checkpoint for a tiny one).")
    return text  # a Hub repository id


def _sam_image_size(model_or_path) -> int:
    """The SAM input side of a model object or checkpoint (read from its config; no weights are loaded)."""
    if isinstance(model_or_path, (str, os.PathLike)):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(_resolve_model_path(model_or_path))
    else:
        config = model_or_path.config
    return int(config.sam_config.vision_config.image_size)


def _load_model_and_processor(model_or_path, processor, device, dtype):
    import torch
    from transformers import AutoModel, AutoProcessor

    if isinstance(model_or_path, (str, os.PathLike)):
        path = _resolve_model_path(model_or_path)
        kwargs = {} if dtype is None else {"dtype": dtype}
        try:
            model = AutoModel.from_pretrained(path, **kwargs)
        except OSError as err:
            raise ValueError(f"cannot load a model from {path!r}: {err}. Pass a local checkpoint directory or a "
                             "reachable Hub id.") from err
        name = path
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = model.to(device)
    else:
        model = model_or_path
        name = getattr(model, "name_or_path", "") or type(model).__name__
        if device is not None:
            model = model.to(device)
    if processor is None:
        source = name if isinstance(model_or_path, (str, os.PathLike)) else getattr(model, "name_or_path", "")
        if not source:
            raise ValueError("evaluate_model got a model object without a processor; pass processor=... (or the "
                             "checkpoint directory instead of the model).")
        processor = AutoProcessor.from_pretrained(source)
    elif isinstance(processor, (str, os.PathLike)):
        processor = AutoProcessor.from_pretrained(str(processor))
    return model.eval(), processor, str(name)


# ------------------------------------------------------------------------------------------------ predictions
def prediction_record(row: dict[str, Any], *, completion: str, reasoning: str, malformed: bool,
                      scores: Sequence[float], slot_masks: np.ndarray, threshold: float) -> dict[str, Any]:
    """One line of ``predictions.jsonl``.

    Args:
        row: the dataset row (``sample_id``, ``image_id``, ``instruction`` are copied).
        scores: per-slot confidences ``σ(c_k)``, shape ``(K,)``.
        slot_masks: per-slot masks at the original image size, bool ``(K, H, W)``.
        threshold: slots with ``score >= threshold`` are kept; ``mask`` is their union (all False when none is).
    """
    slot_masks = np.asarray(slot_masks, dtype=bool)
    if slot_masks.ndim != 3 or slot_masks.shape[0] != len(scores):
        raise ValueError(f"slot_masks must be (K, H, W) with K={len(scores)} scores, got shape {slot_masks.shape}.")
    kept = [k for k, s in enumerate(scores) if float(s) >= threshold]
    height, width = int(slot_masks.shape[1]), int(slot_masks.shape[2])
    union = union_masks([slot_masks[k] for k in kept], shape=(height, width))
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
    text = path.read_text()
    lines = text.split("\n")
    records: dict[str, dict[str, Any]] = {}
    good_chars = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            good_chars += len(line) + 1
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "sample_id" not in record or "mask" not in record:
                raise ValueError("not a prediction record")
        except ValueError as err:
            if number == len(lines):  # the unfinished last line of an interrupted run
                logger.warning("%s: dropping an incomplete last line (interrupted write).", path)
                if repair:
                    with open(path, "r+") as handle:
                        handle.truncate(good_chars)
                break
            raise ValueError(
                f"{path}, line {number}: {err}; delete the line (or the file, to predict again)."
            ) from err
        records[record["sample_id"]] = record
        good_chars += len(line) + 1
    return records


def _prediction_mask(record: dict[str, Any], threshold: float | None) -> np.ndarray:
    """The predicted union ``(H, W)`` of a record: stored, or rebuilt from ``slot_masks`` at ``threshold``."""
    if threshold is None or float(threshold) == float(record.get("threshold", math.nan)):
        return decode_rle(record["mask"])
    if "slot_masks" not in record:
        raise ValueError(f"prediction {record['sample_id']!r} has no slot_masks, so it cannot be re-thresholded; "
                         "rescore without threshold or predict again.")
    kept = [decode_rle(m) for m, s in zip(record["slot_masks"], record["scores"]) if float(s) >= threshold]
    return union_masks(kept, shape=(int(record["height"]), int(record["width"])))


# ------------------------------------------------------------------------------------------------ report
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


def _score(dataset, records: dict[str, dict[str, Any]], metric_options: dict[str, Any],
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
        prediction = _prediction_mask(record, threshold)
        if "height" in row and prediction.shape != (row["height"], row["width"]):
            raise ValueError(f"prediction {row['sample_id']!r} has shape {prediction.shape} but the image is "
                             f"{(row['height'], row['width'])}; predictions must be at the original image size.")
        accumulator.add(prediction, list(row["masks"]), row.get("ignore_mask"))
        num_malformed += bool(record.get("malformed", False))
    sources = sorted(set(gt["source"])) if "source" in columns else []
    return accumulator.compute(), sources, num_malformed


def _load_dataset(dataset_name: str, data_dir, split: str, num_samples: int | None, loader_kwargs: dict):
    register_synthetic_dataset()
    if dataset_name not in available_datasets():
        raise ValueError(f"unknown dataset {dataset_name!r}; choose one of {available_datasets()} "
                         "(or add one with segcompass.data.register_dataset).")
    if num_samples is not None and num_samples <= 0:
        raise ValueError(f"num_samples={num_samples} must be a positive number of rows (or None for the whole split).")
    kwargs = dict(loader_kwargs)
    if dataset_name == "synthetic" and num_samples is not None:
        kwargs.setdefault("num_samples", num_samples)  # generate only what is evaluated
    dataset = load_segmentation_dataset(dataset_name, data_dir, split, **kwargs)
    if len(dataset) == 0:
        raise ValueError(f"{dataset_name}/{split} in {data_dir} has no rows; check the split name and data_dir.")
    if num_samples is not None and num_samples < len(dataset):
        dataset = dataset.select(range(num_samples))
    counts = Counter(dataset["sample_id"])
    if len(counts) != len(dataset):
        duplicate = next(i for i, n in counts.items() if n > 1)
        raise ValueError(f"sample_id {duplicate!r} occurs more than once in {dataset_name}/{split}; predictions are "
                         "keyed by sample_id, so give each row a unique one.")
    return dataset


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate_model(
    model_or_path,
    dataset_name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    output_dir: str | os.PathLike,
    batch_size: int = 4,
    max_new_tokens: int = 256,
    threshold: float | None = None,
    num_samples: int | None = None,
    resume: bool = True,
    metric_options: dict[str, Any] | None = None,
    processor=None,
    device: str | None = None,
    dtype: str | None = None,
    ablation: str | None = None,
    **loader_kwargs: Any,
) -> dict[str, Any]:
    """Predict every row of ``dataset_name``/``split`` with greedy decoding, save the predictions, score them.

    Args:
        model_or_path: a checkpoint directory (or Hub id), or a loaded ``SegCompassForReasoningSegmentation``.
        dataset_name, split, data_dir, loader_kwargs: passed to
            :func:`~segcompass.data.load_segmentation_dataset` (``data_dir`` may be ``None`` for ``"synthetic"``).
        output_dir: receives ``run.json``, ``predictions.jsonl`` (appended after every batch) and ``report.json``.
        batch_size: rows per ``model.segment`` call.
        max_new_tokens: reasoning length limit.
        threshold: slot confidence to keep a slot; default ``model.config.confidence_threshold``.
        num_samples: evaluate only the first ``num_samples`` rows.
        resume: skip rows whose ``sample_id`` is already in ``predictions.jsonl`` (the run description in
            ``run.json`` must match); ``False`` starts the file afresh.
        metric_options: ``protocol``, ``empty_policy``, ``pr_thresholds``, ``eval_size`` for
            :class:`~segcompass.metrics.SegmentationMetricAccumulator` (its defaults otherwise).
        processor: the processor when ``model_or_path`` is a model object without a loadable ``name_or_path``.
        device, dtype: where / in which dtype to load a model given by path (default: CUDA when available, the
            checkpoint's dtype).
        ablation: ``"no_concepts"`` (concept representations zeroed) or ``"random_sae"`` (SAE replaced by a fresh
            random one) to measure what the interpretable path contributes (:mod:`segcompass.interpret.ablations`);
            ``None`` / ``"none"`` evaluates the model as it is.

    Returns:
        The report (also written to ``output_dir/report.json``; layout in :func:`build_report`).
    """
    import torch
    from datasets.utils import tqdm

    from .interpret.ablations import ablate, check_ablation

    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be a positive number of rows per model call.")
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be positive (the reasoning length limit).")
    _check_threshold(threshold)
    ablation = check_ablation(ablation)  # before the expensive part
    register_synthetic_dataset()
    options = _normalize_metric_options(metric_options)
    SegmentationMetricAccumulator(**options)  # validate before the expensive part
    if dataset_name not in available_datasets():  # fail before loading a model
        raise ValueError(f"unknown dataset {dataset_name!r}; choose one of {available_datasets()} "
                         "(or add one with segcompass.data.register_dataset).")
    if isinstance(model_or_path, (str, os.PathLike)):
        _resolve_model_path(model_or_path)
    if dataset_name == "synthetic" and not {"image_size", "config"} & set(loader_kwargs):
        # scenes drawn at the model's SAM input size: what a synthetic-domain model was trained and reported on
        loader_kwargs = {**loader_kwargs, "image_size": _sam_image_size(model_or_path)}
    dataset = _load_dataset(dataset_name, data_dir, split, num_samples, loader_kwargs)
    model, processor, model_name = _load_model_and_processor(model_or_path, processor, device, dtype)
    threshold = float(model.config.confidence_threshold if threshold is None else threshold)

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = {
        "model": model_name,
        "dataset": dataset_name,
        "split": split,
        "data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
        "loader_kwargs": _json_safe(loader_kwargs),
        "num_samples": num_samples,
        "threshold": threshold,
        "max_new_tokens": int(max_new_tokens),
        "batch_size": int(batch_size),
        "ablation": ablation,
    }
    predictions_path = out / PREDICTIONS_FILE
    done: dict[str, dict[str, Any]] = {}
    if resume and predictions_path.is_file():
        previous_run = json.loads((out / RUN_FILE).read_text()) if (out / RUN_FILE).is_file() else {}
        changed = [k for k in _RUN_IDENTITY if k in previous_run and previous_run[k] != _json_safe(run[k])]
        if changed:
            differences = ", ".join(f"{k}: {previous_run[k]!r} -> {run[k]!r}" for k in changed)
            raise ValueError(
                f"{out} holds predictions of another run ({differences}); "
                "pass another output_dir, or resume=False to predict again from scratch."
            )
        done = load_predictions(out, repair=True)
    elif predictions_path.is_file():
        logger.warning("resume=False: discarding the %s in %s.", PREDICTIONS_FILE, out)
        predictions_path.unlink()
    _write_json(out / RUN_FILE, run)

    ids = dataset["sample_id"]
    todo = [i for i, sid in enumerate(ids) if sid not in done]
    logger.info("evaluating %s on %s/%s: %d samples, %d already predicted", model_name, dataset_name, split,
                len(ids), len(ids) - len(todo))
    tokenizer = processor.tokenizer
    device_ = next(model.parameters()).device
    pending = dataset.select(todo) if todo else None
    with torch.inference_mode(), ablate(model, ablation), open(predictions_path, "a") as sink:
        bar = tqdm(total=len(todo), desc=f"evaluate {dataset_name}/{split}", unit="sample")
        for start in range(0, len(todo), batch_size):
            rows = pending[start : start + batch_size]  # dict of columns
            batch = [{k: rows[k][j] for k in rows} for j in range(len(rows["sample_id"]))]
            images = [r["image"].convert("RGB") for r in batch]
            inputs = processor(images=images, instructions=[r["instruction"] for r in batch], return_tensors="pt")
            inputs = {k: (v.to(device_, dtype=model.dtype) if torch.is_floating_point(v) else v.to(device_))
                      if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            result = model.segment(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                   return_heatmaps=False)
            lines = []
            for j, row in enumerate(batch):
                completion = tokenizer.decode(result.completion_ids[j], skip_special_tokens=False)
                masks = result.masks[j].cpu().numpy()  # (K, H, W) bool at the original size
                expected = (int(row["height"]), int(row["width"]))
                if masks.shape[1:] != expected:
                    raise ValueError(f"model masks for {row['sample_id']!r} are {masks.shape[1:]}, the image is "
                                     f"{expected}; the processor must report the original image sizes.")
                record = prediction_record(
                    row, completion=completion, reasoning=processor.extract_reasoning(completion),
                    malformed=bool(result.malformed[j]), scores=result.confidences[j].float().cpu().tolist(),
                    slot_masks=masks, threshold=threshold,
                )
                lines.append(json.dumps(record) + "\n")
                done[record["sample_id"]] = record
            sink.write("".join(lines))
            sink.flush()
            os.fsync(sink.fileno())
            bar.update(len(batch))
        bar.close()

    metrics, sources, num_malformed = _score(dataset, done, options, None)
    report = build_report(metrics, dataset=dataset_name, split=split, sources=sources, model=model_name,
                          data_dir=run["data_dir"], loader_kwargs=run["loader_kwargs"], threshold=threshold,
                          max_new_tokens=max_new_tokens, num_malformed=num_malformed, metric_options=options,
                          predictions=str(predictions_path))
    report["ablation"] = ablation or "none"
    _write_json(out / REPORT_FILE, report)
    logger.info("report written to %s", out / REPORT_FILE)
    return _json_safe(report)


def rescore(
    output_dir: str | os.PathLike,
    dataset=None,
    *,
    split: str | None = None,
    data_dir: str | os.PathLike | None = None,
    threshold: float | None = None,
    write: bool = True,
    **metric_options: Any,
) -> dict[str, Any]:
    """Score the saved ``predictions.jsonl`` of ``output_dir`` again, without the model.

    Args:
        output_dir: a directory written by :func:`evaluate_model` (or holding a hand-written ``predictions.jsonl``).
        dataset: the ground truth: ``None`` (the dataset recorded in ``run.json``), a registered dataset name, or a
            ``datasets.Dataset`` in :data:`~segcompass.data.schema.SEGMENTATION_FEATURES` form.
        split, data_dir: override the recorded ones (required with a dataset name when there is no ``run.json``).
        threshold: rebuild each predicted union from the stored ``slot_masks`` at this confidence; ``None`` uses
            the stored ``mask``.
        write: also write ``report.json`` (kept as ``report.json`` only when the options are the defaults of the
            run, else ``report-rescored.json``).
        metric_options: ``protocol``, ``empty_policy``, ``pr_thresholds``, ``eval_size``.
    """
    import datasets as hf_datasets

    out = Path(output_dir)
    if not (out / PREDICTIONS_FILE).is_file():
        raise ValueError(f"{out} has no {PREDICTIONS_FILE}; run evaluate_model with output_dir={str(out)!r} first.")
    _check_threshold(threshold)
    run = json.loads((out / RUN_FILE).read_text()) if (out / RUN_FILE).is_file() else {}
    previous = json.loads((out / REPORT_FILE).read_text()) if (out / REPORT_FILE).is_file() else {}
    options = _normalize_metric_options(metric_options or previous.get("metric_options"))
    if isinstance(dataset, hf_datasets.Dataset):
        name = run.get("dataset") or (dataset["source"][0] if len(dataset) and "source" in dataset.column_names
                                      else "custom")
        split = split or run.get("split") or (dataset["split"][0] if "split" in dataset.column_names and len(dataset)
                                              else "")
        gt = dataset
    else:
        name = dataset or run.get("dataset")
        if not name:
            raise ValueError(f"{out} has no {RUN_FILE}; pass dataset= (a name or a datasets.Dataset) and split=.")
        split = split or run.get("split")
        if not split:
            raise ValueError(f"no split recorded in {out / RUN_FILE}; pass split=.")
        if data_dir is None and name == run.get("dataset"):
            data_dir = run.get("data_dir")
        gt = _load_dataset(name, data_dir, split, run.get("num_samples"), run.get("loader_kwargs") or {})
    records = load_predictions(out)
    metrics, sources, num_malformed = _score(gt, records, options, threshold)
    used_threshold = threshold if threshold is not None else run.get("threshold")
    report = build_report(metrics, dataset=name, split=split, sources=sources, model=run.get("model"),
                          data_dir=None if data_dir is None else str(data_dir), loader_kwargs=run.get("loader_kwargs"),
                          threshold=used_threshold, max_new_tokens=run.get("max_new_tokens"),
                          num_malformed=num_malformed, metric_options=options,
                          predictions=str(out / PREDICTIONS_FILE))
    report["ablation"] = run.get("ablation") or "none"
    report = _json_safe(report)
    if write:
        same = previous and options == previous.get("metric_options") and threshold is None
        target = out / (REPORT_FILE if same or not previous else "report-rescored.json")
        _write_json(target, report)
        logger.info("rescored report written to %s", target)
    return report


# ------------------------------------------------------------------------------------------------ command line
def _parser() -> argparse.ArgumentParser:
    from .interpret.ablations import ABLATIONS

    register_synthetic_dataset()
    parser = argparse.ArgumentParser(
        prog="segcompass evaluate",
        description="Evaluate a SegCompass checkpoint on a benchmark split (greedy decoding, every row scored) "
                    "and write predictions.jsonl + report.json; --rescore scores saved predictions again without "
                    "the model.",
    )
    parser.add_argument("--model", help="Checkpoint directory (saved with save_pretrained) or Hub id (default: the "
                                        "embedded segcompass-tiny-synthetic model).")
    parser.add_argument("--dataset", help=f"Registered dataset name ({', '.join(available_datasets())}).")
    parser.add_argument("--split", default=None, help="Split name (default: val; test for synthetic).")
    parser.add_argument("--data-dir", "--data_dir", dest="data_dir", default=None, help="Benchmark root directory.")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", required=True,
                        help="Receives run.json, predictions.jsonl and report.json.")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=4)
    parser.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int, default=256)
    parser.add_argument("--threshold", type=float, default=None,
                        help="Slot confidence to keep a slot (default: the model's confidence_threshold).")
    parser.add_argument("--num-samples", "--num_samples", dest="num_samples", type=int, default=None,
                        help="Evaluate only the first N rows.")
    parser.add_argument("--rescore", action="store_true", help="Score the saved predictions again; no model needed.")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="Predict every row again instead of skipping those already in predictions.jsonl.")
    parser.add_argument("--protocol", choices=PROTOCOLS, default=None, help="Metric protocol (default lisa).")
    parser.add_argument("--empty-policy", "--empty_policy", dest="empty_policy", choices=EMPTY_POLICIES, default=None,
                        help="IoU of a sample whose union is empty (default one).")
    parser.add_argument("--eval-size", "--eval_size", dest="eval_size", type=int, nargs="+", default=None,
                        help="Score at a fixed size (H [W]) instead of the original resolution.")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available).")
    parser.add_argument("--dtype", default=None, help="Model dtype, e.g. bfloat16 (default: the checkpoint's).")
    parser.add_argument("--ablation", choices=ABLATIONS, default=None,
                        help="Measure the interpretable path: zero the concept representations, or swap the SAE for "
                             "a random one.")
    parser.add_argument("--loader-option", "--loader_option", dest="loader_options", action="append", default=[],
                        metavar="KEY=VALUE", help="Extra loader keyword (repeatable), e.g. image_size=64.")
    return parser


def _loader_options(items: list[str]) -> dict[str, Any]:
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--loader-option {item!r} must look like KEY=VALUE, e.g. image_size=64.")
        options[key] = yaml.safe_load(value)
    return options


def _format_report(report: dict[str, Any]) -> str:
    row = report["table_row"]
    cells = [f"{k} {v:.1f}" if isinstance(v, float) else f"{k} n/a" for k, v in row.items()
             if k not in ("table", "paper_table", "split")]
    where = f" ({row['paper_table']})" if row.get("paper_table") else ""
    lines = [
        f"{row['table']}{where} {row['split']}: {report['num_samples']} samples "
        f"({report['num_no_target']} no-target, {report.get('num_malformed', 0)} malformed answers)",
        "  " + "  ".join(cells),
        json.dumps(report, indent=2),
    ]
    return "\n".join(lines)


def evaluate_command(argv: list[str]) -> int:
    """``segcompass evaluate ...``: evaluate (or ``--rescore``) and print the report. Returns the exit status."""
    args = _parser().parse_args(argv)
    metric_options = {k: getattr(args, k) for k in ("protocol", "empty_policy") if getattr(args, k) is not None}
    if args.eval_size is not None:
        if len(args.eval_size) not in (1, 2):
            print(f"error: --eval-size takes H or H W, got {args.eval_size}.", file=sys.stderr)
            return 2
        metric_options["eval_size"] = args.eval_size[0] if len(args.eval_size) == 1 else args.eval_size
    try:
        loader_kwargs = _loader_options(args.loader_options)
        if args.rescore:
            report = rescore(args.output_dir, args.dataset, split=args.split, data_dir=args.data_dir,
                             threshold=args.threshold, **metric_options)
        else:
            if not args.model:
                from .pipelines import default_model_path

                args.model = default_model_path()
                if args.model is None:
                    raise ValueError("--model is required (a checkpoint directory): this installation has no "
                                     "embedded default model; use --rescore to score saved predictions without a "
                                     "model.")
            if not args.dataset:
                raise ValueError(f"--dataset is required; choose one of {available_datasets()}.")
            split = args.split or ("test" if args.dataset == "synthetic" else "val")
            report = evaluate_model(
                args.model, args.dataset, split, args.data_dir, output_dir=args.output_dir,
                batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, threshold=args.threshold,
                num_samples=args.num_samples, resume=args.resume, metric_options=metric_options,
                device=args.device, dtype=args.dtype, ablation=args.ablation, **loader_kwargs,
            )
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(_format_report(report))
    return 0
