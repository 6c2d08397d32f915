"""Scoring a tiny synthetic-domain checkpoint: in-recipe evaluation (generated and teacher-forced reasoning,
ablations, per family), threshold tuning, and the evaluation runner on the saved checkpoint."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ...answer_format import THINK_CLOSE
from ...interpret.ablations import ablate
from ...prediction import instance_limit, keep_and_union
from ...utils.logging import get_logger
from .config import TinyRecipeConfig
from .data import Sample, backbone_kwargs, batch_inputs, make_split
from .diagnostics import reasoning_step_rows, summarize_steps
from .stages import answer_item_token_ids, collect_activations

logger = get_logger(__name__)


def slot_predictions(outputs, samples: list[Sample], batch: dict, model, processor,
                     logits: bool = False) -> tuple[list, list, list]:
    """Per-slot predictions at the original size: B × (K, S, S) mask booleans (``logits``: the float16 mask logits
    instead, for :func:`tune_mask_bias`), B × (K,) confidences and B ``max_instances``
    (:func:`segcompass.prediction.instance_limit` of ``outputs.instance_limits``)."""
    from ...sam_frame import masks_to_original_size

    input_size = model.sam_input_size
    masks, confs = [], []
    for b in range(len(samples)):
        m = masks_to_original_size(outputs.mask_logits[b], batch["reshaped_input_sizes"][b],
                                   batch["original_sizes"][b], input_size)  # (K, S, S)
        masks.append(m.to(torch.float16).cpu().numpy() if logits else (m > 0).cpu().numpy())
        confs.append(outputs.confidence_logits[b].sigmoid().cpu().numpy())
    return masks, confs, [instance_limit(outputs.instance_limits, b) for b in range(len(samples))]


def score_records(records: list[tuple[np.ndarray, np.ndarray, Sample, int | None]], threshold: float,
                  duplicate_iou: float | None = None) -> dict:
    """cIoU / gIoU / N-acc / T-acc of the union of slots with confidence >= threshold (overall + per family); the
    prediction rule of :func:`segcompass.prediction.keep_and_union` with the model's ``duplicate_iou`` and each
    record's ``max_instances``. A record is ``(masks (K, S, S), confidences (K,), sample, max_instances)``."""
    from ...metrics import SegmentationMetricAccumulator

    overall = SegmentationMetricAccumulator()
    families: dict[str, Any] = {}
    for masks, confs, sample, limit in records:
        size = sample.masks.shape[-2:] if sample.masks.size else masks.shape[-2:]
        prediction, kept = keep_and_union(masks, confs, threshold, shape=size, duplicate_iou=duplicate_iou,
                                          max_instances=limit)  # (H, W)
        reference = list(sample.masks) if not sample.no_target else []
        for acc in (overall, families.setdefault(sample.family, SegmentationMetricAccumulator())):
            acc.add(prediction, reference, no_target_prediction=not kept)
    result = _clean(overall.compute())
    result["per_family"] = {name: _clean(acc.compute()) for name, acc in sorted(families.items())}
    return result


def _clean(metrics: dict) -> dict:
    keep = ("ciou", "giou", "n_acc", "t_acc", "pr@0.5", "num_samples", "num_no_target")
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items() if k in keep}


