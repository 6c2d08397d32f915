"""``pipeline("reasoning-segmentation")``: image + instruction -> reasoning, instances, masks, concepts.

Registered at ``import segcompass``. Output per input::

    {"reasoning": str,                 # the <think> text
     "completion": str,                # the whole generated answer
     "instances": [                    # kept slots (σ(c_k) >= threshold; every slot with return_all_slots), by score
        {"mask": bool (H, W), "score": float, "box": [x, y, w, h], "slot": int, "kept": bool,
         "heatmap": float (H, W) (when return_heatmaps), "concepts": [{"feature", "activation", "weight", "label"}, ...]}],
     "mask": bool (H, W),              # union of the kept instances; all False when there is no target
     "malformed": bool,                # the answer lacked <REF_POS> (one was appended to score it)
     "warnings": [str]}                # why the answer may be outside what the model knows (unknown words,
                                       # empty or malformed reasoning); each kind is also logged once

Quiet and fast by default: the embedded model loads without transformers' "Loading weights" bar (and the documented
no-model call ``pipeline("reasoning-segmentation")`` without transformers' "No model was supplied" warning: the
default is a file shipped in the package, not a Hub revision that could change), and a small model runs each call
on one CPU thread (:func:`threads_for`; the thread count is restored after the call). A list of pairs runs batched,
``batch_size`` pairs per generation (:class:`ReasoningSegmentationPipeline`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import numbers
from pathlib import Path

import torch
from transformers import AutoModel, Pipeline

from .answer_format import unknown_words
from .image_utils import load_image
from .prediction import instance_limit, keep_and_union, slot_concepts
from .presets import default_model_dir, default_model_path
from .utils.logging import get_logger
from .utils.masks import mask_to_box
from .utils.runtime import quiet_progress_bars, threads_for, torch_threads

logger = get_logger(__name__)
TASK = "reasoning-segmentation"
EMBEDDED_DOMAIN_NOTE = ("The embedded model knows only the synthetic shapes domain (coloured circles, squares, "
                        "triangles, stars and diamonds; segcompass.data.synthetic): pass a real checkpoint for real "
                        "images.")
_LOGGED_WARNINGS: set[str] = set()


def _is_embedded_checkpoint(source) -> bool:
    try:
        return isinstance(source, (str, Path)) and bool(str(source)) and Path(source).resolve() == default_model_dir()
    except OSError:
        return False


class _TaskAutoModel(AutoModel):
    """The task's model class: ``AutoModel``, loading the embedded model without the "Loading weights" bar (a
    2 M-parameter model loads in milliseconds; the bar stays for every other checkpoint)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        quiet = quiet_progress_bars("Loading weights") if _is_embedded_checkpoint(pretrained_model_name_or_path) \
            else contextlib.nullcontext()
        with quiet:
            model = AutoModel.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type != "segcompass":
            raise ValueError(
                f"'{pretrained_model_name_or_path}' holds a {model_type!r} model, not a SegCompass checkpoint "
                "(model_type 'segcompass'); the reasoning-segmentation pipeline needs a SegCompass checkpoint: build "
                "one with `segcompass build` or pass the embedded default (no model=)."
            )
        return model


# Pipeline.save_pretrained records the task's model classes by name and a reload looks them up in transformers.
_TaskAutoModel.__name__ = _TaskAutoModel.__qualname__ = "AutoModel"


class _EmbeddedDefaultNotice(logging.Filter):
    """Drops transformers' "No model was supplied, defaulted to <the embedded model>" warning (the default is a file
    shipped in this package, not a Hub revision that could change under the user); any other record passes."""

    def __init__(self, default_path: str):
        super().__init__()
        self.prefix = f"No model was supplied, defaulted to {default_path} "

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _image_key(image) -> str:
    """A content key so repeated images (same path or same pixels) share one SAM embedding."""
    return hashlib.sha1(image.tobytes() + repr((image.size, image.mode)).encode()).hexdigest()


