"""The evaluation runner: batched greedy inference over a dataset split with resumable predictions
(:func:`evaluate_model`), and re-scoring of saved predictions without the model (:func:`rescore`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..data import available_datasets
from ..metrics import SegmentationMetricAccumulator
from ..prediction import instance_limit
from ..presets import resolve_checkpoint
from ..utils.logging import get_logger
from .datasets import load_evaluation_dataset, register_synthetic_dataset
from .predictions import PREDICTIONS_FILE, load_predictions, prediction_record
from .report import REPORT_FILE, build_report, json_safe, normalize_metric_options, score_predictions, write_json

logger = get_logger(__name__)

__all__ = ["RUN_FILE", "evaluate_model", "rescore"]

RUN_FILE = "run.json"
# run.json fields a resumed run must share: everything that changes a prediction (num_samples may grow: rows are
# always the first num_samples of the split; batch_size and device do not change greedy predictions)
_RUN_IDENTITY = ("model", "dtype", "dataset", "split", "data_dir", "loader_kwargs", "threshold", "max_new_tokens",
                 "ablation")
# files of one run: moved aside together by resume=False (report-rescored.json is derived from the predictions too)
_RUN_FILES = (PREDICTIONS_FILE, RUN_FILE, REPORT_FILE, "report-rescored.json")


def _read_run_file(out: Path) -> dict[str, Any]:
    """The run description ``out/run.json`` (``{}`` when absent); a damaged one is a one-line ``ValueError``."""
    path = out / RUN_FILE
    if not path.is_file():
        return {}
    try:
        run = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it, or pass resume=False (--no-resume) to "
                         "start a new run there (the old files are moved aside).") from None
    if not isinstance(run, dict):  # bad input is a ValueError here, as everywhere
        raise ValueError(  # noqa: TRY004
            f"{path} holds {type(run).__name__}, not a run description (a JSON object); delete it, or pass "
            "resume=False (--no-resume) to start a new run there."
        )
    return run


def _move_previous_run(out: Path) -> Path | None:
    """Move the files of the run in ``out`` into ``out/previous-<UTC timestamp>/`` (nothing is deleted)."""
    import time

    present = [name for name in _RUN_FILES if (out / name).is_file()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = out / f"previous-{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = out / f"previous-{stamp}-{n}"
    target.mkdir()
    for name in present:
        os.replace(out / name, target / name)
    return target


def _check_threshold(threshold: float | None) -> None:
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold={threshold!r} is a slot confidence in [0, 1]; pass e.g. 0.5 (or None for "
                         "model.config.confidence_threshold).")


def _resolve_model_path(path: str | os.PathLike) -> str:
    """Refuse a model path or name that does not exist before anything heavy is loaded
    (:func:`segcompass.presets.resolve_checkpoint`)."""
    return resolve_checkpoint(path)


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
            ``run.json`` must match, dtype included); ``False`` moves the old run's files into
            ``output_dir/previous-<UTC timestamp>/`` and starts afresh (nothing is deleted).
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

    from ..interpret.ablations import ablate, check_ablation

    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be a positive number of rows per model call.")
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be positive (the reasoning length limit).")
    _check_threshold(threshold)
    ablation = check_ablation(ablation)  # before the expensive part
    register_synthetic_dataset()
    options = normalize_metric_options(metric_options)
    SegmentationMetricAccumulator(**options)  # validate before the expensive part
    if dataset_name not in available_datasets():  # fail before loading a model
        raise ValueError(f"unknown dataset {dataset_name!r}; choose one of {available_datasets()} "
                         "(or add one with segcompass.data.register_dataset).")
    if isinstance(model_or_path, (str, os.PathLike)):
        _resolve_model_path(model_or_path)
    if dataset_name == "synthetic" and not {"image_size", "config"} & set(loader_kwargs):
        # scenes drawn at the model's SAM input size: what a synthetic-domain model was trained and reported on
        loader_kwargs = {**loader_kwargs, "image_size": _sam_image_size(model_or_path)}
    dataset = load_evaluation_dataset(dataset_name, data_dir, split, num_samples, loader_kwargs)
    model, processor, model_name = _load_model_and_processor(model_or_path, processor, device, dtype)
    threshold = float(model.config.confidence_threshold if threshold is None else threshold)

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = {
        "model": model_name,
        "dataset": dataset_name,
        "split": split,
        "data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
        "loader_kwargs": json_safe(loader_kwargs),
        "num_samples": num_samples,
        "threshold": threshold,
        "dtype": str(model.dtype).removeprefix("torch."),
        "max_new_tokens": int(max_new_tokens),
        "batch_size": int(batch_size),
        "ablation": ablation,
    }
    predictions_path = out / PREDICTIONS_FILE
    done: dict[str, dict[str, Any]] = {}
    if resume and predictions_path.is_file():
        previous_run = _read_run_file(out)
        changed = [k for k in _RUN_IDENTITY if k in previous_run and previous_run[k] != json_safe(run[k])]
        if changed:
            differences = ", ".join(f"{k}: {previous_run[k]!r} -> {run[k]!r}" for k in changed)
            raise ValueError(
                f"{out} holds predictions of another run ({differences}); resume with the same "
                f"{', '.join(changed)}, pass another output_dir, or resume=False (--no-resume) to predict again "
                "(the old run is moved to previous-<timestamp>/)."
            )
        done = load_predictions(out, repair=True)
        # the report is rebuilt from the predictions at the end; until then none (an interrupted run leaves no
        # report that disagrees with predictions.jsonl)
        (out / REPORT_FILE).unlink(missing_ok=True)
    elif not resume:
        moved = _move_previous_run(out)
        if moved is not None:
            logger.warning("resume=False: the previous run in %s was moved to %s.", out, moved)
    else:
        (out / REPORT_FILE).unlink(missing_ok=True)  # a report without predictions describes nothing here
    write_json(out / RUN_FILE, run)

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
                    slot_masks=masks, threshold=threshold, duplicate_iou=model.config.duplicate_iou,
                    max_instances=instance_limit(result.outputs.instance_limits, j),
                )
                lines.append(json.dumps(record) + "\n")
                done[record["sample_id"]] = record
            sink.write("".join(lines))
            sink.flush()
            os.fsync(sink.fileno())
            bar.update(len(batch))
        bar.close()

    metrics, sources, num_malformed = score_predictions(dataset, done, options, None)
    report = build_report(metrics, dataset=dataset_name, split=split, sources=sources, model=model_name,
                          data_dir=run["data_dir"], loader_kwargs=run["loader_kwargs"], threshold=threshold,
                          max_new_tokens=max_new_tokens, num_malformed=num_malformed, metric_options=options,
                          predictions=str(predictions_path))
    report["ablation"] = ablation or "none"
    write_json(out / REPORT_FILE, report)
    logger.info("report written to %s", out / REPORT_FILE)
    return json_safe(report)


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
    options = normalize_metric_options(metric_options or previous.get("metric_options"))
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
        gt = load_evaluation_dataset(name, data_dir, split, run.get("num_samples"), run.get("loader_kwargs") or {})
    records = load_predictions(out)
    metrics, sources, num_malformed = score_predictions(gt, records, options, threshold)
    used_threshold = threshold if threshold is not None else run.get("threshold")
    report = build_report(metrics, dataset=name, split=split, sources=sources, model=run.get("model"),
                          data_dir=None if data_dir is None else str(data_dir), loader_kwargs=run.get("loader_kwargs"),
                          threshold=used_threshold, max_new_tokens=run.get("max_new_tokens"),
                          num_malformed=num_malformed, metric_options=options,
                          predictions=str(out / PREDICTIONS_FILE))
    report["ablation"] = run.get("ablation") or "none"
    report = json_safe(report)
    if write:
        same = previous and options == previous.get("metric_options") and threshold is None
        target = out / (REPORT_FILE if same or not previous else "report-rescored.json")
        write_json(target, report)
        logger.info("rescored report written to %s", target)
    return report
