"""Training objectives of SegCompass: Hungarian slot matching, supervised segmentation losses and GRPO rewards.

Import-light on purpose: nothing here imports trl. The GRPO trainer lives in its own module and is imported
lazily by whoever needs it.
"""

from ..sam_frame import letterbox_size, resize_masks
from .losses import SegmentationLossOutput, dice_loss, segmentation_losses
from .matching import SlotMatching, hungarian_match, match_slots, match_slots_batched, pairwise_soft_iou
from .reward_scores import combined_reward_score, mask_reward_score
from .rewards import (
    DEFAULT_EOS_MARKERS,
    FormatReward,
    MaskReward,
    SegmentationReward,
    completion_text,
    format_reward,
    format_reward_score,
    mask_reward,
    segmentation_reward,
)

__all__ = [
    "DEFAULT_EOS_MARKERS",
    "FormatReward",
    "MaskReward",
    "SegmentationLossOutput",
    "SegmentationReward",
    "SlotMatching",
    "combined_reward_score",
    "completion_text",
    "dice_loss",
    "format_reward",
    "format_reward_score",
    "hungarian_match",
    "letterbox_size",
    "mask_reward",
    "mask_reward_score",
    "match_slots",
    "match_slots_batched",
    "pairwise_soft_iou",
    "resize_masks",
    "segmentation_losses",
    "segmentation_reward",
]
