"""``segcompass train``: supervised warm-up (optional) + GRPO with [`SegCompassGRPOTrainer`].

    segcompass train --config grpo.yaml                       # every option from YAML (flags override it)
    segcompass train --tiny --output_dir runs/grpo-tiny --max_steps 2 --num_generations 2 \\
        --per_device_train_batch_size 4 --max_completion_length 16 --use_cpu true --sft_steps 4

Options are the fields of :class:`TrainArguments` (model, data, warm-up) and of
[`SegCompassGRPOConfig`] (every GRPO / ``TrainingArguments`` field), parsed by ``HfArgumentParser``.
The trained model and processor are saved into ``output_dir`` (``AutoModel.from_pretrained(output_dir)`` after
``import segcompass``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..utils.logging import get_logger

logger = get_logger(__name__)

__all__ = ["TrainArguments", "load_training_dataset", "train_command"]


@dataclass
class TrainArguments:
    """Model, data and warm-up options of ``segcompass train`` (GRPO options live in SegCompassGRPOConfig)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "SegCompass checkpoint directory (model + processor) to start from."}
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
        default=None, metadata={"help": "Use the first N rows (synthetic: generate N rows; default 64)."}
    )
    synthetic_image_size: int = field(default=128, metadata={"help": "Image side of the synthetic dataset."})
    instruction_column: str = field(default="instruction", metadata={"help": "Column holding the instruction."})
    sft_steps: int = field(default=0, metadata={"help": "Supervised warm-up steps before GRPO (format + seg losses)."})
    sft_batch_size: int = field(default=2, metadata={"help": "Rows per supervised warm-up step."})
    sft_learning_rate: float | None = field(
        default=None, metadata={"help": "Warm-up base learning rate (default: --learning_rate); multipliers apply."}
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


def _load_model(cli: TrainArguments, output_dir: str):
    from ..modeling_segcompass import SegCompassForReasoningSegmentation
    from ..processing_segcompass import SegCompassProcessor

    if cli.tiny:
        from ..testing import make_tiny_checkpoint

        init_dir = Path(output_dir) / "init"
        make_tiny_checkpoint(init_dir)
        source = str(init_dir)
    elif cli.model_name_or_path:
        source = cli.model_name_or_path
    else:
        raise ValueError("Pass --model_name_or_path DIR (a SegCompass checkpoint) or --tiny.")
    return SegCompassForReasoningSegmentation.from_pretrained(source), SegCompassProcessor.from_pretrained(source)


def train_command(argv: list[str]) -> int:
    """Entry point of ``segcompass train``: parse, warm up (``--sft_steps``), run GRPO, save into ``output_dir``.

    Returns the exit status (0 on success).
    """
    from ..cli import parse
    from .grpo_config import SegCompassGRPOConfig
    from .grpo_trainer import SegCompassGRPOTrainer, prepare_grpo_dataset

    cli, args = parse((TrainArguments, SegCompassGRPOConfig), list(argv), "train")
    if args.output_dir is None:
        raise SystemExit("error: pass --output_dir (where the trained model is saved).")
    try:
        model, processor = _load_model(cli, args.output_dir)
        raw = load_training_dataset(cli)
        dataset = prepare_grpo_dataset(raw, processor, cli.instruction_column) if "prompt" not in raw.column_names \
            else raw
        trainer = SegCompassGRPOTrainer(model, args=args, train_dataset=dataset, processing_class=processor)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    if cli.sft_steps:
        history = trainer.supervised_warmup(
            raw, num_steps=cli.sft_steps, batch_size=cli.sft_batch_size,
            learning_rate=cli.sft_learning_rate if cli.sft_learning_rate is not None else args.learning_rate,
            seed=args.seed,
        )
        first, last = history[0], history[-1]
        print(f"warm-up: {len(history)} steps, loss {first['loss']:.4g} -> {last['loss']:.4g} "
              f"(seg {first['seg']:.4g} -> {last['seg']:.4g}, lm {first['lm']:.4g} -> {last['lm']:.4g})")
    result = trainer.train()
    trainer.save_model(args.output_dir)
    print(f"GRPO: {result.global_step} steps, train loss {result.training_loss:.4g}")
    print(f"model and processor saved to {args.output_dir}")
    return 0
