"""Checkpoint / resume of SegCompassGRPOTrainer and the LoRA flags of ``segcompass train`` (tiny model, CPU)."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("trl")

import segcompass  # noqa: F401  (registers the Auto classes)
from segcompass.testing import tiny_grpo_config
from segcompass.training.grpo_data import prepare_grpo_dataset
from segcompass.training.grpo_trainer import SegCompassGRPOTrainer
from transformers import TrainerCallback

HEADS = ("concept_interface", "slot_mapper", "mask_decoder")


def _args(output_dir, **overrides):
    return tiny_grpo_config(output_dir, **{"max_completion_length": 6, "max_steps": 4, "save_strategy": "steps",
                                           "save_steps": 2, "logging_steps": 1, **overrides})


@pytest.fixture(scope="module")
def prepared(tiny):
    """The shared tiny checkpoint and processor (tests/training/conftest.py) and its 4 rows as a GRPO dataset."""
    directory, processor, dataset = tiny
    return directory, processor, prepare_grpo_dataset(dataset, processor)


def _optimizer_snapshot(optimizer):
    steps = [float(optimizer.state[p]["step"]) if p in optimizer.state else None
             for group in optimizer.param_groups for p in group["params"]]
    return dict(steps=steps, lrs=[group["lr"] for group in optimizer.param_groups],
                names=[group["name"] for group in optimizer.param_groups],
                sizes=[len(group["params"]) for group in optimizer.param_groups])


class Snapshot(TrainerCallback):
    """Optimizer step counts / LRs (and the model's weights) at the end of step ``at`` (straight run) or at the
    beginning of the first step after ``at`` (resumed run)."""

    def __init__(self, trainer_box, at=2, when="end"):
        self.box, self.at, self.when, self.optimizer, self.weights = trainer_box, at, when, None, None

    def _take(self, state):
        if state.global_step == self.at and self.optimizer is None:
            trainer = self.box[0]
            self.optimizer = _optimizer_snapshot(trainer.optimizer)
            self.weights = {k: v.detach().clone() for k, v in trainer.segcompass.state_dict().items()}

    def on_step_end(self, args, state, control, **kwargs):
        if self.when == "end":
            self._take(state)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.when == "begin":
            self._take(state)


def _trainer(directory, processor, dataset, output_dir, when, **kwargs):
    box = []
    snapshot = Snapshot(box, when=when)
    trainer = SegCompassGRPOTrainer(str(directory), args=_args(output_dir, **kwargs), train_dataset=dataset,
                                    processing_class=processor, callbacks=[snapshot])
    box.append(trainer)
    return trainer, snapshot


@pytest.fixture(scope="module")
def runs(prepared, tmp_path_factory):
    """4 GRPO steps straight (checkpoints every 2 steps) and a new trainer resumed from checkpoint-2 for steps 3-4.
    Sampling stays on (temperature 1): the Trainer restores the RNG states, so the rollouts are the same."""
    directory, processor, dataset = prepared
    straight, straight_snap = _trainer(directory, processor, dataset, tmp_path_factory.mktemp("straight"), "end")
    straight.train()
    checkpoint = os.path.join(straight.args.output_dir, "checkpoint-2")
    resumed, resumed_snap = _trainer(directory, processor, dataset, tmp_path_factory.mktemp("resumed"), "begin")
    initial = {k: v.detach().clone() for k, v in resumed.segcompass.state_dict().items()}
    resumed.train(resume_from_checkpoint=checkpoint)
    return dict(straight=straight, resumed=resumed, straight_snap=straight_snap, resumed_snap=resumed_snap,
                checkpoint=checkpoint, initial=initial)


def test_resumed_run_ends_with_the_straight_run_weights(runs):
    straight = runs["straight"].segcompass.state_dict()
    resumed = runs["resumed"].segcompass.state_dict()
    at_step_2 = runs["straight_snap"].weights
    assert set(straight) == set(resumed)
    moved = {name: False for name in ("backbone", *HEADS)}
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6, msg=name)
        component = name.split(".")[0]
        if component in moved and not torch.equal(at_step_2[name], value):
            moved[component] = True
    # steps 3-4 changed every trained component, so the comparison is not vacuous
    assert all(moved.values()), moved
    assert runs["resumed"].state.global_step == 4
    # the resumed rollouts/rewards match the straight run's (same prompts, same sampled completions)
    def rewards(trainer):
        return [e["reward"] for e in trainer.state.log_history if "reward" in e and e.get("step", 0) > 2]
    assert len(rewards(runs["straight"])) == 2
    assert rewards(runs["resumed"]) == pytest.approx(rewards(runs["straight"]))


def test_resume_restores_optimizer_and_scheduler_of_every_group(runs):
    at_save, at_resume = runs["straight_snap"].optimizer, runs["resumed_snap"].optimizer
    assert at_resume is not None, "the resumed run never reached step 3"
    assert at_resume["names"] == at_save["names"] and at_resume["sizes"] == at_save["sizes"]
    assert {name.split("/")[0] for name in at_save["names"]} >= {"backbone", *HEADS}
    assert at_resume["steps"] == at_save["steps"]
    assert all(step == 2.0 for step in at_save["steps"] if step is not None)
    assert sum(step is not None for step in at_save["steps"]) > 0
    assert at_resume["lrs"] == pytest.approx(at_save["lrs"])
    lrs = runs["resumed"].lr_scheduler.get_last_lr()
    assert lrs == pytest.approx(runs["straight"].lr_scheduler.get_last_lr())


def test_resume_loads_the_checkpoint_weights_into_backbone_and_heads(runs):
    """At its first step the resumed trainer holds the checkpoint's weights (not the initial model's)."""
    initial, at_step_2, resumed = runs["initial"], runs["straight_snap"].weights, runs["resumed_snap"].weights
    changed = {name.split(".")[0] for name in initial if not torch.equal(initial[name], at_step_2[name])}
    assert changed >= {"backbone", *HEADS}
    for name, value in at_step_2.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)


def test_checkpoint_loads_with_automodel(runs):
    from transformers import AutoModel

    loaded = AutoModel.from_pretrained(runs["checkpoint"])
    assert type(loaded).__name__ == "SegCompassForReasoningSegmentation"
    at_step_2 = runs["straight_snap"].weights
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, at_step_2[name], rtol=0, atol=0, msg=name)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        assert os.path.isfile(os.path.join(runs["checkpoint"], name)), name


def test_sampler_order_depends_only_on_seed_and_epoch():
    from trl.trainer.utils import RepeatSampler

    from segcompass.training.grpo_trainer import _EpochRepeatSampler

    data = list(range(7))
    reference = RepeatSampler(data, mini_repeat_count=2, batch_size=3, repeat_count=2, seed=3)
    epochs = [list(reference) for _ in range(3)]
    fresh = _EpochRepeatSampler(data, mini_repeat_count=2, batch_size=3, repeat_count=2, seed=3)
    fresh.set_epoch(2)  # a resumed run starts here without iterating epochs 0 and 1
    assert list(fresh) == epochs[2]
    fresh.set_epoch(0)
    assert list(fresh) == list(fresh) == epochs[0]


LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0,
            target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")


def _peft_trainer(directory, processor, dataset, output_dir, **kwargs):
    from peft import LoraConfig

    return SegCompassGRPOTrainer(str(directory), args=_args(output_dir, **kwargs), train_dataset=dataset,
                                 processing_class=processor, peft_config=LoraConfig(**LORA))


def _adapter_and_heads(trainer):
    lora = {k: v.detach().clone() for k, v in trainer.model.state_dict().items() if "lora_" in k}
    heads = {k: v.detach().clone() for k, v in trainer.segcompass.state_dict().items() if k.split(".")[0] in HEADS}
    return lora, heads


def test_peft_resume_restores_adapter_and_heads(prepared, tmp_path):
    directory, processor, dataset = prepared
    straight = _peft_trainer(directory, processor, dataset, tmp_path / "a")
    straight.train()
    checkpoint = tmp_path / "a" / "checkpoint-2"
    assert (checkpoint / "adapter" / "adapter_config.json").is_file()
    final_lora, final_heads = _adapter_and_heads(straight)
    assert final_lora

    # loading alone: the adapter (into the wrapped backbone) and the heads come back exactly
    other = _peft_trainer(directory, processor, dataset, tmp_path / "b")
    initial_lora, _ = _adapter_and_heads(other)
    other._load_from_checkpoint(str(checkpoint))
    loaded_lora, loaded_heads = _adapter_and_heads(other)
    assert any(not torch.equal(initial_lora[k], loaded_lora[k]) for k in loaded_lora)
    # the SegCompass forward runs the restored adapter: the backbone in segcompass is the PeftModel's base
    assert other.segcompass.backbone is other.model.get_base_model()

    # resuming: steps 3-4 end where the straight run ended
    resumed = _peft_trainer(directory, processor, dataset, tmp_path / "c")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    resumed_lora, resumed_heads = _adapter_and_heads(resumed)
    for name, value in {**final_lora, **final_heads}.items():
        got = resumed_lora.get(name, resumed_heads.get(name))
        torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(loaded_lora[k], final_lora[k]) for k in final_lora)  # steps 3-4 moved the adapter


def test_reference_policy_after_warmup_is_checkpointed(prepared, tmp_path):
    from segcompass.training.grpo_checkpoint import REF_WEIGHTS_NAME

    directory, processor, dataset = prepared
    trainer = SegCompassGRPOTrainer(str(directory), args=_args(tmp_path / "a", max_steps=2),
                                    train_dataset=dataset, processing_class=processor)
    trainer.supervised_warmup(num_steps=1, learning_rate=1e-3)
    warmed_ref = {k: v.detach().clone() for k, v in trainer.ref_model.state_dict().items()}
    trainer.train()
    checkpoint = tmp_path / "a" / "checkpoint-2"
    assert (checkpoint / REF_WEIGHTS_NAME).is_file()
    other = SegCompassGRPOTrainer(str(directory), args=_args(tmp_path / "b", max_steps=2),
                                  train_dataset=dataset, processing_class=processor)
    assert any(not torch.equal(v, warmed_ref[k]) for k, v in other.ref_model.state_dict().items())
    other._load_from_checkpoint(str(checkpoint))
    for name, value in other.ref_model.state_dict().items():
        torch.testing.assert_close(value, warmed_ref[name], rtol=0, atol=0, msg=name)


def test_checkpoint_without_ref_weights_when_reference_is_initial(runs):
    from segcompass.training.grpo_checkpoint import REF_WEIGHTS_NAME

    assert not os.path.exists(os.path.join(runs["checkpoint"], REF_WEIGHTS_NAME))


def test_train_command_lora_flags(tmp_path):
    from transformers import AutoModel

    from segcompass.commands.train import train_command

    output_dir = tmp_path / "out"
    argv = ["--tiny", "true", "--output_dir", str(output_dir), "--max_steps", "1", "--num_generations", "2",
            "--per_device_train_batch_size", "2", "--max_completion_length", "4", "--use_cpu", "true",
            "--bf16", "false", "--gradient_checkpointing", "false", "--max_train_samples", "2",
            "--synthetic_image_size", "64", "--report_to", "none", "--save_strategy", "no", "--lora_r", "4"]
    assert train_command(argv) == 0
    assert (output_dir / "adapter" / "adapter_config.json").is_file()
    import json

    config = json.loads((output_dir / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and "language_model" in str(config["target_modules"])
    assert type(AutoModel.from_pretrained(output_dir)).__name__ == "SegCompassForReasoningSegmentation"


def test_lora_config_from_arguments():
    from segcompass.training.launch import TrainArguments, build_lora_config

    assert build_lora_config(TrainArguments()) is None
    config = build_lora_config(TrainArguments(lora_r=8, lora_alpha=32, lora_dropout=0.1,
                                              lora_target_modules="q_proj, v_proj"))
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 32, 0.1)
    assert set(config.target_modules) == {"q_proj", "v_proj"}
    assert build_lora_config(TrainArguments(lora_r=4)).target_modules.startswith(".*language_model")


def test_train_command_resumes_from_a_checkpoint(tmp_path, capsys):
    from segcompass.commands.train import train_command
    from segcompass.training.grpo_checkpoint import REF_WEIGHTS_NAME

    output_dir = tmp_path / "out"
    argv = ["--tiny", "true", "--output_dir", str(output_dir), "--max_steps", "2", "--num_generations", "2",
            "--per_device_train_batch_size", "2", "--max_completion_length", "4", "--use_cpu", "true",
            "--bf16", "false", "--gradient_checkpointing", "false", "--max_train_samples", "2",
            "--synthetic_image_size", "64", "--report_to", "none", "--save_strategy", "steps", "--save_steps", "1",
            "--sft_steps", "1"]
    assert train_command(argv) == 0
    assert (output_dir / "checkpoint-1" / REF_WEIGHTS_NAME).is_file()  # the warmed-up KL anchor is kept
    capsys.readouterr()
    assert train_command([*argv, "--resume_from_checkpoint", str(output_dir / "checkpoint-1")]) == 0
    out = capsys.readouterr().out
    assert "warm-up is skipped" in out and "GRPO: 2 steps" in out
