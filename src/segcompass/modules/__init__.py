"""Mask-path building blocks of SegCompass (concept interface, slot mapper, mask decoder)."""

from .mask_decoder import PADDING_LOGIT, HeatmapMaskDecoder, build_sam_image_encoder

__all__ = [
    "PADDING_LOGIT",
    "HeatmapMaskDecoder",
    "build_sam_image_encoder",
]
