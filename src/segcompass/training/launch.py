"""The library side of ``segcompass train`` (the command itself is :mod:`segcompass.commands.train`): supervised
warm-up (optional) + GRPO with [`SegCompassGRPOTrainer`].

:class:`TrainArguments` holds the model, data and warm-up options; :func:`build_trainer` loads model, processor,
data and LoRA configuration into a trainer, :func:`run_warmup` runs the supervised warm-up and
:func:`resume_target` reads ``--resume_from_checkpoint``. The GRPO options are the fields of
[`SegCompassGRPOConfig`] (every GRPO / ``TrainingArguments`` field). The trained model and processor are saved
into ``output_dir`` (``AutoModel.from_pretrained(output_dir)`` after ``import segcompass``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..utils.logging import get_logger

logger = get_logger(__name__)

__all__ = ["DEFAULT_LORA_TARGET_MODULES", "TrainArguments", "build_lora_config", "build_trainer",
           "load_training_dataset", "resume_target", "run_warmup"]

DEFAULT_LORA_TARGET_MODULES = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class TrainArguments:
    """Model, data and warm-up options of ``segcompass train`` (GRPO options live in SegCompassGRPOConfig)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "SegCompass checkpoint directory (model + processor) to start from (or "
                                        "--tiny)."}
    )
    tiny: bool = field(
        default=False, metadata={"help": "Start from a tiny random checkpoint written to OUTPUT_DIR/init (demo)."}
    )
    train_data: str = field(
        default="synthetic",
        metadata={"help": "'synthetic', a save_to_disk directory, a .json/.jsonl/.parquet file, or a registered "
                          "dataset name (refcoco, grefcoco, reasonseg, ...) with --data_dir."},
    )
    data_dir: str | None = field(default=None, metadata={"help": "Data directory of a registered dataset."})
    data_split: str = field(default="train", metadata={"help": "Split to train on."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use the first N rows (None: every row; synthetic: generate N rows, None "
                                        "means 64)."}
    )
    synthetic_image_size: int = field(default=128, metadata={"help": "Image side of the synthetic dataset."})
    instruction_column: str = field(default="instruction", metadata={"help": "Column holding the instruction."})
    sft_steps: int = field(default=0, metadata={"help": "Supervised warm-up steps before GRPO (format + seg losses)."})
    sft_batch_size: int = field(default=2, metadata={"help": "Rows per supervised warm-up step."})
    sft_generated_share: float = field(
        default=0.0, metadata={"help": "Share of each warm-up batch whose mask path sees the model's own generated "
                                       "reasoning (no LM loss on those rows)."}
    )
    sft_learning_rate: float | None = field(
        default=None, metadata={"help": "Warm-up base learning rate (None: --learning_rate); the per-component "
                                        "multipliers apply."}
    )
    lora_r: int = field(
        default=0, metadata={"help": "LoRA rank on the backbone (0: off, full fine-tuning). The saved model is merged; "
                                     "the adapter alone goes to OUTPUT_DIR/adapter."}
    )
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default=DEFAULT_LORA_TARGET_MODULES,
        metadata={"help": "Modules to adapt: a regex over full module names (the default matches the language "
                          "model's attention and MLP projections) or a comma-separated list of module names."},
    )


def load_training_dataset(cli: TrainArguments):
    """The raw training rows (SegCompass schema) named by ``cli.train_data``."""
    import datasets

    source = cli.train_data
    if source == "synthetic":
        from ..data.synthetic import SyntheticConfig, build_synthetic_dataset

        count = cli.max_train_samples or 64
        config = SyntheticConfig(image_size=cli.synthetic_image_size)
        return build_synthetic_dataset(cli.data_split, count, config=config)
    path = Path(source)
    if path.is_dir():
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            if cli.data_split not in data:
                raise ValueError(f"{source} has splits {list(data)}; pass --data_split with one of them.")
            data = data[cli.data_split]
    elif path.suffix in (".json", ".jsonl", ".parquet", ".csv"):
        kind = {".jsonl": "json"}.get(path.suffix, path.suffix[1:])
        data = datasets.load_dataset(kind, data_files=str(path), split="train")
    else:
        from ..data.loaders import load_segmentation_dataset

        if cli.data_dir is None:
            raise ValueError(
                f"--train_data {source!r} is neither 'synthetic', a directory nor a data file; for a registered "
                "dataset name also pass --data_dir."
            )
        data = load_segmentation_dataset(source, cli.data_dir, cli.data_split)
    if cli.max_train_samples is not None:
        data = data.select(range(min(cli.max_train_samples, len(data))))
    return data


