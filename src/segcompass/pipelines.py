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
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from transformers import Pipeline

from .answer_format import unknown_words
from .image_utils import load_image
from .prediction import keep_and_union, slot_concepts
from .presets import default_model_dir, default_model_path
from .utils.logging import get_logger
from .utils.masks import mask_to_box

logger = get_logger(__name__)
TASK = "reasoning-segmentation"
EMBEDDED_DOMAIN_NOTE = ("The embedded model knows only the synthetic shapes domain (coloured circles, squares, "
                        "triangles, stars and diamonds; segcompass.data.synthetic): pass a real checkpoint for real "
                        "images.")
_LOGGED_WARNINGS: set[str] = set()


def _image_key(image) -> str:
    """A content key so repeated images (same path or same pixels) share one SAM embedding."""
    return hashlib.sha1(image.tobytes() + repr((image.size, image.mode)).encode()).hexdigest()


class ReasoningSegmentationPipeline(Pipeline):
    """Segment what an instruction refers to, with the model's reasoning and the SAE concepts behind each mask.

    Call with ``pipe(image, "instruction")``, ``pipe([img1, img2], ["a", "b"])``, ``pipe(image, ["a", "b"])`` (one
    image, several instructions; its SAM embedding is computed once) or ``pipe([{"image": ..., "instruction": ...}])``.

    Keyword arguments: ``threshold`` (confidence to keep a slot; default ``model.config.confidence_threshold``),
    ``max_new_tokens`` (reasoning length, default 256), ``return_heatmaps`` (default True), ``top_concepts``
    (concepts listed per instance, default 5), ``return_all_slots`` (list every slot, kept or not, each with its
    ``"kept"`` flag; default False: only the kept ones).
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False
    _pipeline_calls_generate = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._embedding_cache: dict[str, torch.Tensor] = {}

    def _sanitize_parameters(self, threshold=None, max_new_tokens=None, return_heatmaps=None, top_concepts=None,
                             return_all_slots=None, **kwargs):
        forward, post = {}, {}
        if max_new_tokens is not None:
            forward["max_new_tokens"] = max_new_tokens
        if threshold is not None:
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"`threshold` is a confidence in [0, 1], got {threshold}.")
            post["threshold"] = threshold
        if return_heatmaps is not None:
            post["return_heatmaps"] = return_heatmaps
        if top_concepts is not None:
            post["top_concepts"] = top_concepts
        if return_all_slots is not None:
            post["return_all_slots"] = return_all_slots
        return {}, forward, post

    def __call__(self, images, instructions=None, **kwargs):
        if instructions is None:
            items = images if isinstance(images, list) else [images]
            if not all(isinstance(i, dict) and {"image", "instruction"} <= set(i) for i in items):
                raise ValueError(
                    "Call the pipeline as pipe(image, instruction), pipe(images, instructions) or "
                    "pipe([{'image': ..., 'instruction': ...}, ...])."
                )
            single = not isinstance(images, list)
        else:
            single = not isinstance(instructions, list) and not isinstance(images, list)
            texts = instructions if isinstance(instructions, list) else [instructions]
            imgs = images if isinstance(images, list) else [images] * len(texts)
            if len(imgs) != len(texts):
                raise ValueError(
                    f"Got {len(imgs)} images and {len(texts)} instructions; pass one instruction per image, or one "
                    "image with a list of instructions."
                )
            items = [{"image": i, "instruction": t} for i, t in zip(imgs, texts)]
        self._embedding_cache = {}
        outputs = super().__call__(items, **kwargs)
        self._embedding_cache = {}
        return outputs[0] if single else outputs

    def preprocess(self, item):
        image = load_image(item["image"])
        inputs = self.processor(images=[image], instructions=[item["instruction"]], return_tensors="pt")
        inputs["image_key"] = _image_key(image)
        inputs["unknown_words"] = unknown_words(self.processor.tokenizer, item["instruction"])
        return inputs

    def _forward(self, model_inputs, max_new_tokens: int = 256):
        inputs = dict(model_inputs)
        key = inputs.pop("image_key")
        if isinstance(key, list):
            key = key[0]
        unknown = inputs.pop("unknown_words")
        sam_pixel_values = inputs.pop("sam_pixel_values")
        if key not in self._embedding_cache:
            self._embedding_cache[key] = self.model.get_image_embeddings(sam_pixel_values.to(self.model.dtype))
        tokenizer = self.processor.tokenizer
        result = self.model.segment(
            image_embeddings=self._embedding_cache[key],
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **inputs,
        )
        return {"result": result, "unknown_words": unknown}

    def postprocess(self, model_outputs, threshold: float | None = None, return_heatmaps: bool = True,
                    top_concepts: int = 5, return_all_slots: bool = False):
        result = model_outputs["result"]
        threshold = self.model.config.confidence_threshold if threshold is None else threshold
        out = result.outputs
        completion = self.processor.tokenizer.decode(result.completion_ids[0], skip_special_tokens=False)
        masks = result.masks[0].cpu().numpy()  # (K, H, W) bool
        heatmaps = result.heatmaps[0].float().cpu().numpy() if result.heatmaps is not None else None
        scores = result.confidences[0].float().cpu()
        union, kept = keep_and_union(masks, scores, threshold)  # (H, W) bool, kept slot indices
        instances = []
        for slot in range(masks.shape[0]) if return_all_slots else kept:
            score = float(scores[slot])
            instance = {
                "mask": masks[slot],
                "score": score,
                "box": mask_to_box(masks[slot]),
                "slot": slot,
                "kept": slot in kept,
                "concepts": slot_concepts(out.slot_concept_attention[0, slot], out.concept_mask[0],
                                          out.concept_indices[0], out.concept_values[0], top_concepts,
                                          self.model.sae.feature_label),
            }
            if return_heatmaps and heatmaps is not None:
                instance["heatmap"] = heatmaps[slot]
            instances.append(instance)
        instances.sort(key=lambda i: i["score"], reverse=True)
        reasoning = self.processor.extract_reasoning(completion)
        malformed = bool(result.malformed[0])
        return {
            "reasoning": reasoning,
            "completion": completion,
            "instances": instances,
            "mask": union,
            "malformed": malformed,
            "warnings": self._warnings(model_outputs.get("unknown_words", []), reasoning, malformed),
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
    """Register the task; with no ``model=``, ``pipeline(TASK)`` uses the embedded default checkpoint."""
    from transformers import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    default_path = default_model_path()
    default = {"model": (default_path, None)} if default_path else None
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=ReasoningSegmentationPipeline, pt_model=AutoModel,
                                        default=default, type="multimodal")


register_pipeline()  # the task exists as soon as this module is imported (see segcompass._registration)
