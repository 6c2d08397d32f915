"""Checkpoint converters: original SAM ``sam_vit_*.pth`` (:mod:`segcompass.convert.sam`)."""

from .sam import (
    SAM_VARIANTS,
    convert_sam_state_dict,
    infer_sam_config,
    load_sam_checkpoint,
    sam_state_dict_for_mask_path,
)

__all__ = [
    "SAM_VARIANTS",
    "convert_sam_state_dict",
    "infer_sam_config",
    "load_sam_checkpoint",
    "sam_state_dict_for_mask_path",
]
