"""``segcompass train``: supervised warm-up (optional) + GRPO training of a SegCompass model.

    segcompass train --config grpo.yaml                       # every option from YAML (flags override it)
    segcompass train --tiny --output-dir runs/grpo-tiny --max-steps 2 --num-generations 2 \\
        --per-device-train-batch-size 4 --max-completion-length 16 --use-cpu true --sft-steps 4

    segcompass train --tiny --output-dir runs/grpo-lora --lora-r 16 --lora-alpha 32 ...   # LoRA on the LM
    segcompass train ... --save-strategy steps --save-steps 100 --resume-from-checkpoint true  # resume the last

Options are the fields of :class:`segcompass.training.launch.TrainArguments` (model, data, warm-up) and of
[`SegCompassGRPOConfig`] (every GRPO / ``TrainingArguments`` field); underscores or dashes. ``--help`` shows the
options people change first (:func:`first_options`), ``--help-all`` all of them. The trained model and processor are
saved into ``--output-dir``; prints the warm-up and GRPO losses.
"""

from __future__ import annotations

from ._args import CommandError, command

__all__ = ["train_command"]


def _arguments():
    from ..training.grpo_config import SegCompassGRPOConfig
    from ..training.launch import TrainArguments

    return TrainArguments, SegCompassGRPOConfig


def first_options() -> dict[str, list[str]]:
    """What ``segcompass train --help`` shows, by group: the options people change first, and every field
    SegCompassGRPOConfig adds to TRL's GRPOConfig (``--help-all`` lists the rest)."""
    import dataclasses

    from trl import GRPOConfig

    from ..training.grpo_config import SegCompassGRPOConfig

    inherited = {f.name for f in dataclasses.fields(GRPOConfig)}
    return {
        "model, data and output": ["model_name_or_path", "tiny", "train_data", "data_dir", "data_split",
                                   "max_train_samples", "output_dir"],
        "steps and optimisation": ["max_steps", "num_train_epochs", "per_device_train_batch_size",
                                   "gradient_accumulation_steps", "learning_rate", "warmup_steps", "seed", "use_cpu",
                                   "bf16", "activation_checkpointing"],
        "GRPO rollouts": ["num_generations", "max_completion_length", "beta", "epsilon"],
        "supervised warm-up (before GRPO)": ["sft_steps", "sft_batch_size", "sft_learning_rate",
                                             "sft_generated_share"],
        "LoRA": ["lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"],
        "logging and checkpoints": ["logging_steps", "report_to", "save_strategy", "save_steps",
                                    "resume_from_checkpoint"],
        "SegCompass losses, learning-rate groups and schedule": [
            f.name for f in dataclasses.fields(SegCompassGRPOConfig) if f.name not in inherited],
    }


@command("train", _arguments, first_options=first_options)
def train_command(cli, args) -> int:
    from ..training.launch import build_trainer, resume_target, run_warmup

    if args.output_dir is None:
        raise CommandError("pass --output_dir (where the trained model is saved).")
    trainer, raw = build_trainer(cli, args)
    resume = resume_target(args.resume_from_checkpoint)
    if cli.sft_steps and resume:
        print("resuming from a checkpoint: the supervised warm-up is skipped (its weights are in the checkpoint)")
    elif cli.sft_steps:
        history = run_warmup(trainer, raw, cli, args)
        first, last = history[0], history[-1]
        print(f"warm-up: {len(history)} steps, loss {first['loss']:.4g} -> {last['loss']:.4g} "
              f"(seg {first['seg']:.4g} -> {last['seg']:.4g}, lm {first['lm']:.4g} -> {last['lm']:.4g})")
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(args.output_dir)
    print(f"GRPO: {result.global_step} steps, train loss {result.training_loss:.4g}")
    print(f"model and processor saved to {args.output_dir}")
    return 0