@torch.no_grad()
def evaluate_samples(model, processor, samples: list[Sample], config: TinyRecipeConfig, *, seed: int,
              ablations: bool, desc: str, logits: bool = False) -> dict:
    """Generated-reasoning and teacher-forced predictions for every sample (and the ablations); ``logits``: records
    hold float16 mask logits instead of masks (:func:`slot_predictions`). ``reasoning["steps"]``: the teacher-forced
    accuracy of each part of the reference reasoning per family (:mod:`~segcompass.recipes.tiny.diagnostics`)."""
    model.eval()
    variants = ["full", "no_concepts", "random_sae"] if ablations else ["full"]
    records: dict[str, list] = {f"{mode}/{v}": [] for mode in ("generated", "teacher_forced") for v in variants}
    exact, target_ok, malformed = 0, 0, 0
    steps: list[dict] = []
    described: list[tuple[str, tuple[tuple[str, str, str, str], ...]]] = []
    tokenizer = processor.tokenizer
    for start in tqdm(range(0, len(samples), config.eval_batch_size), desc=desc, unit="batch"):
        chunk = samples[start:start + config.eval_batch_size]
        prompts = batch_inputs(processor, chunk, completions=False, append_slots=False)
        result = model.segment(
            prompts["input_ids"], prompts["attention_mask"], sam_pixel_values=prompts["sam_pixel_values"],
            reshaped_input_sizes=prompts["reshaped_input_sizes"], max_new_tokens=config.max_new_tokens,
            return_heatmaps=False, **backbone_kwargs(prompts),
        )
        image_embeddings = result.outputs.image_embeddings
        malformed += int(result.malformed.sum())
        for b, sample in enumerate(chunk):
            reference = tokenizer(sample.completion, add_special_tokens=False).input_ids
            generated = result.completion_ids[b].tolist()
            exact += int(generated == reference)
            target_ok += int(target_part(tokenizer, generated) == target_part(tokenizer, reference))
            described.append((tokenizer.decode(generated, skip_special_tokens=False), sample.shape_attributes))
        pad = processor.tokenizer.pad_token_id
        completions = torch.nn.utils.rnn.pad_sequence(result.completion_ids, batch_first=True, padding_value=pad)
        scoring = model.build_scoring_inputs(  # the same inputs segment() scored, rebuilt for the ablations
            prompts["input_ids"], prompts["attention_mask"], completions, pad,
            mm_token_type_ids=prompts.get("mm_token_type_ids"),
        )
        teacher = batch_inputs(processor, chunk, completions=True, append_slots=True)
        for variant in variants:
            with ablate(model, None if variant == "full" else variant, seed=seed + 12345):
                if variant == "full":
                    gen_out = result.outputs
                else:
                    gen_out = model(input_ids=scoring["input_ids"], attention_mask=scoring["attention_mask"],
                                    image_embeddings=image_embeddings, sam_pixel_values=prompts["sam_pixel_values"],
                                    reshaped_input_sizes=prompts["reshaped_input_sizes"],
                                    **backbone_kwargs(prompts | {"mm_token_type_ids": scoring["mm_token_type_ids"]}))
                tf_out = model(input_ids=teacher["input_ids"], attention_mask=teacher["attention_mask"],
                               image_embeddings=image_embeddings, sam_pixel_values=teacher["sam_pixel_values"],
                               reshaped_input_sizes=teacher["reshaped_input_sizes"],
                               logits_to_keep=0 if variant == "full" else 1, **backbone_kwargs(teacher))
            if variant == "full":  # the reference reasoning's parts, from the same teacher-forced pass
                steps.extend(reasoning_step_rows(tf_out.logits, teacher["labels"], [s.family for s in chunk],
                                                 tokenizer))
            for mode, out in (("generated", gen_out), ("teacher_forced", tf_out)):
                masks, confs, limits = slot_predictions(out, chunk, prompts, model, processor, logits)
                records[f"{mode}/{variant}"].extend(zip(masks, confs, chunk, limits))
    reasoning = {"exact_match": exact / len(samples), "target_match": target_ok / len(samples),
                 "malformed": malformed / len(samples), "descriptions": description_accuracy(described),
                 "steps": summarize_steps(steps)}
    return {"records": records, "reasoning": reasoning}


def description_accuracy(described: list[tuple[str, tuple[tuple[str, str, str, str], ...]]]) -> dict:
    """Where generated reasoning goes wrong: every ``"{size} {colour} {kind} at {region}"`` it writes is compared
    with the scene's shape that shares the most of those four attributes (the first such shape on ties).

    Args:
        described: ``(generated text, (size, colour, kind, region) of each of the scene's visible shapes)`` per
            sample.

    Returns:
        ``{"count": shapes described, "exact": fraction naming a real shape, "wrong": {attribute: fraction of
        descriptions where it differs from the best-matching shape}}`` (fractions ``None`` when nothing was
        described).
    """
    import re

    from ...data.synthetic.scene import DESCRIPTION_PATTERN

    attributes = ("size", "colour", "kind", "region")
    count, exact, wrong = 0, 0, dict.fromkeys(attributes, 0)
    for text, shapes in described:
        for match in DESCRIPTION_PATTERN.finditer(re.sub(r"\s*([.,:])", r" \1", text)):
            count += 1
            said = match.groups()
            if not shapes:
                continue
            best = max(shapes, key=lambda shape: sum(a == b for a, b in zip(shape, said)))
            exact += int(best == said)
            for name, a, b in zip(attributes, best, said):
                wrong[name] += int(a != b)
    return {"count": count, "exact": exact / count if count else None,
            "wrong": {name: (n / count if count else None) for name, n in wrong.items()}}


def target_part(tokenizer, ids: list[int]) -> str:
    """The ``target : ... .`` sentence of a completion (what the mask path must find)."""
    from ...data.synthetic.tasks import TARGET_SENTENCE

    text = tokenizer.decode(ids, skip_special_tokens=False)
    index = text.rfind(TARGET_SENTENCE)
    return text[index:].split(THINK_CLOSE)[0].strip() if index >= 0 else ""