def build_lora_config(cli: TrainArguments):
    """The ``peft.LoraConfig`` of ``--lora_r`` / ``--lora_alpha`` / ``--lora_dropout`` / ``--lora_target_modules``,
    or None when ``lora_r`` is 0."""
    if not cli.lora_r:
        return None
    if cli.lora_r < 0:
        raise ValueError(f"--lora_r must be >= 0 (0 disables LoRA), got {cli.lora_r}.")
    from peft import LoraConfig

    targets: str | list[str] = cli.lora_target_modules.strip()
    if "," in targets:
        targets = [name.strip() for name in targets.split(",") if name.strip()]
    return LoraConfig(r=cli.lora_r, lora_alpha=cli.lora_alpha, lora_dropout=cli.lora_dropout,
                      target_modules=targets, bias="none")


def _load_model(cli: TrainArguments, output_dir: str):
    from ..modeling_segcompass import SegCompassForReasoningSegmentation
    from ..processing_segcompass import SegCompassProcessor

    if cli.tiny:
        from ..from_scratch import save_random_checkpoint

        init_dir = Path(output_dir) / "init"
        save_random_checkpoint(init_dir)
        source = str(init_dir)
    elif cli.model_name_or_path:
        source = cli.model_name_or_path
    else:
        raise ValueError("Pass --model_name_or_path DIR (a SegCompass checkpoint) or --tiny.")
    # fp32 master weights whatever dtype the checkpoint was saved in (transformers 5 loads "auto", so a bf16
    # checkpoint would train with pure-bf16 AdamW, which the trainer refuses); --bf16 turns on bf16 autocast compute.
    import torch

    model = SegCompassForReasoningSegmentation.from_pretrained(source, dtype=torch.float32)
    return model, SegCompassProcessor.from_pretrained(source)


def build_trainer(cli: TrainArguments, args):
    """The [`SegCompassGRPOTrainer`] of ``segcompass train`` and the raw training rows (for the warm-up).

    Loads the model and processor (``cli.tiny`` writes a tiny random checkpoint to ``args.output_dir/init``), the
    dataset named by ``cli.train_data`` (prepared for GRPO unless it already has a ``prompt`` column) and the LoRA
    configuration of ``cli`` (if any).
    """
    from .grpo_data import prepare_grpo_dataset
    from .grpo_trainer import SegCompassGRPOTrainer

    model, processor = _load_model(cli, args.output_dir)
    raw = load_training_dataset(cli)
    dataset = prepare_grpo_dataset(raw, processor, cli.instruction_column) if "prompt" not in raw.column_names \
        else raw
    trainer = SegCompassGRPOTrainer(model, args=args, train_dataset=dataset, processing_class=processor,
                                    peft_config=build_lora_config(cli))
    return trainer, raw


def resume_target(resume_from_checkpoint):
    """``--resume_from_checkpoint`` as ``Trainer.train`` takes it: ``True`` for "true"/"last" (the last
    ``checkpoint-*`` in ``output_dir``), ``None`` for "false"/"none"/"", otherwise the value (a checkpoint path)."""
    resume = resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        return True
    if isinstance(resume, str) and resume.lower() in ("false", "none", ""):
        return None
    return resume


def run_warmup(trainer, raw, cli: TrainArguments, args) -> list[dict]:
    """The supervised warm-up of ``cli.sft_steps`` steps before GRPO; returns its per-step history."""
    return trainer.supervised_warmup(
        raw, num_steps=cli.sft_steps, batch_size=cli.sft_batch_size,
        learning_rate=cli.sft_learning_rate if cli.sft_learning_rate is not None else args.learning_rate,
        seed=args.seed, generated_share=cli.sft_generated_share,
        max_new_tokens=args.max_completion_length or 256,
    )