CALL_KEYWORDS = ("threshold", "max_new_tokens", "return_heatmaps", "top_concepts", "return_all_slots", "num_threads",
                 "batch_size")
"""The keyword arguments a call of the pipeline accepts (anything else is a ``ValueError`` listing these)."""

DEFAULT_BATCH_SIZE = 8
"""(image, instruction) pairs run together when ``batch_size`` is unset (:class:`ReasoningSegmentationPipeline`)."""


def _check_batch_size(value) -> int | None:
    """``None`` (unset) or an int >= 1; anything else (0, -1, 1.5, "2", True) is a ``ValueError`` naming it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"`batch_size` must be an int >= 1 (the number of (image, instruction) pairs run together) or unset, "
            f"got {value!r}."
        )
    return int(value)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    return int(value)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")
    return value


def _check_processor_matches_model(processor, model) -> None:
    """The processor's slot tokens must be the model's: a processor made for another slot count would feed the model
    slot tokens it never reads (or leave some unread), and give silently wrong masks."""
    config = getattr(model, "config", None)
    if processor is None or config is None or not hasattr(config, "num_slots"):
        return
    slots = getattr(processor, "num_slots", None)
    ids = list(getattr(processor, "slot_token_ids", []) or [])
    if slots != config.num_slots or ids != list(config.slot_token_ids):
        raise ValueError(
            f"The processor was made for {slots} slots (slot token ids {ids}) but the model has "
            f"num_slots={config.num_slots} (slot_token_ids {list(config.slot_token_ids)}); load the processor saved "
            "with this model (`SegCompassProcessor.from_pretrained(<the model's directory>)`)."
        )


ANSWER_AND_IMAGE_ROOM = 512
"""Positions kept free for the image tokens, the template and the answer when an instruction limit is derived from
the backbone's ``max_position_embeddings`` (:func:`_limit_instruction_length`)."""


