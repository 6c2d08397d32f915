"""Assemble SegCompass from separately pretrained parts (the body of
:meth:`SegCompassForReasoningSegmentation.from_pretrained_components`; ``segcompass build`` uses it), and refuse a
checkpoint of another model type before ``from_pretrained`` loads it (:func:`check_model_type`)."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForImageTextToText

from .configuration_segcompass import SegCompassConfig
from .sae import SparseAutoencoder
from .utils.logging import get_logger

logger = get_logger(__name__)

__all__ = ["assemble_from_components"]


def assemble_from_components(cls, backbone, sae, sam=None, *, sam_config=None, config_overrides: dict | None = None):
    """``cls(SegCompassConfig(...))`` with the backbone, SAE and SAM weights loaded; the new heads start random.
    Arguments as :meth:`SegCompassForReasoningSegmentation.from_pretrained_components`."""
    from transformers import SamModel

    if isinstance(backbone, (str, Path)):
        backbone = AutoModelForImageTextToText.from_pretrained(backbone)
    if isinstance(sae, (str, Path)):
        sae_dir = Path(sae)
        sae = (SparseAutoencoder.from_saelens(sae_dir) if (sae_dir / "cfg.json").is_file()
               else SparseAutoencoder.from_pretrained(sae_dir))
    sam_state = None
    if isinstance(sam, (str, Path)) and str(sam).endswith((".pth", ".pt")):
        from .convert.sam import load_sam_checkpoint

        sam_state, sam_config = load_sam_checkpoint(sam, config=sam_config)
    elif isinstance(sam, (str, Path)):
        sam = SamModel.from_pretrained(sam)
    if isinstance(sam, SamModel):
        sam_state, sam_config = sam.state_dict(), sam.config
    kwargs = dict(backbone_config=backbone.config, sae_config=sae.config)
    if sam_config is not None:
        kwargs["sam_config"] = sam_config
    kwargs.update(config_overrides or {})
    model = cls(SegCompassConfig(**kwargs))
    report = {}
    report["backbone"] = model.backbone.load_state_dict(backbone.state_dict(), strict=False)
    report["sae"] = model.sae.load_state_dict(sae.state_dict(), strict=False)
    model.sae.feature_dictionary = sae.feature_dictionary
    if sam_state is not None:
        # SamModel and SamVisionModel share the "vision_encoder." prefix
        vision = {k: v for k, v in sam_state.items() if k.startswith("vision_encoder.")}
        report["vision_encoder"] = model.vision_encoder.load_state_dict(vision, strict=False)
        report["mask_decoder"] = model.mask_decoder.load_sam_state_dict(sam_state)
    for name, result in report.items():
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
        if missing or unexpected:
            logger.warning("Loading %s: %d missing keys %s, %d unexpected keys %s", name, len(missing),
                           missing[:5], len(unexpected), unexpected[:5])
    model.component_loading_report = {
        name: {"missing_keys": list(r.missing_keys), "unexpected_keys": list(r.unexpected_keys)}
        for name, r in report.items()
    }
    return model


def check_model_type(source) -> None:
    """A local checkpoint whose config.json names another ``model_type`` (a plain Qwen2 / LLaVA model, ...) is refused
    before anything loads: read as SegCompass it fails later with a message about sizes."""
    import json

    config_file = Path(str(source)) / "config.json"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type") if config_file.is_file() else None
    except (OSError, ValueError, AttributeError):
        return  # unreadable: transformers reports it
    if model_type is not None and model_type != SegCompassConfig.model_type:
        raise ValueError(
            f"'{source}' holds a {model_type!r} model, not a SegCompass checkpoint (config.json model_type "
            f"{SegCompassConfig.model_type!r}); build one with `segcompass build` or pass a SegCompass checkpoint."
        )
