"""SegCompassGRPOTrainer on a tiny checkpoint and a 4-sample synthetic dataset (CPU, a few seconds)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")

import segcompass  # noqa: F401  (registers the Auto classes)
from segcompass.data.synthetic import SyntheticConfig, build_synthetic_dataset
from segcompass.testing import tiny_grpo_config
from segcompass.training.grpo_config import SegCompassGRPOConfig
from segcompass.training.grpo_data import prepare_grpo_dataset, validate_grpo_dataset
from segcompass.training.grpo_trainer import SegCompassGRPOTrainer
from segcompass.training.sft import build_supervised_batch, supervised_warmup, target_completion
from segcompass.training.targets import ground_truth_on_grid

COMPONENTS = ("backbone", "concept_interface", "slot_mapper", "mask_decoder")
SEG_METRICS = ("seg/loss", "seg/seg", "seg/bce", "seg/dice", "seg/conf", "seg/rollout_iou", "seg/malformed_ratio")


def _args(output_dir, **overrides):
    return tiny_grpo_config(output_dir, **overrides)


class RecordingReward:
    """Mask reward stand-in that records the keyword arguments TRL passes."""

    __name__ = "recording_reward"

    def __init__(self):
        self.calls = []

    def __call__(self, completions, pred_masks, pred_confidences, masks, **kwargs):
        self.calls.append(dict(completions=completions, pred_masks=pred_masks, pred_confidences=pred_confidences,
                               masks=masks, no_target=kwargs.get("no_target"),
                               instance_limits=kwargs.get("pred_instance_limits")))
        return [float(m.mean()) for m in pred_masks]


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """Two GRPO steps (G = 2, 4 prompts, 8 new tokens); parameters snapshot before and after; saved output dir."""
    directory, processor, dataset = tiny
    from segcompass.modeling_segcompass import SegCompassForReasoningSegmentation
    from segcompass.training.rewards import format_reward, mask_reward

    model = SegCompassForReasoningSegmentation.from_pretrained(directory)
    output_dir = tmp_path_factory.mktemp("grpo_out")
    recorder = RecordingReward()
    trainer = SegCompassGRPOTrainer(
        model, reward_funcs=[format_reward, mask_reward, recorder],
        args=_args(output_dir, reward_weights=[0.3, 0.7, 0.0]),
        train_dataset=prepare_grpo_dataset(dataset, processor), processing_class=processor,
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer.train()
    trainer.save_model(str(output_dir))
    return dict(trainer=trainer, model=model, before=before, recorder=recorder, output_dir=output_dir)


def test_grpo_steps_log_finite_losses_and_rewards(trained):
    logs = [entry for entry in trained["trainer"].state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        for key in (*SEG_METRICS, "loss", "rewards/format_reward/mean", "rewards/mask_reward/mean", "kl", "grad_norm"):
            assert key in entry, key
            assert math.isfinite(entry[key]), (key, entry[key])
        assert entry["seg/loss"] > 0


def test_masks_reach_the_reward_functions(trained):
    recorder = trained["recorder"]
    assert recorder.calls, "the reward function was never called"
    call = recorder.calls[0]
    num_rows = len(call["completions"])
    assert num_rows == 4 * 1  # per_device_train_batch_size rows per generation batch
    num_slots = trained["model"].config.num_slots
    mask_size = trained["model"].config.mask_size
    for masks, confidences in zip(call["pred_masks"], call["pred_confidences"]):
        assert tuple(masks.shape) == (num_slots, mask_size, mask_size)
        assert tuple(confidences.shape) == (num_slots,)
        assert float(masks.min()) >= 0 and float(masks.max()) <= 1
    assert len(call["masks"]) == num_rows
    assert call["instance_limits"] == [None] * num_rows  # config.limit_instances_to_answer is off: no limit
    # the dataset's no_target column reaches every reward call, row by row: True exactly for the rows without masks
    for each in recorder.calls:
        assert each["no_target"] == [len(masks) == 0 for masks in each["masks"]], each["no_target"]
    # the 2 steps draw all 4 prompts once (G = 2 completions each); train row 3 is the one without a target
    assert sum(sum(each["no_target"]) for each in recorder.calls) == 2


def test_each_param_group_moves_and_frozen_parts_do_not(trained):
    model, before = trained["model"], trained["before"]
    moved = {}
    for name, param in model.named_parameters():
        component = name.split(".")[0]
        moved[component] = moved.get(component, False) or not torch.equal(before[name], param.detach())
    for component in COMPONENTS:
        assert moved[component], f"{component} did not change"
    assert not moved["sae"], "the frozen SAE changed"
    assert not moved["vision_encoder"], "the frozen SAM image encoder changed"
    # The Trainer zeroes only the backbone; the heads' gradients must not leak into the next step.
    assert all(p.grad is None for name in COMPONENTS[1:] for p in getattr(model, name).parameters())


def test_optimizer_groups_and_one_cycle_schedule(trained):
    trainer = trained["trainer"]
    peaks = {}
    for group in trainer.optimizer.param_groups:
        peaks[group["name"].split("/")[0]] = group["initial_lr"]
    base = trainer.args.learning_rate
    assert peaks["backbone"] == pytest.approx(base)
    assert peaks["concept_interface"] == pytest.approx(25 * base)
    assert peaks["slot_mapper"] == pytest.approx(80 * base)
    assert peaks["mask_decoder"] == pytest.approx(10 * base)
    lrs = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    assert lrs[0] == pytest.approx(base)  # no warm-up: the first step runs at the peak
    for group in trainer.optimizer.param_groups:  # after the last step: peak / 6.7
        assert group["lr"] == pytest.approx(group["initial_lr"] / 6.7, rel=1e-4)
    decay = {group["name"]: group["weight_decay"] for group in trainer.optimizer.param_groups}
    assert decay["slot_mapper/decay"] == pytest.approx(0.01) and decay["slot_mapper/no_decay"] == 0.0


def test_reference_model_is_a_frozen_copy(trained):
    trainer = trained["trainer"]
    assert trainer.beta == pytest.approx(0.2) and trainer.args.beta == pytest.approx(0.2)
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())


def test_output_dir_loads_with_automodel(trained):
    from transformers import AutoModel, AutoProcessor

    loaded = AutoModel.from_pretrained(trained["output_dir"])
    assert type(loaded).__name__ == "SegCompassForReasoningSegmentation"
    state = trained["model"].state_dict()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, state[name]), name
    processor = AutoProcessor.from_pretrained(trained["output_dir"])
    assert processor.ref_token_id == trained["model"].config.ref_token_id


def test_completions_keep_the_reference_token(trained):
    trainer = trained["trainer"]
    tokenizer = trainer.processing_class.tokenizer
    ids = tokenizer.convert_tokens_to_ids(["<think>", "red", "</think>", "<REF_POS>", "<|im_end|>"])
    text = trainer._decode_completion(ids)
    assert "<REF_POS>" in text and "<|im_end|>" not in text


# ------------------------------------------------------------------------------------------------ supervised path
def test_supervised_overfit_halves_the_segmentation_loss(tiny):
    directory, processor, dataset = tiny
    from segcompass.modeling_segcompass import SegCompassForReasoningSegmentation

    torch.manual_seed(0)
    model = SegCompassForReasoningSegmentation.from_pretrained(directory)
    history = supervised_warmup(model, processor, dataset.select(range(2)), num_steps=20, batch_size=2,
                                learning_rate=6e-4, weight_decay=0.0, fixed_batch=True)
    seg = [h["seg"] for h in history]
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["lm"]) for h in history)
    assert min(seg) <= 0.5 * seg[0], seg
    assert history[-1]["lm"] < history[0]["lm"]


def test_supervised_batch_labels_cover_the_completion_only(tiny):
    directory, processor, dataset = tiny
    from segcompass.modeling_segcompass import SegCompassForReasoningSegmentation

    model = SegCompassForReasoningSegmentation.from_pretrained(directory)
    rows = [dataset[0], dataset[1]]
    batch = build_supervised_batch(processor, rows, model)
    for b, row in enumerate(rows):
        labelled = batch["labels"][b][batch["labels"][b] != -100].tolist()
        expected = processor.tokenizer(target_completion(row), add_special_tokens=False)["input_ids"]
        # the completion up to <REF_POS>, then end-of-answer; prompt, padding and slot tokens excluded
        assert labelled == expected + [processor.tokenizer.eos_token_id]
        assert labelled[-2] == processor.ref_token_id
    assert [tuple(g.shape[1:]) for g in batch["gt_masks"]] == [(model.config.mask_size,) * 2] * 2


# ------------------------------------------------------------------------------------------------ bad input
def test_masks_of_the_wrong_size_are_rejected(tiny, tmp_path):
    directory, processor, dataset = tiny
    from segcompass.utils.masks import encode_rle

    wrong = encode_rle(torch.ones(32, 48, dtype=torch.bool).numpy())
    bad = prepare_grpo_dataset(dataset, processor).map(lambda row, i: {"masks": [wrong] if i == 1 else row["masks"]},
                                                       with_indices=True)
    with pytest.raises(ValueError, match=r"train_dataset\[1\].*\(32, 48\).*\(64, 64\)"):
        SegCompassGRPOTrainer(str(directory), args=_args(tmp_path), train_dataset=bad, processing_class=processor)
    with pytest.raises(ValueError, match="original resolution"):
        ground_truth_on_grid([wrong], (64, 64), (32, 32))


def test_missing_columns_are_rejected_with_a_hint(tiny, tmp_path):
    directory, processor, dataset = tiny
    with pytest.raises(ValueError, match=r"missing the column\(s\) \['prompt'\].*prepare_grpo_dataset"):
        SegCompassGRPOTrainer(str(directory), args=_args(tmp_path), train_dataset=dataset, processing_class=processor)
    no_masks = prepare_grpo_dataset(dataset, processor).remove_columns(["masks"])
    with pytest.raises(ValueError, match=r"\['masks'\]"):
        validate_grpo_dataset(no_masks)


def test_empty_dataset_is_rejected(tiny, tmp_path):
    directory, processor, dataset = tiny
    empty = prepare_grpo_dataset(dataset, processor).select([])
    with pytest.raises(ValueError, match="empty"):
        SegCompassGRPOTrainer(str(directory), args=_args(tmp_path), train_dataset=empty, processing_class=processor)
    with pytest.raises(ValueError, match="None"):
        validate_grpo_dataset(None)


def test_wrong_config_type_is_rejected(tiny, tmp_path):
    from trl import GRPOConfig

    directory, processor, dataset = tiny
    with pytest.raises(ValueError, match="SegCompassGRPOConfig"):
        SegCompassGRPOTrainer(str(directory), args=GRPOConfig(output_dir=str(tmp_path), use_cpu=True),
                              train_dataset=prepare_grpo_dataset(dataset, processor), processing_class=processor)


def test_config_has_the_paper_defaults(tmp_path):
    args = SegCompassGRPOConfig(output_dir=str(tmp_path), use_cpu=True)
    assert (args.num_generations, args.beta, args.epsilon) == (8, 0.2, 0.2)
    assert (args.lambda_seg, args.lambda_conf, args.lambda_dice) == (1.0, 0.2, 0.6)
    assert args.learning_rate == 2e-6 and args.weight_decay == 0.01 and args.max_grad_norm == 1.0
    multipliers = (args.codebook_lr_multiplier, args.slot_mapper_lr_multiplier, args.mask_decoder_lr_multiplier)
    assert multipliers == (25, 80, 10)
    assert args.one_cycle_final_div_factor == 6.7 and args.warmup_steps == 0
    with pytest.raises(ValueError, match="lambda_conf"):
        SegCompassGRPOConfig(output_dir=str(tmp_path), use_cpu=True, lambda_conf=-1.0)
    assert (args.matching_source, args.confidence_targets) == ("heatmap", "matched")  # the paper's
    with pytest.raises(ValueError, match="confidence_targets"):
        SegCompassGRPOConfig(output_dir=str(tmp_path), use_cpu=True, confidence_targets="iou")


def test_matching_and_confidence_options_reach_both_loss_paths(tiny, tmp_path, monkeypatch):
    """``matching_source`` / ``confidence_targets`` of the config reach the GRPO loss and the supervised warm-up."""
    import segcompass.training.grpo_loss as grpo_loss
    import segcompass.training.sft as sft
    from segcompass.training.losses import segmentation_losses

    directory, processor, dataset = tiny
    seen = []

    def recording(*args, **kwargs):
        seen.append((kwargs["matching_source"], kwargs["confidence_targets"]))
        return segmentation_losses(*args, **kwargs)

    monkeypatch.setattr(grpo_loss, "segmentation_losses", recording)
    monkeypatch.setattr(sft, "segmentation_losses", recording)
    trainer = SegCompassGRPOTrainer(str(directory), args=_args(tmp_path, matching_source="mask",
                                                                confidence_targets="mask_iou"),
                                    processing_class=processor, train_dataset=prepare_grpo_dataset(dataset, processor))
    trainer.supervised_warmup(dataset, num_steps=1, learning_rate=1e-3)
    grid = trainer._grid
    out = SimpleNamespace(heatmap_logits=torch.zeros(1, 2, *grid), mask_logits=torch.full((1, 2, *grid), 5.0),
                          confidence_logits=torch.zeros(1, 2))
    gt = torch.zeros(1, *grid)
    gt[0, : grid[0] // 2] = 1  # half the frame: every all-on mask has IoU 0.5 with it
    losses = trainer._segmentation_losses(out, {"seg_gt_masks": [gt], "seg_valid_sizes": torch.tensor([list(grid)])})
    assert seen == [("mask", "mask_iou")] * 2
    torch.testing.assert_close(losses.confidence_targets, torch.tensor([[0.5, 0.5]]))
    with pytest.raises(ValueError, match="confidence_targets"):
        supervised_warmup(trainer.segcompass, processor, dataset, num_steps=1, confidence_targets="iou")


def test_supervised_warmup_through_the_trainer_resyncs_the_reference(tiny, tmp_path):
    directory, processor, dataset = tiny
    trainer = SegCompassGRPOTrainer(str(directory), args=_args(tmp_path), processing_class=processor,
                                    train_dataset=prepare_grpo_dataset(dataset, processor))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    history = trainer.supervised_warmup(dataset, num_steps=2, learning_rate=1e-3)
    assert len(history) == 2
    policy, reference = trainer.model.state_dict(), trainer.ref_model.state_dict()
    assert any(not torch.equal(before[k], policy[k]) for k in policy)  # the warm-up trained the backbone
    assert all(torch.equal(policy[k], reference[k]) for k in policy)  # and the KL anchor followed it


# ------------------------------------------------------------------------------------------------ CLI
def test_train_command_runs_from_yaml_and_saves_a_loadable_model(tmp_path):
    import yaml
    from transformers import AutoModel

    from segcompass.commands.train import train_command

    output_dir = tmp_path / "out"
    config = dict(tiny=True, output_dir=str(output_dir), max_steps=1, num_generations=2, per_device_train_batch_size=4,
                  max_completion_length=4, use_cpu=True, bf16=False, activation_checkpointing=False,
                  max_train_samples=4, synthetic_image_size=64, sft_steps=1, report_to="none", save_strategy="no")
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(config))
    assert train_command(["--config", str(path), "--learning_rate", "1e-5"]) == 0
    assert type(AutoModel.from_pretrained(output_dir)).__name__ == "SegCompassForReasoningSegmentation"


def test_train_command_without_a_model_fails_clearly(tmp_path):
    from segcompass.commands.train import train_command

    with pytest.raises(SystemExit, match="model_name_or_path"):
        train_command(["--output_dir", str(tmp_path), "--use_cpu", "true", "--max_train_samples", "2",
                       "--synthetic_image_size", "64"])


def test_bad_rows_beyond_the_checked_prefix_fail_at_rollout(tiny, tmp_path):
    directory, processor, dataset = tiny
    from segcompass.utils.masks import encode_rle

    wrong = encode_rle(torch.ones(16, 16, dtype=torch.bool).numpy())
    bad = prepare_grpo_dataset(dataset, processor).map(lambda row: {"masks": [wrong]})
    with pytest.raises(ValueError, match=r"\(16, 16\).*\(64, 64\)"):
        validate_grpo_dataset(bad, max_rows=1)
    trainer = SegCompassGRPOTrainer(
        str(directory), args=_args(tmp_path, dataset_check_rows=None, max_steps=1),
        train_dataset=prepare_grpo_dataset(dataset, processor), processing_class=processor,
    )
    trainer.train_dataset = bad  # rows changed after the up-front check
    with pytest.raises(ValueError, match="original resolution"):
        trainer.train()


def test_llava_backbone_trains(tiny_checkpoint_factory, tmp_path):
    from segcompass import SegCompassProcessor

    directory = tiny_checkpoint_factory(backbone_type="llava")
    processor = SegCompassProcessor.from_pretrained(directory)
    dataset = prepare_grpo_dataset(build_synthetic_dataset("train", 2, config=SyntheticConfig(image_size=64)),
                                   processor)
    trainer = SegCompassGRPOTrainer(str(directory), args=_args(tmp_path / "out", per_device_train_batch_size=2,
                                                               max_steps=1),
                                    train_dataset=dataset, processing_class=processor)
    trainer.train()
    entry = next(e for e in trainer.state.log_history if "seg/loss" in e)
    assert math.isfinite(entry["seg/loss"]) and math.isfinite(entry["loss"])


def test_one_cycle_schedule_shape():
    from segcompass.training.optim import one_cycle_scheduler

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [param], "lr": 1.0}])
    scheduler = one_cycle_scheduler(optimizer, 5, final_div_factor=4.0)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1.0) and lrs[4] == pytest.approx(0.25) and lrs[5] == pytest.approx(0.25)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    warm = one_cycle_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 6, 4.0, warmup_steps=2)
    assert warm.get_last_lr()[0] == pytest.approx(0.5)


def test_rollout_iou():
    from segcompass.training.reward_scores import rollout_iou

    pred = torch.zeros(2, 4, 4)
    pred[0, :2] = 0.9  # slot 0: top half
    pred[1, 2:] = 0.9  # slot 1: bottom half, not confident
    gt = torch.zeros(1, 4, 4)
    gt[0, :, :2] = 1.0  # left half
    assert rollout_iou(pred, torch.tensor([0.9, 0.1]), gt) == pytest.approx(4 / 12)
    assert rollout_iou(pred, torch.tensor([0.1, 0.1]), torch.zeros(0, 4, 4)) == 1.0  # both empty
    assert rollout_iou(pred, torch.tensor([0.9, 0.9]), gt) == pytest.approx(8 / 16)
    copy = torch.zeros(2, 4, 4)
    copy[0, :2], copy[1, :3] = 0.9, 0.9  # slot 1 copies slot 0 with one more row: IoU 8 / 12
    top = copy[:1].clone()
    assert rollout_iou(copy, torch.tensor([0.9, 0.8]), top) == pytest.approx(8 / 12)
    assert rollout_iou(copy, torch.tensor([0.9, 0.8]), top, duplicate_iou=0.5) == 1.0  # as evaluation scores it
    assert rollout_iou(pred, torch.tensor([0.9, 0.95]), gt, max_instances=1) == pytest.approx(4 / 12)  # slot 1 only


def test_warmup_gives_grpo_a_format_signal(tiny, tmp_path):
    """A policy that never emits <REF_POS> scores 0 on format; after the supervised warm-up its rollouts end with
    <REF_POS> (malformed ratio 0) and the format reward is positive."""
    directory, processor, dataset = tiny
    trainer = SegCompassGRPOTrainer(
        str(directory),
        args=_args(tmp_path, max_steps=1, temperature=0.7, num_generations=4, max_completion_length=12),
        train_dataset=prepare_grpo_dataset(dataset, processor), processing_class=processor,
    )
    trainer.supervised_warmup(dataset, num_steps=100, batch_size=4, learning_rate=1e-3,
                              completion_fn=lambda row: "<think> the red shape </think><REF_POS>")
    trainer.train()
    entry = next(e for e in trainer.state.log_history if "seg/loss" in e)
    assert entry["seg/malformed_ratio"] <= 0.25
    assert entry["rewards/format_reward/mean"] >= 0.5