def _limit_instruction_length(processor, model) -> None:
    """Give a processor without an instruction limit (no ``max_length``, no finite tokenizer ``model_max_length``)
    the backbone's: ``max_position_embeddings`` minus room for the image tokens and the answer, so an over-long
    instruction is refused with the limit instead of silently running past the position table."""
    if processor is None or not hasattr(processor, "instruction_length_limit"):
        return
    if processor.instruction_length_limit() is not None:
        return
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else None
    positions = getattr(text_config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        processor.max_length = max(1, positions - ANSWER_AND_IMAGE_ROOM - getattr(config, "num_slots", 0),
                                   positions // 4)


class ReasoningSegmentationPipeline(Pipeline):
    """Segment what an instruction refers to, with the model's reasoning and the SAE concepts behind each mask.

    Call with ``pipe(image, "instruction")``, ``pipe([img1, img2], ["a", "b"])``, ``pipe(image, ["a", "b"])`` (one
    image, several instructions; its SAM embedding is computed once) or ``pipe([{"image": ..., "instruction": ...}])``.

    Keyword arguments: ``threshold`` (confidence to keep a slot; default ``model.config.confidence_threshold``),
    ``max_new_tokens`` (reasoning length, default 256), ``return_heatmaps`` (default True), ``top_concepts``
    (concepts listed per instance, default 5), ``return_all_slots`` (list every slot, kept or not, each with its
    ``"kept"`` flag; default False: only the kept ones), ``num_threads`` (CPU threads for this call; also a
    ``pipeline(..., num_threads=N)`` setting; default :func:`threads_for` the model: 1 under 50 M parameters on the
    CPU, else torch's setting; restored after the call), ``batch_size`` (also a ``pipeline(..., batch_size=N)``
    setting; see below).

    Batching: the pairs of a call run in chunks of ``batch_size``; each chunk is one processor call (left-padded
    prompts), one ``model.segment`` (one generation, one scoring forward) and one SAM vision-encoder call over the
    images this call has not embedded yet (an image repeated for several instructions, in any chunk, is encoded
    once); each pair then gets its own output dict. Unset, ``batch_size`` is :data:`DEFAULT_BATCH_SIZE` (8): on the
    embedded model a batch of 4 runs about 2.5-3x faster than 4 single calls (``benchmarks/bench_pipeline_batch.py``)
    and gives the same reasoning, kept slots and masks, scores equal up to float rounding (left padding; measured
    within 1e-6; tests allow 1e-3). ``batch_size=1`` runs one pair at a time (least memory for a large model);
    0, negatives, floats, strings and bools are a ``ValueError``. ``num_workers`` is accepted and ignored.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False
    _pipeline_calls_generate = False

    def __init__(self, *args, num_threads: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        _check_processor_matches_model(self.processor, self.model)
        _limit_instruction_length(self.processor, self.model)
        self._batch_size = _check_batch_size(self._batch_size)
        self._embedding_cache: dict[str, torch.Tensor] = {}
        self.num_threads = num_threads if num_threads is not None else threads_for(
            sum(p.numel() for p in self.model.parameters()), self.device)

    def _sanitize_parameters(self, threshold=None, max_new_tokens=None, return_heatmaps=None, top_concepts=None,
                             return_all_slots=None, **kwargs):
        if kwargs:
            raise ValueError(
                f"Unknown keyword argument(s) {', '.join(map(repr, sorted(kwargs)))} for the {TASK} pipeline; the "
                f"accepted ones are {', '.join(CALL_KEYWORDS)}."
            )
        forward, post = {}, {}
        if max_new_tokens is not None:
            forward["max_new_tokens"] = _check_int("max_new_tokens", max_new_tokens, minimum=1)
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 <= threshold <= 1.0:
                raise ValueError(f"`threshold` is a confidence in [0, 1] (a number), got {threshold!r}.")
            post["threshold"] = float(threshold)
        if return_heatmaps is not None:
            post["return_heatmaps"] = _check_bool("return_heatmaps", return_heatmaps)
        if top_concepts is not None:
            post["top_concepts"] = _check_int("top_concepts", top_concepts, minimum=0)
        if return_all_slots is not None:
            post["return_all_slots"] = _check_bool("return_all_slots", return_all_slots)
        return {}, forward, post

    def __call__(self, images, instructions=None, num_threads: int | None = None, batch_size: int | None = None,
                 **kwargs):
        batch_size = _check_batch_size(batch_size)
        kwargs.pop("num_workers", None)  # transformers' DataLoader setting: the pairs are chunked here, not loaded
        items, single = self._items(images, instructions)
        if num_threads is not None:
            _check_int("num_threads", num_threads, minimum=1)
        _, forward_params, postprocess_params = self._sanitize_parameters(**kwargs)
        forward_params = {**self._forward_params, **forward_params}  # construction settings, overridden per call
        postprocess_params = {**self._postprocess_params, **postprocess_params}
        size = batch_size or self._batch_size or DEFAULT_BATCH_SIZE
        self.call_count += 1
        outputs = []
        self._embedding_cache = {}  # one SAM embedding per distinct image, shared by every chunk of this call
        try:
            with torch_threads(num_threads or self.num_threads):
                for start in range(0, len(items), size):
                    chunk = items[start : start + size]
                    model_inputs = self._preprocess_chunk(chunk, start)
                    model_outputs = self.forward(model_inputs, **forward_params)
                    outputs.extend(self.postprocess({**model_outputs, "index": b}, **postprocess_params)
                                   for b in range(len(chunk)))
        finally:
            self._embedding_cache = {}
        return outputs[0] if single else outputs

    @staticmethod
    def _items(images, instructions) -> tuple[list[dict], bool]:
        """The call's (image, instruction) pairs as dicts, and whether it was a single pair (one dict returned)."""
        for name, value in (("images", images), ("instructions", instructions)):
            if isinstance(value, (list, tuple)) and not value:
                raise ValueError(f"`{name}` is an empty list; pass at least one image and one instruction.")
        if instructions is None:
            items = images if isinstance(images, list) else [images]
            if not all(isinstance(i, dict) and {"image", "instruction"} <= set(i) for i in items):
                raise ValueError(
                    "Call the pipeline as pipe(image, instruction), pipe(images, instructions) or "
                    "pipe([{'image': ..., 'instruction': ...}, ...])."
                )
            return list(items), not isinstance(images, list)
        single = not isinstance(instructions, list) and not isinstance(images, list)
        texts = instructions if isinstance(instructions, list) else [instructions]
        imgs = images if isinstance(images, list) else [images] * len(texts)
        if len(imgs) != len(texts):
            raise ValueError(
                f"Got {len(imgs)} images and {len(texts)} instructions; pass one instruction per image, or one "
                "image with a list of instructions."
            )
        return [{"image": i, "instruction": t} for i, t in zip(imgs, texts)], single

    def _preprocess_chunk(self, chunk: list[dict], start: int):
        """:meth:`preprocess` of the pairs ``start, start + 1, ...`` of the call; an error about "Instruction i" or
        "Image i" of a later chunk says which pairs it counts from."""
        try:
            return self.preprocess(chunk)
        except ValueError as error:
            if start == 0:
                raise
            raise ValueError(f"{error} (Counting from pair {start} of this call: the chunk of pairs {start} to "
                             f"{start + len(chunk) - 1}.)") from error

    def preprocess(self, items):
        """One processor call over a chunk of pairs (a dict or a list of dicts): left-padded prompts, each image
        loaded (EXIF rotation applied) and keyed once however many instructions share it."""
        items = [items] if isinstance(items, dict) else list(items)
        loaded: dict[int, tuple] = {}  # id of the caller's image -> (PIL image, content key)
        images, keys = [], []
        for item in items:
            source = item["image"]
            if id(source) not in loaded:
                image = load_image(source, exif_transpose=True)  # masks in the orientation the user sees
                loaded[id(source)] = (image, _image_key(image))
            image, key = loaded[id(source)]
            images.append(image)
            keys.append(key)
        instructions = [item["instruction"] for item in items]
        inputs = self.processor(images=images, instructions=instructions, padding_side="left", return_tensors="pt")
        inputs["image_keys"] = keys
        inputs["unknown_words"] = [unknown_words(self.processor.tokenizer, text) for text in instructions]
        return inputs

    def _forward(self, model_inputs, max_new_tokens: int = 256):
        """One ``model.segment`` call over the chunk (one generation, one scoring forward); SAM embeddings only for
        images this call has not embedded yet, in one vision-encoder call."""
        inputs = dict(model_inputs)
        keys = inputs.pop("image_keys")
        unknown = inputs.pop("unknown_words")
        sam_pixel_values = inputs.pop("sam_pixel_values").to(self.model.dtype)
        new = {}  # content key -> first row of the chunk holding that image
        for row, key in enumerate(keys):
            if key not in self._embedding_cache and key not in new:
                new[key] = row
        if new:
            rows = sam_pixel_values[list(new.values())]
            for key, embedding in zip(new, self.model.get_image_embeddings(rows)):
                self._embedding_cache[key] = embedding
        tokenizer = self.processor.tokenizer
        result = self.model.segment(
            image_embeddings=torch.stack([self._embedding_cache[key] for key in keys]),
            sam_pixel_values=sam_pixel_values,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **inputs,
        )
        return {"result": result, "unknown_words": unknown}

    def postprocess(self, model_outputs, threshold: float | None = None, return_heatmaps: bool = True,
                    top_concepts: int = 5, return_all_slots: bool = False):
        """The output dict of pair ``model_outputs["index"]`` (default 0) of a chunk's :meth:`_forward`."""
        result = model_outputs["result"]
        b = model_outputs.get("index", 0)
        threshold = self.model.config.confidence_threshold if threshold is None else threshold
        out = result.outputs
        completion = self.processor.tokenizer.decode(result.completion_ids[b], skip_special_tokens=False)
        masks = result.masks[b].cpu().numpy()  # (K, H, W) bool
        heatmaps = result.heatmaps[b].float().cpu().numpy() if result.heatmaps is not None else None
        scores = result.confidences[b].float().cpu()
        limits = getattr(out, "instance_limits", None)  # a batched pipeline rebuilds outputs without their None fields
        union, kept = keep_and_union(masks, scores, threshold, duplicate_iou=self.model.config.duplicate_iou,
                                     max_instances=instance_limit(limits, b))  # (H, W) bool, kept slot indices
        instances = []
        for slot in range(masks.shape[0]) if return_all_slots else kept:
            score = float(scores[slot])
            instance = {
                "mask": masks[slot],
                "score": score,
                "box": mask_to_box(masks[slot]),
                "slot": slot,
                "kept": slot in kept,
                "concepts": slot_concepts(out.slot_concept_attention[b, slot], out.concept_mask[b],
                                          out.concept_indices[b], out.concept_values[b], top_concepts,
                                          self.model.sae.feature_label),
            }
            if return_heatmaps and heatmaps is not None:
                instance["heatmap"] = heatmaps[slot]
            instances.append(instance)
        instances.sort(key=lambda i: i["score"], reverse=True)
        reasoning = self.processor.extract_reasoning(completion)
        malformed = bool(result.malformed[b])
        unknown = model_outputs.get("unknown_words") or [[]]
        return {
            "reasoning": reasoning,
            "completion": completion,
            "instances": instances,
            "mask": union,
            "malformed": malformed,
            "warnings": self._warnings(unknown[b], reasoning, malformed),
        }

    def _warnings(self, unknown: list[str], reasoning: str, malformed: bool) -> list[str]:
        """Why this answer may be outside what the model knows (each kind is also logged once per process)."""
        found = []
        if unknown:
            found.append(("unknown_words", f"the instruction has words the model's tokenizer does not know "
                                           f"({', '.join(repr(w) for w in unknown)}); it reads them as unknown."))
        if not reasoning:
            found.append(("empty_reasoning", "the model produced no reasoning (no non-empty <think> block)."))
        if malformed:
            found.append(("malformed", "the answer had no <REF_POS>; one was appended to score it."))
        if found and self._is_embedded_model():
            found = [(kind, f"{text} {EMBEDDED_DOMAIN_NOTE}") for kind, text in found]
        for kind, text in found:
            if kind not in _LOGGED_WARNINGS:
                _LOGGED_WARNINGS.add(kind)
                logger.warning(text)
        return [text for _, text in found]

    def _is_embedded_model(self) -> bool:
        source = getattr(self.model, "name_or_path", "") or ""
        return bool(source) and Path(source).resolve() == default_model_dir()


def register_pipeline() -> None:
    """Register the task; with no ``model=``, ``pipeline(TASK)`` uses the embedded default checkpoint (quietly: no
    "No model was supplied" warning for it, no "Loading weights" bar)."""
    from transformers.pipelines import PIPELINE_REGISTRY

    default_path = default_model_path()
    default = {"model": (default_path, None)} if default_path else None
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=ReasoningSegmentationPipeline, pt_model=_TaskAutoModel,
                                        default=default, type="multimodal")
    if default_path:
        pipelines_logger = logging.getLogger("transformers.pipelines")
        if not any(isinstance(f, _EmbeddedDefaultNotice) for f in pipelines_logger.filters):
            pipelines_logger.addFilter(_EmbeddedDefaultNotice(default_path))


register_pipeline()  # the task exists as soon as this module is imported (see segcompass._registration)
