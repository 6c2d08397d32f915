"""What the GRPO trainer checks and prepares before TRL starts (training/grpo_setup.py) and the config's paper
defaults: the reward's keep threshold from the model config, float32 master weights, the Qwen2.5-VL pixel range."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from segcompass.testing import tiny_grpo_config
from segcompass.training.grpo_config import SegCompassGRPOConfig
from segcompass.training.grpo_setup import apply_pixel_limits, check_grpo_args, prepare_model_for_grpo
from segcompass.training.rewards import MaskReward, SegmentationReward, format_reward, mask_reward


@pytest.fixture
def model(tiny):
    from segcompass.modeling_segcompass import SegCompassForReasoningSegmentation

    return SegCompassForReasoningSegmentation.from_pretrained(tiny[0])


@pytest.fixture
def processor(tiny):
    return copy.deepcopy(tiny[1])  # apply_pixel_limits changes the processor in place


def _pixel_range(processor) -> tuple[int, int]:
    size = processor.image_processor.size
    return size["shortest_edge"], size["longest_edge"]


# ------------------------------------------------------------------------------------------------ config defaults
def test_config_has_the_paper_lengths_and_pixel_range(tmp_path):
    args = SegCompassGRPOConfig(output_dir=str(tmp_path), use_cpu=True)
    assert args.max_completion_length == 2000  # paper A.2 (TRL's default is 512)
    assert (args.min_pixels, args.max_pixels) == (3136, 705600)  # paper A.2, Qwen2.5-VL
    assert args.mask_confidence_threshold is None  # the model's config.confidence_threshold
    with pytest.raises(ValueError, match=r"`min_pixels` \(800000\) is above `max_pixels` \(705600\)"):
        SegCompassGRPOConfig(output_dir=str(tmp_path), use_cpu=True, min_pixels=800_000)
    with pytest.raises(ValueError, match=r"`max_pixels` = 0 is out of range"):
        SegCompassGRPOConfig(output_dir=str(tmp_path), use_cpu=True, max_pixels=0)
    with pytest.raises(ValueError, match=r"`mask_confidence_threshold` = 1.5 is out of range"):
        SegCompassGRPOConfig(output_dir=str(tmp_path), use_cpu=True, mask_confidence_threshold=1.5)
    unset = SegCompassGRPOConfig(output_dir=str(tmp_path), use_cpu=True, min_pixels=None, max_pixels=None)
    assert (unset.min_pixels, unset.max_pixels) == (None, None)


# ------------------------------------------------------------------------------------------------ keep threshold
def test_reward_threshold_comes_from_the_model_config(model, tmp_path):
    from segcompass.training.grpo_trainer import SegCompassGRPOTrainer

    model.config.confidence_threshold = 0.15  # a tuned threshold, as inference and evaluation use it
    args = check_grpo_args(tiny_grpo_config(tmp_path), model)
    assert args.mask_confidence_threshold == 0.15  # also the logged rollout IoU's threshold
    funcs = SegCompassGRPOTrainer._build_reward_functions(None, args)
    assert funcs[0] is format_reward and isinstance(funcs[1], MaskReward)
    assert funcs[1].confidence_threshold == 0.15 and funcs[1].__name__ == "mask_reward"
    assert args.reward_weights == [0.3, 0.7]
    assert mask_reward.confidence_threshold is None  # the module's default instance is not changed

    # reward functions passed in: unset thresholds are filled in, explicit ones win
    own = MaskReward(confidence_threshold=0.7, name="strict_mask")
    funcs = SegCompassGRPOTrainer._build_reward_functions(
        [format_reward, mask_reward, own, SegmentationReward()], args)
    assert [getattr(f, "confidence_threshold", None) for f in funcs] == [None, 0.15, 0.7, 0.15]
    assert funcs[2] is own

    # a threshold in the config overrides the model's
    explicit = check_grpo_args(tiny_grpo_config(tmp_path, mask_confidence_threshold=0.4), model)
    assert explicit.mask_confidence_threshold == 0.4
    assert SegCompassGRPOTrainer._build_reward_functions(None, explicit)[1].confidence_threshold == 0.4

    # the model's duplicate rule comes with its threshold (the trainer passes model.config.duplicate_iou)
    funcs = SegCompassGRPOTrainer._build_reward_functions([mask_reward, SegmentationReward(), own], args, 0.5)
    assert [funcs[0].duplicate_iou, funcs[1].mask.duplicate_iou, funcs[2].duplicate_iou] == [0.5, 0.5, None]


def test_resolved_reward_keeps_what_evaluation_keeps(model, tmp_path):
    """With the model's threshold 0.15 a slot at confidence 0.3 is predicted, so it counts in the reward."""
    from segcompass.training.grpo_trainer import SegCompassGRPOTrainer

    model.config.confidence_threshold = 0.15
    reward = SegCompassGRPOTrainer._build_reward_functions(None, check_grpo_args(tiny_grpo_config(tmp_path),
                                                                                 model))[1]
    pred = torch.zeros(2, 4, 4)
    pred[0, :2] = 1.0  # slot 0: top half, the target
    pred[1, 2:] = 1.0  # slot 1: bottom half, a false positive
    gt = pred[:1].clone()
    out = reward(completions=["x"] * 2, pred_masks=[pred] * 2, masks=[gt] * 2,
                 pred_confidences=[torch.tensor([0.9, 0.3]), torch.tensor([0.9, 0.1])])
    assert out == pytest.approx([0.5, 1.0])  # a fixed 0.5 threshold gave [1.0, 1.0]


