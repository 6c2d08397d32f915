"""Assemble a full-size SegCompass checkpoint from its pretrained parts (``segcompass build``), and size a preset
without building it (``segcompass build --dry-run``).

- :func:`build_checkpoint`: a Qwen2.5-VL / LLaVA-1.5 backbone (Hub id or local directory), SAM (a transformers
  ``sam-vit-*`` directory or an original ``.pth``) and an SAE (our format or SAELens; without one, a fresh untrained
  SAE shaped by the preset) -> the SegCompass special tokens added, safetensors shards, the processor and a model
  card (``README.md``) that says which parts are pretrained and which heads are untrained, written atomically into
  ``output_dir``. ``AutoModel`` / ``AutoProcessor.from_pretrained(output_dir)`` load it after ``import segcompass``.
- :func:`empty_model` / :func:`dry_run`: a preset's model on the meta device (no weights allocated, nothing
  downloaded): parameter counts per component and weight memory per dtype.

The parts are put together by :meth:`SegCompassForReasoningSegmentation.from_pretrained_components`; this module
finds, checks and loads them, and writes the result.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .answer_format import DEFAULT_NUM_SLOTS
from .configuration_segcompass import SegCompassConfig
from .presets import PRESETS, SAM_VIT_H_URL, resolve_checkpoint
from .utils.io import write_text_atomic
from .utils.logging import get_logger

logger = get_logger(__name__)

__all__ = ["BYTES_PER_PARAMETER", "build_checkpoint", "dry_run", "empty_model"]

BYTES_PER_PARAMETER = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
"""Weight bytes per parameter (int8: an estimate; quantizers keep norms and some layers in higher precision)."""

_DTYPE_NAMES = {"float32": "fp32", "fp32": "fp32", "bfloat16": "bf16", "bf16": "bf16", "float16": "fp16",
                "fp16": "fp16", "half": "fp16", "int8": "int8"}
_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_VISION_MODULES = ("visual", "vision_tower", "multi_modal_projector")  # Qwen2.5-VL; LLaVA (CLIP + projector)
_HEADS = ("concept_interface", "slot_mapper")  # never pretrained: SegCompass's own heads


def _dtype_key(dtype: Any, allowed=tuple(BYTES_PER_PARAMETER)) -> str:
    key = _DTYPE_NAMES.get(str(dtype).removeprefix("torch."))
    if key not in allowed:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(k for k, v in _DTYPE_NAMES.items() if v in allowed)}"
                         "; pass e.g. 'bfloat16'.")
    return key


# ------------------------------------------------------------------------------------------------ dry run
def empty_model(preset: str):
    """The SegCompass model of ``preset`` on the meta device: real shapes, no memory, no downloads."""
    from .modeling_segcompass import SegCompassForReasoningSegmentation

    config = SegCompassConfig.from_preset(preset)
    with torch.device("meta"):
        return SegCompassForReasoningSegmentation(config)


def _count(parameters) -> int:
    return sum(p.numel() for p in {id(p): p for p in parameters}.values())


def dry_run(preset: str, dtype: Any = None) -> dict:
    """Parameter counts per component and weight memory per dtype of ``preset``, built on the meta device.

    Returns a dict: ``preset``, ``backbone_type``, ``device`` (``"meta"``), ``parameters`` (``backbone`` -- which
    includes ``vision_tower`` --, ``sae``, ``concept_interface``, ``slot_mapper``, ``sam_encoder``, ``mask_decoder``,
    ``total``), ``memory_bytes`` (weights of the whole model per dtype in :data:`BYTES_PER_PARAMETER`) and, when
    ``dtype`` is given, ``dtype`` and ``dtype_memory_bytes``.
    """
    key = None if dtype is None else _dtype_key(dtype)
    model = empty_model(preset)
    vision = [m for name, m in model.backbone.named_modules() if name.rsplit(".", 1)[-1] in _VISION_MODULES]
    parameters = {
        "backbone": _count(model.backbone.parameters()),
        "vision_tower": _count(p for module in vision for p in module.parameters()),
        "sae": _count(model.sae.parameters()),
        "concept_interface": _count(model.concept_interface.parameters()),
        "slot_mapper": _count(model.slot_mapper.parameters()),
        "sam_encoder": _count(model.vision_encoder.parameters()),
        "mask_decoder": _count(model.mask_decoder.parameters()),
        "total": _count(model.parameters()),
    }
    report = {"preset": preset, "backbone_type": model.config.backbone_type,
              "device": next(model.parameters()).device.type, "parameters": parameters,
              "memory_bytes": {name: parameters["total"] * size for name, size in BYTES_PER_PARAMETER.items()}}
    if key is not None:
        report.update(dtype=key, dtype_memory_bytes=report["memory_bytes"][key])
    return report


# ------------------------------------------------------------------------------------------------ the parts
def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir {str(output_dir)!r} is a file; pass a directory path.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ValueError(f"output_dir {str(output_dir)!r} exists and is not empty; pass overwrite=True "
                         "(--overwrite) to replace it, or choose a new directory.")


def _resolve(value, what: str) -> str:
    try:
        return resolve_checkpoint(value)
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from err


def _preset_kwargs(preset: str | None, backbone_config) -> tuple[str, dict]:
    """``(name, SegCompassConfig keyword arguments)`` of the preset (default: the backbone family's), checked
    against the backbone's family."""
    backbone_type = backbone_config.model_type
    if preset is None:
        hidden = backbone_config.get_text_config().hidden_size
        preset = {"qwen2_5_vl": "qwen2.5-vl-7b", "llava": "llava-1.5-13b" if hidden == 5120 else "llava-1.5-7b"}.get(
            backbone_type, "qwen2.5-vl-7b")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
    kwargs = PRESETS[preset]()
    if kwargs["backbone_config"]["model_type"] != backbone_type:
        raise ValueError(f"preset {preset!r} is for a {kwargs['backbone_config']['model_type']} backbone but the "
                         f"backbone is {backbone_type}; pass the preset of its family.")
    return preset, kwargs


def _load_sam(sam, preset_sam: dict):
    """``(SamModel or None, SamConfig, source or None)`` of the SAM part (``None``: the preset's, untrained)."""
    from transformers import SamConfig, SamModel

    from .convert.sam import ORIGINAL_MASK_DECODER_LAYER_NORM_EPS, SAM_VARIANTS, load_sam_checkpoint

    if sam is None:
        return None, SamConfig(**preset_sam), None
    if isinstance(sam, SamModel):
        return sam, sam.config, sam.name_or_path or "a SamModel object"
    if str(sam).endswith((".pth", ".pt")):
        vision = preset_sam["vision_config"]
        hint = None  # ViT-B/L/H are inferred from the file; another size takes the preset's config
        if (vision["hidden_size"], vision["num_hidden_layers"]) not in SAM_VARIANTS:
            hint = SamConfig(**preset_sam)
            hint.mask_decoder_config.layer_norm_eps = ORIGINAL_MASK_DECODER_LAYER_NORM_EPS
        if not Path(sam).expanduser().is_file():
            raise ValueError(f"SAM checkpoint {str(sam)!r} does not exist; download {SAM_VIT_H_URL} (or pass a "
                             "transformers sam-vit-* directory) and pass its path.")
        state_dict, config = load_sam_checkpoint(Path(sam).expanduser(), config=hint)
        with torch.device("meta"):  # a shell for the converted tensors: nothing is initialised twice
            model = SamModel(config)
        model.load_state_dict(state_dict, strict=True, assign=True)
        return model, config, str(Path(sam).expanduser().resolve())
    source = _resolve(sam, "SAM")
    model = SamModel.from_pretrained(source)
    return model, model.config, source


def _load_sae(sae, backbone_config, preset_sae: dict, backbone: str):
    """``(SparseAutoencoder, source or None)``; ``None``: a fresh untrained SAE shaped by the preset."""
    from .sae import SparseAutoencoder, SparseAutoencoderConfig

    if isinstance(sae, SparseAutoencoder):
        return sae, sae.name_or_path or "a SparseAutoencoder object"
    if sae is None:
        text = backbone_config.get_text_config()
        if preset_sae["hook_layer"] > text.num_hidden_layers:
            raise ValueError(f"the preset's SAE hook layer {preset_sae['hook_layer']} is past this backbone's "
                             f"{text.num_hidden_layers} layers; pass an SAE (--sae) or a preset for this backbone.")
        config = SparseAutoencoderConfig(d_in=text.hidden_size, d_sae=preset_sae["d_sae"],
                                         hook_layer=preset_sae["hook_layer"], backbone_name_or_path=backbone)
        logger.warning("No SAE given: the checkpoint gets a fresh, UNTRAINED SAE (d_sae=%d, hook layer %d); its "
                       "concepts mean nothing until one is trained (`segcompass train-sae`).", config.d_sae,
                       config.hook_layer)
        return SparseAutoencoder(config), None
    local = Path(str(sae)).expanduser()
    if local.is_dir() and (local / "cfg.json").is_file():  # SAELens layout
        return SparseAutoencoder.from_saelens(local), str(local.resolve())
    source = _resolve(sae, "SAE")
    return SparseAutoencoder.from_pretrained(source), source


def _processor(backbone: str, backbone_config, num_slots: int, sam_size: int):
    """The SegCompass processor over the backbone's tokenizer (special tokens added) and image processor."""
    from .from_scratch import small_sam_image_processor
    from .processing_segcompass import SegCompassProcessor

    backbone_kwargs = None
    if backbone_config.model_type == "llava":  # the image-token count follows the vision tower
        backbone_kwargs = {"patch_size": backbone_config.vision_config.patch_size, "num_additional_image_tokens": 1,
                           "vision_feature_select_strategy": backbone_config.vision_feature_select_strategy}
    return SegCompassProcessor.from_backbone_pretrained(
        backbone, backbone_config.model_type, num_slots=num_slots, backbone_kwargs=backbone_kwargs,
        sam_image_processor=small_sam_image_processor(sam_size))  # resize the longest side to S, pad to S x S


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    """New tensors in ``dtype`` while the model is put together (half the memory of building in fp32 and casting)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# ------------------------------------------------------------------------------------------------ the card
def _state(report: dict, name: str, pretrained: bool) -> str:
    if not pretrained:
        return "**untrained** (random init)"
    missing = report.get(name, {}).get("missing_keys", [])
    if missing:
        return f"pretrained except {len(missing)} tensors left at random init (e.g. {', '.join(missing[:3])})"
    return "pretrained"


def _model_card(model, processor, sources: dict, preset: str, grown: int, dtype: str) -> str:
    config, report = model.config, model.component_loading_report
    tokens = ", ".join(f"`{token}`" for token in [config.ref_token, *config.slot_tokens])
    ids = [config.ref_token_id, *config.slot_token_ids]
    counts = {name: _count(getattr(model, name).parameters()) for name in
              ("backbone", "sae", "concept_interface", "slot_mapper", "vision_encoder", "mask_decoder")}
    rows = [
        ("backbone", f"`{type(model.backbone).__name__}`", _state(report, "backbone", True), sources["backbone"]),
        ("special-token embeddings", f"{tokens} (ids {ids[0]}..{ids[-1]})",
         f"**untrained** ({'new rows: the matrix grew by ' + str(grown) if grown else 'spare rows of the matrix'})",
         "-"),
        ("sae", "sparse autoencoder", _state(report, "sae", sources["sae"] is not None),
         sources["sae"] or f"none: a fresh SAE (d_sae={config.sae_config.d_sae}, hook layer "
                           f"{config.sae_config.hook_layer})"),
        ("concept_interface", "codebook + slot queries + encoder", "**untrained** (random init)", "-"),
        ("slot_mapper", "slot queries -> heatmaps + confidences", "**untrained** (random init)", "-"),
        ("vision_encoder", "SAM image encoder", _state(report, "vision_encoder", sources["sam"] is not None),
         sources["sam"] or "none"),
        ("mask_decoder", "SAM mask convolutions + two-way decoder; here the slot heatmaps are its dense prompts",
         _state(report, "mask_decoder", sources["sam"] is not None), sources["sam"] or "none"),
    ]
    table = "\n".join(f"| `{name}` | {what} | {format(counts[name], ',') if name in counts else '-'} | {state} | "
                      f"{source} |"
                      for name, what, state, source in rows)
    untrained = [name for name, _, state, _ in rows if "untrained" in state]
    return f"""---
library_name: transformers
pipeline_tag: image-segmentation
tags: [segcompass, reasoning-segmentation, assembled, untrained-heads]
---

# SegCompass ({preset}), assembled from pretrained parts

Written by `segcompass build` ({config.backbone_type} backbone, {config.num_slots} slots, {dtype}).

**This checkpoint has not been trained as a SegCompass model.** Untrained (random weights): {", ".join(untrained)}.
Its heatmaps, confidences and masks mean nothing until it is trained (`segcompass train`); the pretrained parts are
used as they came, the mask decoder has never seen heatmap prompts.

| component | what | parameters | state | source |
|---|---|---:|---|---|
{table}

Processor: the backbone's tokenizer and image processor with {tokens} added, and a SAM image processor at
{processor.sam_input_size[0]} px.

```python
import segcompass  # registers SegCompass with the Auto classes
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("path/to/this/directory")
processor = AutoProcessor.from_pretrained("path/to/this/directory")
```
"""


# ------------------------------------------------------------------------------------------------ build
def _replace_dir(tmp: Path, output_dir: Path) -> None:
    """Move the finished ``tmp`` to ``output_dir`` (replacing an existing one only once the new one is complete)."""
    old = None
    if output_dir.is_dir():
        old = output_dir.with_name(f".{output_dir.name}.{os.getpid()}.old")
        os.replace(output_dir, old)
    os.replace(tmp, output_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_checkpoint(output_dir, *, backbone, sam=None, sae=None, preset: str | None = None,
                     num_slots: int | None = None, dtype: Any = None, max_shard_size: int | str = "5GB",
                     overwrite: bool = False) -> Path:
    """Assemble a SegCompass checkpoint from its parts and write it into ``output_dir`` atomically.

    Args:
        output_dir: the checkpoint directory; built in a temporary directory beside it, then renamed. An existing
            non-empty directory is refused unless ``overwrite``.
        backbone: Hub id or local directory of a Qwen2.5-VL / LLaVA-1.5 checkpoint (model, tokenizer, image
            processor), e.g. ``Qwen/Qwen2.5-VL-7B-Instruct``.
        sam: a transformers ``sam-vit-*`` directory / Hub id, an original ``sam_vit_*.pth``, a ``SamModel``, or
            ``None`` (the preset's SAM, untrained).
        sae: a directory of our format or SAELens (``cfg.json``), a ``SparseAutoencoder``, or ``None`` (a fresh
            untrained SAE with the preset's ``d_sae`` and hook layer; flagged in the card and logged).
        preset: the head sizes and defaults (:data:`segcompass.presets.PRESETS`); default: the backbone family's.
        num_slots: K (default: the preset's).
        dtype: ``float32`` / ``bfloat16`` / ``float16`` (default: the backbone checkpoint's dtype).
        max_shard_size: safetensors shard size (``save_pretrained``).

    Special tokens: ``<REF_POS>`` and K slot tokens are added to the tokenizer; the embedding matrix grows only if
    it has fewer rows than ``len(tokenizer)``; their ids are stored in the config. Returns ``output_dir``.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    from .modeling_segcompass import SegCompassForReasoningSegmentation

    output_dir = Path(output_dir).expanduser().absolute()
    _check_output_dir(output_dir, overwrite)
    build_dtype = None if dtype is None else _TORCH_DTYPES[_dtype_key(dtype, allowed=tuple(_TORCH_DTYPES))]
    backbone_path = _resolve(backbone, "backbone")
    if Path(backbone_path).absolute() == output_dir:
        raise ValueError(f"output_dir {str(output_dir)!r} is the backbone's own directory; choose another one.")
    backbone_config = AutoConfig.from_pretrained(backbone_path)
    if backbone_config.model_type not in ("qwen2_5_vl", "llava"):
        raise ValueError(f"backbone {backbone!r} is a {backbone_config.model_type!r} model; SegCompass builds on "
                         "Qwen2.5-VL (qwen2_5_vl) or LLaVA-1.5 (llava) checkpoints.")
    preset, kwargs = _preset_kwargs(preset, backbone_config)
    num_slots = kwargs.get("num_slots", DEFAULT_NUM_SLOTS) if num_slots is None else num_slots

    sam_model, sam_config, sam_source = _load_sam(sam, kwargs["sam_config"])
    sae_model, sae_source = _load_sae(sae, backbone_config, kwargs["sae_config"], str(backbone))
    processor = _processor(backbone_path, backbone_config, num_slots, sam_config.vision_config.image_size)
    tokenizer = processor.tokenizer

    backbone_model = AutoModelForImageTextToText.from_pretrained(backbone_path, dtype=build_dtype or "auto")
    build_dtype = build_dtype or backbone_model.dtype
    rows = backbone_model.get_input_embeddings().weight.shape[0]
    grown = max(0, len(tokenizer) - rows)
    if grown:
        logger.info("Growing the embedding matrix from %d to %d rows for the SegCompass tokens.", rows, len(tokenizer))
        backbone_model.resize_token_embeddings(len(tokenizer))
    overrides = {k: v for k, v in kwargs.items() if k not in ("backbone_config", "sae_config", "sam_config")}
    overrides.update(num_slots=num_slots, ref_token_id=processor.ref_token_id,
                     slot_token_ids=list(processor.slot_token_ids))
    with _default_dtype(build_dtype):
        model = SegCompassForReasoningSegmentation.from_pretrained_components(
            backbone_model, sae_model, sam_model, sam_config=sam_config, config_overrides=overrides)
    del backbone_model, sam_model
    model = model.to(build_dtype).eval()

    sources = {"backbone": str(backbone), "sam": sam_source, "sae": sae_source}
    card = _model_card(model, processor, sources, preset, grown, str(build_dtype).removeprefix("torch."))
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".partial", dir=output_dir.parent))
    try:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        processor.save_pretrained(tmp)
        write_text_atomic(tmp / "README.md", card)
        tmp.chmod(0o755)
        _check_output_dir(output_dir, overwrite)  # nothing appeared there meanwhile
        _replace_dir(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("SegCompass checkpoint written to %s (untrained heads: see its README.md).", output_dir)
    return output_dir
