"""GRPO training of SegCompass with the Python API: supervised warm-up for the format, then GRPO with masks in the
rewards and the segmentation losses in the same backward.

    python examples/train_grpo.py --tiny --output_dir runs/grpo-tiny          # offline, CPU, under a minute
    python examples/train_grpo.py --model path/to/segcompass --output_dir runs/grpo --num_samples 2000

Prints the warm-up losses (first -> last step) and the GRPO rewards averaged over its steps. The format reward is
the share of rollouts that answer as ``<think>...</think><REF_POS>``: a random model never does, after the warm-up
a good share do (about 0.5 to 1 for the tiny demo); the mask reward (the rollouts' IoU) stays low after so few steps.
A model under 50 M parameters runs on one CPU thread (``segcompass.utils.runtime.threads_for``).

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
from segcompass.utils.runtime import threads_for, torch_threads


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="SegCompass checkpoint directory (model + processor).")
    parser.add_argument("--tiny", action="store_true", help="Start from a tiny random checkpoint (demo).")
    parser.add_argument("--output_dir", required=True, help="Where the trained model and processor are saved.")
    parser.add_argument("--num_samples", type=int, default=16, help="Synthetic training rows.")
    parser.add_argument("--image_size", type=int, default=64, help="Side of the synthetic images.")
    parser.add_argument("--sft_steps", type=int, default=100, help="Supervised warm-up steps (format + masks).")
    parser.add_argument("--grpo_steps", type=int, default=4, help="GRPO steps.")
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
    with torch_threads(threads_for(model.num_parameters())):  # restored afterwards
        train(model, processor, args)


def train(model, processor, args):
    """Supervised warm-up, then GRPO; prints what each did."""
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
        activation_checkpointing=not args.tiny,  # saves memory on a large model, only slows a tiny one
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
        print(f"warm-up: {len(history)} steps, seg loss {history[0]['seg']:.3f} -> {history[-1]['seg']:.3f}, "
              f"lm loss {history[0]['lm']:.3f} -> {history[-1]['lm']:.3f}")
    result = trainer.train()
    logged = [e for e in trainer.state.log_history if "rewards/format_reward/mean" in e]
    if logged:
        def mean(key):
            return sum(e[key] for e in logged) / len(logged)

        print(f"GRPO: {result.global_step} steps, loss {result.training_loss:.4f}; mean over the steps: format reward "
              f"{mean('rewards/format_reward/mean'):.2f}, mask reward {mean('rewards/mask_reward/mean'):.2f}, rollout "
              f"IoU {mean('seg/rollout_iou'):.2f}")
    trainer.save_model(args.output_dir)  # full SegCompass model + processor: AutoModel.from_pretrained(output_dir)
    print(f"model and processor saved to {args.output_dir}")


if __name__ == "__main__":
    main()
