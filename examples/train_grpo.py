"""GRPO training of SegCompass with the Python API: supervised warm-up for the format, then GRPO with masks in the
rewards and the segmentation losses in the same backward.

    python examples/train_grpo.py --tiny --output_dir runs/grpo-tiny          # offline, CPU, about a minute
    python examples/train_grpo.py --model path/to/segcompass --output_dir runs/grpo --num_samples 2000

The command-line equivalent (every GRPO / TrainingArguments option, YAML or flags) is ``segcompass train``
(see ``segcompass.commands.train`` and ``segcompass.training.launch``).
"""

import argparse
import logging

from segcompass.data.synthetic import SyntheticConfig, build_synthetic_dataset
from segcompass.modeling_segcompass import SegCompassForReasoningSegmentation
from segcompass.processing_segcompass import SegCompassProcessor
from segcompass.training.grpo_config import SegCompassGRPOConfig
from segcompass.training.grpo_data import prepare_grpo_dataset
from segcompass.training.grpo_trainer import SegCompassGRPOTrainer
from segcompass.training.rewards import format_reward, mask_reward


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="SegCompass checkpoint directory (model + processor).")
    parser.add_argument("--tiny", action="store_true", help="Start from a tiny random checkpoint (demo).")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_samples", type=int, default=16, help="Synthetic training rows.")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--sft_steps", type=int, default=100)
    parser.add_argument("--grpo_steps", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)

    if args.tiny:
        from segcompass.from_scratch import save_random_checkpoint

        save_random_checkpoint(f"{args.output_dir}/init")
        source = f"{args.output_dir}/init"
    elif args.model:
        source = args.model
    else:
        parser.error("pass --model DIR or --tiny")
    model = SegCompassForReasoningSegmentation.from_pretrained(source)
    processor = SegCompassProcessor.from_pretrained(source)

    # Rows in the SegCompass schema: image, instruction, masks (COCO RLE), no_target, reasoning, ...
    raw = build_synthetic_dataset("train", args.num_samples, config=SyntheticConfig(image_size=args.image_size))
    train_dataset = prepare_grpo_dataset(raw, processor)  # adds the conversational `prompt` column TRL needs

    config = SegCompassGRPOConfig(  # paper defaults: G=8, beta=0.2, lr 2e-6 (x25 / x80 / x10 heads), one-cycle
        output_dir=args.output_dir,
        max_steps=args.grpo_steps,
        per_device_train_batch_size=4,
        num_generations=2 if args.tiny else 8,
        max_completion_length=16 if args.tiny else 512,
        learning_rate=1e-4 if args.tiny else 2e-6,
        use_cpu=args.tiny,
        bf16=not args.tiny,
        report_to="none",
        save_strategy="no",
    )
    trainer = SegCompassGRPOTrainer(
        model,
        reward_funcs=[format_reward, mask_reward],  # logged as rewards/format_reward/mean, rewards/mask_reward/mean
        args=config,  # reward_weights default to 0.3 / 0.7 for these two
        train_dataset=train_dataset,
        processing_class=processor,
    )
    # Short supervised stage on <think>reasoning</think><REF_POS> targets so GRPO starts with a format signal.
    # The tiny word-level tokenizer splits on whitespace only, so the demo uses short, space-separated targets.
    short = (lambda row: "<think> " + " ".join(row["reasoning"].split()[:8]) + " </think><REF_POS>") if args.tiny \
        else None
    history = trainer.supervised_warmup(raw, num_steps=args.sft_steps, batch_size=4,
                                        learning_rate=1e-3 if args.tiny else 2e-6, completion_fn=short)
    if history:
        logging.info("warm-up seg loss %.3f -> %.3f, lm loss %.3f -> %.3f", history[0]["seg"], history[-1]["seg"],
                     history[0]["lm"], history[-1]["lm"])
    result = trainer.train()
    rewards = [e for e in trainer.state.log_history if "rewards/format_reward/mean" in e]
    if rewards:
        logging.info("GRPO: %d steps, loss %.4f, format reward %.2f, mask reward %.2f, rollout IoU %.2f",
                     result.global_step, result.training_loss, rewards[-1]["rewards/format_reward/mean"],
                     rewards[-1]["rewards/mask_reward/mean"], rewards[-1]["seg/rollout_iou"])
    trainer.save_model(args.output_dir)  # full SegCompass model + processor: AutoModel.from_pretrained(output_dir)


if __name__ == "__main__":
    main()
