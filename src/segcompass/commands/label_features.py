"""``segcompass label-features``: build the feature dictionary of a model's SAE, so every concept has a readable label.

Runs :func:`segcompass.interpret.features.build_feature_dictionary` over a dataset split and writes
``feature_dictionary.json`` + ``feature_crops.safetensors`` (:mod:`segcompass.sae.feature_dictionary`) into
``--output-dir``, by default the model's own directory, where ``from_pretrained`` finds them. Prints a one-line
summary and the 10 most frequent labelled features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._args import CommandError, command, resolve_model

__all__ = ["LabelFeaturesArguments", "label_features_command"]


def _dataset_help() -> str:
    from ..evaluation import available_datasets

    names = sorted({*available_datasets(), "synthetic"})  # "synthetic" is registered when the command runs
    return f"Registered dataset name ({', '.join(names)})."


@dataclass
class LabelFeaturesArguments:
    """Options of ``segcompass label-features``."""

    model: str | None = field(
        default=None, metadata={"help": "SegCompass checkpoint directory (default: the embedded model)."}
    )
    dataset: str = field(default="synthetic", metadata={"help": _dataset_help})
    split: str = field(default="train", metadata={"help": "Split name."})
    data_dir: str | None = field(default=None, metadata={"help": "Benchmark root directory (not for synthetic)."})
    num_samples: int | None = field(default=512, metadata={"help": "Use the first N rows."})
    batch_size: int = field(default=8, metadata={"help": "Rows per forward."})
    top_tokens: int = field(default=5, metadata={"help": "Text tokens kept per feature."})
    top_cells: int = field(default=4, metadata={"help": "Image cells (with crops) kept per feature."})
    crop_size: int = field(default=8, metadata={"help": "Side of the stored image-cell crops in pixels."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Where to write feature_dictionary.json (default: the model directory)."}
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda when available)."})


@command("label-features", (LabelFeaturesArguments,))
def label_features_command(args: LabelFeaturesArguments) -> int:
    from pathlib import Path

    import torch
    from transformers import AutoModel, AutoProcessor

    from ..evaluation.datasets import load_evaluation_dataset
    from ..interpret.features import build_feature_dictionary

    if args.output_dir is None and args.model and not Path(args.model).is_dir():  # never beside a Hub cache copy
        raise CommandError(f"--model {args.model} is not a local directory, so the dictionary cannot go beside it; "
                           "pass --output-dir.")
    model_path = resolve_model(args.model)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModel.from_pretrained(model_path).to(device).eval()
    processor = AutoProcessor.from_pretrained(model_path)
    if not hasattr(model, "sae"):
        raise CommandError(f"--model {model_path} is a {type(model).__name__}, not a SegCompass model with an SAE.")
    loader = {}
    if args.dataset == "synthetic":  # scenes at the model's SAM input size, as the evaluation runner draws them
        loader["image_size"] = int(model.config.sam_config.vision_config.image_size)
    dataset = load_evaluation_dataset(args.dataset, args.data_dir, args.split, args.num_samples, loader)
    dictionary = build_feature_dictionary(model, processor, dataset, num_samples=args.num_samples,
                                          top_tokens=args.top_tokens, top_cells=args.top_cells,
                                          crop_size=args.crop_size, batch_size=args.batch_size,
                                          dataset_name=args.dataset, split=args.split)
    output_dir = Path(args.output_dir or model_path)
    dictionary.save(output_dir)
    alive = sum(entry.label is not None for entry in dictionary.features)
    labelled = len(dictionary.most_frequent(dictionary.d_sae))
    print(f"{alive} of {dictionary.d_sae} features fired over {dictionary.num_samples} {args.dataset}/{args.split} "
          f"samples ({dictionary.num_tokens} tokens), {labelled} labelled; wrote {output_dir / 'feature_dictionary.json'}")
    for j in dictionary.most_frequent(10):
        entry = dictionary[j]
        words = ", ".join(f"{token} {count}" for token, count in entry.top_text_tokens)
        print(f"  f{j}: {entry.label}  (fires on {entry.frequency:.1%} of tokens, mean {entry.mean_activation:.2f}; "
              f"{words or 'no text tokens'})")
    return 0