def tune_threshold(records: list, thresholds, duplicate_iou: float | None = None) -> tuple[float, dict]:
    """The confidence threshold among ``thresholds`` with the best mean of cIoU, gIoU and N-acc on ``records`` (N-acc
    left out when no sample is no-target; ties go to the threshold closest to 0.5), and that mean per threshold.

    cIoU and gIoU alone reward keeping extra slots (a large union loses little when the target is in it), so on a
    flat stretch they pick a low threshold that keeps a wrong shape beside the right one; N-acc, the share of
    no-target instructions answered with no mask, pulls the other way."""
    scores = {}
    for t in thresholds:
        m = score_records(records, t, duplicate_iou)
        parts = [m["ciou"] or 0.0, m["giou"] or 0.0] + ([m["n_acc"]] if m.get("n_acc") is not None else [])
        scores[t] = sum(parts) / len(parts)
    best = max(thresholds, key=lambda t: (scores[t], -abs(t - 0.5)))
    return float(best), {str(t): round(v, 4) for t, v in scores.items()}


def cut_records(records: list, shift: float) -> list:
    """Records of float mask logits (:func:`slot_predictions` with ``logits=True``) as records of masks, each pixel
    kept where ``logit + shift > 0``."""
    return [((masks.astype(np.float32) + shift) > 0, confs, sample, limit) for masks, confs, sample, limit in records]


def tune_mask_bias(records: list, thresholds, biases, current: float = 0.0,
                   duplicate_iou: float | None = None) -> tuple[float, float, dict, dict]:
    """The ``SegCompassConfig.mask_logit_bias`` among ``biases`` and, at it, the confidence threshold among
    ``thresholds`` with the best validation score of :func:`tune_threshold` (mean of cIoU, gIoU and N-acc; ties go
    to the bias closest to 0, then as :func:`tune_threshold`).

    Args:
        records: generated-reasoning records with float mask logits, computed by a model whose bias is ``current``
            (the confidences do not depend on it: the bias is added after the confidence head).
        thresholds, biases: candidates.

    Returns:
        ``(bias, threshold, threshold sweep at that bias, {str(bias): best score at it})``.
    """
    tuned = {bias: tune_threshold(cut_records(records, bias - current), thresholds, duplicate_iou)
             for bias in biases}  # bias -> (threshold, {str(threshold): score})
    best_score = {bias: sweep[str(threshold)] for bias, (threshold, sweep) in tuned.items()}
    bias = max(biases, key=lambda b: (best_score[b], -abs(b)))
    return float(bias), tuned[bias][0], tuned[bias][1], {str(b): v for b, v in best_score.items()}


def tune_on_validation(model, processor, validation, config: TinyRecipeConfig,
                        seed: int) -> tuple[float, dict, dict, dict, dict]:
    """Set the model's prediction rule from ``config`` (``duplicate_iou``, ``limit_instances_to_answer``), tune its
    mask logit bias and confidence threshold on the validation samples' generated reasoning (:func:`tune_mask_bias`
    over ``mask_logit_biases`` and ``thresholds``) and set them. Returns ``(threshold, threshold sweep, reasoning
    accuracy, scores, bias sweep)``, the scores (:func:`score_records`) those samples get with the chosen bias and
    threshold: a larger sample than the test split's first ``num_test``, slightly optimistic since both were chosen
    on it."""
    model.config.duplicate_iou = config.duplicate_iou
    model.config.limit_instances_to_answer = config.limit_instances_to_answer
    if config.limit_instances_to_answer and model.config.answer_item_token_ids is None:
        model.config.answer_item_token_ids = answer_item_token_ids(processor)
    val = evaluate_samples(model, processor, validation, config, seed=seed, ablations=False, desc="validation",
                           logits=True)
    records, current = val["records"]["generated/full"], model.config.mask_logit_bias
    bias, threshold, sweep, bias_sweep = tune_mask_bias(records, config.thresholds, config.mask_logit_biases,
                                                        current, config.duplicate_iou)
    model.config.mask_logit_bias, model.config.confidence_threshold = bias, threshold
    logger.info("mask logit bias %.2f, confidence threshold %.2f (validation mean of cIoU, gIoU and N-acc per bias: "
                "%s; per threshold: %s)", bias, threshold, bias_sweep, sweep)
    scores = score_records(cut_records(records, bias - current), threshold, config.duplicate_iou)
    return threshold, sweep, val["reasoning"], scores, bias_sweep


def oracle_selection(records: list, match_iou: float = 0.5) -> list:
    """``records`` with each slot's confidence replaced by 1 when its mask matches a target (IoU > ``match_iou``)
    and 0 otherwise, and no instance limit: scored at any threshold in (0, 1], what the masks would give if the
    slots were chosen by an oracle. The gap to the model's own choice is what slot selection costs."""
    chosen = []
    for masks, confs, sample, _ in records:
        picked = np.zeros(len(confs), dtype=np.float32)  # (K,)
        for k, mask in enumerate(masks):
            union = (mask | sample.masks).sum((-2, -1))  # (G,) against every target
            inter = (mask & sample.masks).sum((-2, -1))
            picked[k] = float(np.any(inter > match_iou * np.maximum(union, 1)))
        chosen.append((masks, picked, sample, None))
    return chosen


