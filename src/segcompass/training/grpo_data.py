"""The dataset side of SegCompass GRPO: the columns the trainer needs, their check before TRL sees them, the prompt
column, and the ground-truth targets of a rollout batch.

Dataset columns: ``prompt`` (conversational, one ``{"type": "image"}`` part; :func:`prepare_grpo_dataset` builds it
from ``instruction``), ``image``, ``masks`` (the SegCompass schema: list of COCO RLE at the image's resolution,
``[]`` for no target) and optionally ``no_target``. The masks are read by :mod:`.targets` only.

Imports no ``trl``: the trainer module does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .targets import ground_truth_on_grid, image_hw, mask_hw, mask_items

if TYPE_CHECKING:
    from ..processing_segcompass import SegCompassProcessor

__all__ = [
    "REQUIRED_COLUMNS",
    "is_conversational_prompt",
    "prepare_grpo_dataset",
    "rollout_targets",
    "validate_grpo_dataset",
]

REQUIRED_COLUMNS = ("prompt", "image", "masks")


def is_conversational_prompt(prompt: Any) -> bool:
    """Whether TRL treats ``prompt`` as conversational: a list whose first message is a dict with a ``role`` (the
    rule of ``trl.data_utils.is_conversational`` for the ``prompt`` key; an empty list is not conversational)."""
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict) and "role" in prompt[0]


def _check_row(row: dict, where: str) -> None:
    prompt = row.get("prompt")
    if not is_conversational_prompt(prompt):
        raise ValueError(
            f"{where}: `prompt` must be a conversational list of messages ([{{'role': 'user', 'content': [...]}}]), "
            f"got {type(prompt).__name__}. Build it with `prepare_grpo_dataset(dataset, processor)`."
        )
    image_size = image_hw(row.get("image"), where)
    for j, item in enumerate(mask_items(row.get("masks"), where)):
        size = mask_hw(item, f"{where} masks[{j}]")
        if size != image_size:
            raise ValueError(
                f"{where}: masks[{j}] has size {size} (H, W) but the image is {image_size}. Ground-truth masks must "
                "be at the image's original resolution: re-encode them at the image size, or fix the image."
            )


def validate_grpo_dataset(dataset, name: str = "train_dataset", max_rows: int | None = 256) -> None:
    """Check a GRPO dataset before TRL sees it: not empty, columns ``prompt``, ``image``, ``masks`` present,
    conversational prompts, and masks at each image's size (first ``max_rows`` rows; ``None``: all).

    Raises:
        ValueError: naming the dataset, the problem and the fix.
    """
    if dataset is None:
        raise ValueError(f"`{name}` is None; pass a datasets.Dataset with columns {list(REQUIRED_COLUMNS)}.")
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            hint = (" Build `prompt` from the `instruction` column with `prepare_grpo_dataset(dataset, processor)`."
                    if "prompt" in missing and "instruction" in columns else "")
            raise ValueError(
                f"`{name}` is missing the column(s) {missing} (it has {list(columns)}); SegCompass GRPO needs "
                f"{list(REQUIRED_COLUMNS)} (+ optional `no_target`).{hint}"
            )
    if not hasattr(dataset, "__len__"):
        return  # an IterableDataset: rows are checked as they are used
    if len(dataset) == 0:
        raise ValueError(f"`{name}` is empty (0 rows); pass a dataset with at least one sample.")
    count = len(dataset) if max_rows is None else min(len(dataset), max_rows)
    for i in range(count):
        _check_row(dataset[i], f"{name}[{i}]")


def prepare_grpo_dataset(dataset, processor: SegCompassProcessor, instruction_column: str = "instruction"):
    """Add the conversational ``prompt`` column TRL needs (the processor's prompt template around each
    ``instruction``, one image placeholder that TRL fills from the ``image`` column). Other columns are kept.

    Returns:
        the mapped ``datasets.Dataset``.
    """
    columns = getattr(dataset, "column_names", None) or []
    if instruction_column not in columns:
        raise ValueError(
            f"The dataset has no `{instruction_column}` column (columns {columns}); pass `instruction_column=` naming "
            "the column that holds the referring expression / question."
        )

    def to_prompt(row):
        return {"prompt": processor.build_messages(row[instruction_column])}

    return dataset.map(to_prompt, desc="SegCompass GRPO prompts")


def _same_masks(a: Any, b: Any) -> bool:
    """Whether two rows' ``masks`` are the same annotation (identity, or equal RLE lists)."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):  # arrays / tensors: ambiguous truth value
        return False


def rollout_targets(rows: Sequence[dict], grid: tuple[int, int]) -> list[torch.Tensor]:
    """Ground truth of a rollout batch on the mask grid: one ``(G_b, m, m)`` float32 tensor per row
    (:func:`ground_truth_on_grid`). The G rollouts of a prompt are consecutive rows: their masks are decoded once.

    Raises:
        ValueError: a row without the :data:`REQUIRED_COLUMNS`, or masks that are not at the image's size.
    """
    for i, row in enumerate(rows):
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"batch row {i} lacks the column(s) {missing}; SegCompass GRPO needs "
                             f"{list(REQUIRED_COLUMNS)}.")
    targets, previous = [], None
    for i, row in enumerate(rows):
        size = image_hw(row["image"], f"row {i}")
        if previous is None or previous[0] != size or not _same_masks(previous[1], row["masks"]):
            previous = (size, row["masks"], ground_truth_on_grid(row["masks"], size, grid, f"row {i}"))
        targets.append(previous[2])
    return targets
