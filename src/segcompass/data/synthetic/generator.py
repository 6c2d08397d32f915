"""Samples and datasets: scene + instruction -> one row of :data:`~segcompass.data.schema.SEGMENTATION_FEATURES`."""

from __future__ import annotations

import io
import os
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import datasets
import numpy as np
from PIL import Image

from ...answer_format import DEFAULT_REF_TOKEN
from ...answer_format import reference_completion as _reference_completion
from ...utils.logging import get_logger
from ...utils.masks import encode_rle
from ..schema import SEGMENTATION_FEATURES
from .config import FAMILIES, SAMPLES_PER_SPLIT_LIMIT, SPLIT_OFFSET_STRIDE, SPLITS, SyntheticConfig, sample_seed
from .scene import Scene, make_scene
from .tasks import FAMILY_FUNCTIONS, Task

logger = get_logger(__name__)

SOURCE = "synthetic"

GENERATOR_VERSION = 1
"""Bumped whenever the same (seed, config) would produce different samples; part of cache directory names."""

DEFAULT_NUM_SAMPLES: dict[str, int] = {"train": 10_000, "validation": 500, "test": 500}

REF_TOKEN = DEFAULT_REF_TOKEN


@dataclass(frozen=True, eq=False)
class SyntheticExample:
    """A generated sample with its provenance: the schema ``row`` (image as PIL), the ``scene`` it was drawn on
    (shapes with kind, colour, size, visible masks, centroids, areas) and the evaluated ``task``."""

    seed: int
    scene: Scene
    task: Task
    row: dict[str, Any]


def _identify(seed: int, config: SyntheticConfig) -> tuple[str, str]:
    """(split, sample_id) implied by the seed rule of :func:`~.config.sample_seed`; ``("", "synthetic-{seed}")``
    for a seed outside every split's range."""
    base_and_offset, index = divmod(seed, SAMPLES_PER_SPLIT_LIMIT)
    base, offset = divmod(base_and_offset, SPLIT_OFFSET_STRIDE)
    for split, split_offset in config.split_offsets.items():
        if split_offset == offset:
            prefix = "synthetic" if base == 0 else f"synthetic-s{base}"
            return split, f"{prefix}-{split}-{index:06d}"
    return "", f"synthetic-{seed}"


def _draw_task(seed: int, config: SyntheticConfig) -> tuple[Scene, Task]:
    """Choose no-target and family from the seed's stream, then draw scenes until the family yields a task.

    The family function gets a generator re-seeded identically on every attempt, so its scene-independent
    choices (sub-template, attribute, side, ...) are fixed per sample: sub-templates that need rarer scenes are
    not crowded out by easy ones, they just take more scene draws. After half of ``max_attempts`` the choices
    are redrawn on every attempt too, so a sub-template the config makes impossible (e.g. "nearest", which
    needs three shapes, with ``max_shapes=2``) cannot exhaust the attempts.
    """
    rng = np.random.default_rng(seed)
    no_target = bool(rng.random() < config.no_target_fraction)
    weights = config.normalized_family_weights()
    family = FAMILIES[int(rng.choice(len(FAMILIES), p=[weights[f] for f in FAMILIES]))]
    choice_seed = int(rng.integers(2**63))
    for attempt in range(config.max_attempts):
        scene = make_scene(rng, config)
        choice_rng = np.random.default_rng(choice_seed) if attempt < config.max_attempts // 2 else rng
        task = FAMILY_FUNCTIONS[family](scene, choice_rng, no_target)
        if task is not None:
            return scene, task
    raise RuntimeError(
        f"seed {seed}: no scene in {config.max_attempts} attempts supported a {family!r} instruction "
        f"(no_target={no_target}); raise max_attempts or max_shapes, or lower that family's weight."
    )


def generate_example(
    seed: int, config: SyntheticConfig | None = None, *, split: str | None = None, sample_id: str | None = None
) -> SyntheticExample:
    """Generate one sample with its scene and task. Same ``seed`` and ``config`` -> identical output.

    ``split`` and ``sample_id`` default to what the seed rule implies (see :func:`~.config.sample_seed`), e.g.
    seed ``2 * 10**9 + 123`` -> ``("test", "synthetic-test-000123")``; ``image_id`` is ``"synthetic-{seed}"``.
    """
    config = config or SyntheticConfig()
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative int.")
    seed = int(seed)
    implied_split, implied_id = _identify(seed, config)
    scene, task = _draw_task(seed, config)
    image_id = f"synthetic-{seed}"
    targets = [scene.shapes[i] for i in task.targets]
    row = {
        "image": Image.fromarray(scene.image),
        "instruction": task.instruction,
        "masks": [encode_rle(s.mask) for s in targets],
        "ignore_mask": None,
        "no_target": task.no_target,
        "boxes": [list(s.bbox) for s in targets],
        "height": scene.image_size,
        "width": scene.image_size,
        "reasoning": task.reasoning,
        "image_id": image_id,
        "sample_id": sample_id if sample_id is not None else implied_id,
        "instance_ids": [f"{image_id}-{s.index}" for s in targets],
        "split": split if split is not None else implied_split,
        "source": SOURCE,
    }
    return SyntheticExample(seed=seed, scene=scene, task=task, row=row)