# ------------------------------------------------------------------------------------------------ precision
def test_bfloat16_trainable_parameters_are_refused(model, tmp_path):
    args = tiny_grpo_config(tmp_path)
    check_grpo_args(args, model)  # float32: fine
    model.to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"SegCompassGRPOTrainer: \d+ trainable parameter tensor\(s\) are "
                                         r"torch\.bfloat16 .*dtype=torch\.float32.*bf16=True"):
        check_grpo_args(tiny_grpo_config(tmp_path), model)
    model.to(torch.float16)
    with pytest.raises(ValueError, match=r"torch\.float16"):
        check_grpo_args(tiny_grpo_config(tmp_path), model)


def test_frozen_or_adapter_trained_16_bit_parts_are_allowed(model, tmp_path):
    """Only what will be trained must be float32: a frozen bf16 SAE / vision encoder, or a bf16 backbone that LoRA
    adapters (float32) train or whose multiplier is 0."""
    model.sae.to(torch.bfloat16)
    model.vision_encoder.to(torch.bfloat16)
    check_grpo_args(tiny_grpo_config(tmp_path), model)  # both frozen by default
    with pytest.raises(ValueError, match=r"vision_encoder\."):
        check_grpo_args(tiny_grpo_config(tmp_path, freeze_vision_encoder=False), model)
    model.backbone.to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"backbone\."):
        check_grpo_args(tiny_grpo_config(tmp_path), model)
    check_grpo_args(tiny_grpo_config(tmp_path), model, peft_config=object())  # PEFT trains float32 adapters
    check_grpo_args(tiny_grpo_config(tmp_path, backbone_lr_multiplier=0.0), model)
    model.slot_mapper.to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"slot_mapper\."):
        check_grpo_args(tiny_grpo_config(tmp_path), model, peft_config=object())


def test_supervised_warmup_refuses_bfloat16_parameters(model, tiny):
    from segcompass.training.sft import supervised_warmup

    _, processor, dataset = tiny
    model.to(torch.bfloat16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"supervised_warmup: .*torch\.bfloat16.*model\.float\(\)"):
        supervised_warmup(model, processor, dataset.select(range(2)), num_steps=1, batch_size=2)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # nothing trained


# ------------------------------------------------------------------------------------------------ pixel range
def test_pixel_limits_narrow_the_qwen_processor(processor, model, tmp_path):
    assert processor.backbone_type == "qwen2_5_vl"
    own = _pixel_range(processor)  # the tiny processor: [3136, 12544], inside the paper's range
    assert apply_pixel_limits(processor, 3136, 705600) == own and _pixel_range(processor) == own
    image = Image.fromarray(np.zeros((112, 112, 3), dtype=np.uint8))
    tokens_before = int(processor([image], ["the box"])["image_grid_thw"].prod())
    prepare_model_for_grpo(model, tiny_grpo_config(tmp_path, max_pixels=56 * 56), processor)
    assert _pixel_range(processor) == (3136, 3136)
    assert int(processor([image], ["the box"])["image_grid_thw"].prod()) < tokens_before  # resized down
    assert processor.image_processor.to_dict()["size"]["longest_edge"] == 3136  # saved with the processor
    with pytest.raises(ValueError, match=r"range \[3136, 3136\] does not overlap .*\[5000, None\].*None"):
        apply_pixel_limits(processor, 5000, None)
    assert apply_pixel_limits(processor, None, None) == (3136, 3136)


def test_pixel_limits_leave_llava_alone(tiny_checkpoint_factory):
    from segcompass import SegCompassProcessor

    processor = SegCompassProcessor.from_pretrained(tiny_checkpoint_factory(backbone_type="llava"))
    before = processor.image_processor.to_dict()
    assert apply_pixel_limits(processor, 3136, 705600) is None
    assert processor.image_processor.to_dict() == before
