"""``segcompass train``: supervised warm-up (optional) + GRPO training of a SegCompass model.

    segcompass train --config grpo.yaml                       # every option from YAML (flags override it)
    segcompass train --tiny --output-dir runs/grpo-tiny --max-steps 2 --num-generations 2 \\
        --per-device-train-batch-size 4 --max-completion-length 16 --use-cpu true --sft-steps 4

    segcompass train --tiny --output-dir runs/grpo-lora --lora-r 16 --lora-alpha 32 ...   # LoRA on the LM
    segcompass train ... --save-strategy steps --save-steps 100 --resume-from-checkpoint true  # resume the last

Options are the fields of :class:`segcompass.training.launch.TrainArguments` (model, data, warm-up) and of
[`SegCompassGRPOConfig`] (every GRPO / ``TrainingArguments`` field); underscores or dashes. The trained model and
processor are saved into ``--output-dir``; prints the warm-up and GRPO losses.
"""

from __future__ import annotations

from ._args import CommandError, command

__all__ = ["train_command"]


def _arguments():
    from ..training.grpo_config import SegCompassGRPOConfig
    from ..training.launch import TrainArguments

    return TrainArguments, SegCompassGRPOConfig


@command("train", _arguments)
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