def generate_sample(
    seed: int, config: SyntheticConfig | None = None, *, split: str | None = None, sample_id: str | None = None
) -> dict[str, Any]:
    """One schema row (``image`` as a PIL image) for ``seed``; see :func:`generate_example`."""
    return generate_example(seed, config, split=split, sample_id=sample_id).row


def reference_completion(sample: Mapping[str, Any], ref_token: str = REF_TOKEN) -> str:
    """The reference policy output for a sample: ``<think>{reasoning}</think>{ref_token}`` (paper App. B.3;
    :func:`segcompass.answer_format.reference_completion`)."""
    return _reference_completion(sample.get("reasoning") or "", ref_token, sample_id=str(sample.get("sample_id", "?")))


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}; pass one of them.")


def _check_num_samples(num_samples: Any) -> None:
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 0:
        raise ValueError(f"num_samples={num_samples!r} must be a non-negative int.")
    if num_samples > SAMPLES_PER_SPLIT_LIMIT:
        raise ValueError(
            f"num_samples={num_samples} is more than one split's seed range holds; pass at most "
            f"{SAMPLES_PER_SPLIT_LIMIT} (or use another seed= for more)."
        )


def build_synthetic_dataset(
    split: str, num_samples: int, *, config: SyntheticConfig | None = None, seed: int = 0
) -> datasets.Dataset:
    """A :class:`datasets.Dataset` of ``num_samples`` rows with ``features=SEGMENTATION_FEATURES``.

    Row ``i`` is :func:`generate_sample` for ``sample_seed(split, i, seed, config)``:
    ``(seed * 1000 + split_offsets[split]) * 10**9 + i``, so train / validation / test never share a scene.
    Images are stored as PNG bytes. ``sample_id`` is ``synthetic-{split}-{i:06d}`` (``synthetic-s{seed}-...``
    for ``seed > 0``); ``image_id`` is ``synthetic-{sample seed}``, unique across splits and seeds.
    """
    config = config or SyntheticConfig()
    _check_split(split)
    _check_num_samples(num_samples)
    start = time.perf_counter()
    rows = []
    for index in range(num_samples):
        row = dict(generate_sample(sample_seed(split, index, seed, config), config, split=split))
        row["image"] = {"bytes": _png_bytes(row["image"]), "path": None}
        rows.append(row)
    dataset = datasets.Dataset.from_list(rows, features=SEGMENTATION_FEATURES) if rows else _empty_dataset()
    logger.info(
        "built %d synthetic %s samples (seed %d, %d px) in %.2f s",
        num_samples,
        split,
        seed,
        config.image_size,
        time.perf_counter() - start,
    )
    return dataset


def _empty_dataset() -> datasets.Dataset:
    return datasets.Dataset.from_dict({name: [] for name in SEGMENTATION_FEATURES}, features=SEGMENTATION_FEATURES)


def load_synthetic(
    data_dir: str | os.PathLike | None = None,
    split: str = "test",
    num_samples: int | None = None,
    seed: int = 0,
    *,
    config: SyntheticConfig | None = None,
    **config_overrides: Any,
) -> datasets.Dataset:
    """Loader with the benchmark loaders' signature (``load_x(data_dir, split, ...)``), for the name ``"synthetic"``.

    Args:
        data_dir: optional cache directory. ``None`` generates in memory every call. Otherwise the dataset is
            saved under ``data_dir/synthetic-v{GENERATOR_VERSION}-{split}-n{num_samples}-seed{seed}-{config
            fingerprint}`` on first use and loaded from there afterwards (nothing else is ever read from it).
        split: ``"train"``, ``"validation"`` or ``"test"``.
        num_samples: rows to generate; default :data:`DEFAULT_NUM_SAMPLES` of the split.
        seed: base seed (see :func:`build_synthetic_dataset`).
        config: a :class:`SyntheticConfig`; ``config_overrides`` (its field names, e.g. ``image_size=64``)
            replace fields of it (or of the default config).
    """
    _check_split(split)
    known = {f.name for f in fields(SyntheticConfig)}
    unknown = sorted(set(config_overrides) - known)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for load_synthetic; SyntheticConfig fields are {sorted(known)}."
        )
    base = config or SyntheticConfig()
    if config_overrides:
        base = SyntheticConfig(**{**{f: getattr(base, f) for f in known}, **config_overrides})
    if num_samples is None:
        num_samples = DEFAULT_NUM_SAMPLES[split]
    _check_num_samples(num_samples)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative int.")
    if data_dir is not None and Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise ValueError(
            f"data_dir={str(data_dir)!r}: {data_dir} is not a directory; pass a folder for the synthetic cache, or "
            "None to generate in memory."
        )
    if data_dir is None:
        return build_synthetic_dataset(split, num_samples, config=base, seed=seed)
    cache = Path(data_dir) / f"synthetic-v{GENERATOR_VERSION}-{split}-n{num_samples}-seed{seed}-{base.fingerprint()}"
    if (cache / "dataset_info.json").is_file():
        logger.info("loading cached synthetic %s split from %s", split, cache)
        return datasets.load_from_disk(str(cache))
    dataset = build_synthetic_dataset(split, num_samples, config=base, seed=seed)
    partial = cache.with_name(cache.name + f".partial-{os.getpid()}")
    dataset.save_to_disk(str(partial))
    if cache.exists():  # another process finished first; keep its copy
        shutil.rmtree(partial, ignore_errors=True)
    else:
        partial.rename(cache)
    return datasets.load_from_disk(str(cache))