def evaluate_test_split(model, processor, samples: list[Sample], config: TinyRecipeConfig, seed: int,
                        threshold: float) -> tuple[dict, dict]:
    """The recipe's test evaluation: generated and teacher-forced reasoning, as is and under both ablations,
    scored at ``threshold``, and the full model's masks under :func:`oracle_selection`
    (``"generated/oracle_selection"``, ``"teacher_forced/oracle_selection"``). Returns
    ``({"generated/full": metrics, ...}, reasoning accuracy)``."""
    evaluation = evaluate_samples(model, processor, samples, config, seed=seed, ablations=True, desc="test")
    scores = {name: score_records(records, threshold, model.config.duplicate_iou)
              for name, records in evaluation["records"].items()}
    for mode in ("generated", "teacher_forced"):
        scores[f"{mode}/oracle_selection"] = score_records(oracle_selection(evaluation["records"][f"{mode}/full"]),
                                                           0.5)
    return scores, evaluation["reasoning"]


def evaluate_tiny(model, processor, *, split: str = "test", num_samples: int = 24, data_seed: int = 0,
                  threshold: float | None = None, batch_size: int = 24, max_new_tokens: int = 100) -> dict:
    """Score a synthetic-domain checkpoint on the first ``num_samples`` of a synthetic split with generated reasoning.

    The synthetic image size is the model's SAM input size; the prediction is the union of the slots with
    confidence >= ``threshold`` (default ``model.config.confidence_threshold``).

    Returns:
        ``{"ciou", "giou", "n_acc", "t_acc", "pr@0.5", "num_samples", "num_no_target", "per_family", "reasoning"}``.
    """
    image_size = model.config.sam_config.vision_config.image_size
    config = TinyRecipeConfig(image_size=image_size, num_slots=model.config.num_slots, data_seed=data_seed,
                              eval_batch_size=batch_size, max_new_tokens=max_new_tokens)
    samples = make_split(split, num_samples, config, f"{split} split")
    result = evaluate_samples(model, processor, samples, config, seed=0, ablations=False, desc=split)
    threshold = model.config.confidence_threshold if threshold is None else threshold
    metrics = score_records(result["records"]["generated/full"], threshold, model.config.duplicate_iou)
    metrics["reasoning"] = result["reasoning"]
    return metrics


EVALUATE_COMMAND = ("segcompass evaluate --model {model} --dataset synthetic --split test --num-samples {n} "
                    "--batch-size {batch} --max-new-tokens {tokens} --output-dir {out}")


def evaluate_with_runner(checkpoint, config: TinyRecipeConfig, work_dir=None) -> dict:
    """Score a saved checkpoint with :func:`segcompass.evaluation.evaluate_model` - exactly what
    ``segcompass evaluate`` runs - on the first ``config.num_test`` synthetic test samples, as is and under the two
    ablations, so the model card's headline numbers are the evaluation command's output.

    Returns ``{"command": str, "none" | "no_concepts" | "random_sae": {ciou, giou, n_acc, t_acc, pr@0.5,
    num_samples, num_no_target, num_malformed}}``.
    """
    import tempfile

    from ...evaluation import evaluate_model

    checkpoint = Path(checkpoint)
    keep = ("ciou", "giou", "n_acc", "t_acc", "pr@0.5")
    results: dict[str, Any] = {"command": EVALUATE_COMMAND.format(
        model="MODEL", n=config.num_test, batch=config.eval_batch_size, tokens=config.max_new_tokens, out="OUT")
        + (f" --loader-option seed={config.data_seed}" if config.data_seed else "")}
    with tempfile.TemporaryDirectory(dir=work_dir) as scratch:
        for ablation in ("none", "no_concepts", "random_sae"):
            loader = {"seed": config.data_seed} if config.data_seed else {}
            report = evaluate_model(
                str(checkpoint), "synthetic", "test", output_dir=Path(scratch) / ablation,
                num_samples=config.num_test, batch_size=config.eval_batch_size,
                max_new_tokens=config.max_new_tokens, device="cpu", ablation=ablation, **loader,
            )
            results[ablation] = {k: report["metrics"][k] for k in keep} | {
                k: report[k] for k in ("num_samples", "num_no_target", "num_malformed")}
    logger.info("evaluation runner on %s: %s", checkpoint, results["none"])
    return results


@torch.no_grad()
def final_sae_fve(model, processor, samples, config) -> float | None:
    """Held-out FVE of the frozen SAE on the *final* backbone's hidden_states[L] (it drifts during joint training)."""
    from ...sae.training import evaluate_sae

    acts, _ = collect_activations(model, processor, samples, config)
    return float(evaluate_sae(model.sae, [acts])["fve"])
