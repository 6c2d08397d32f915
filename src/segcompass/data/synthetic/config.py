"""Configuration of the synthetic reasoning-segmentation generator."""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Mapping

FAMILIES: tuple[str, ...] = ("attribute_transfer", "spatial", "superlative", "counting", "negation")
"""Instruction families, each evaluated programmatically on the scene (see :mod:`.tasks`)."""

SPLITS: tuple[str, ...] = ("train", "validation", "test")

MIN_IMAGE_SIZE = 48
"""Below this the small shapes are only a few pixels wide and stop being identifiable."""

MAX_SHAPES_LIMIT = 12
"""More shapes than this do not fit on the canvas with the occlusion / spacing rules."""

SPLIT_OFFSET_STRIDE = 1000
"""Split offsets must lie in ``[0, SPLIT_OFFSET_STRIDE)``; see :func:`sample_seed`."""

SAMPLES_PER_SPLIT_LIMIT = 10**9
"""Indices within one (seed, split) must be below this; see :func:`sample_seed`."""


def _default_family_weights() -> dict[str, float]:
    return {family: 1.0 for family in FAMILIES}


def _default_split_offsets() -> dict[str, int]:
    return {"train": 0, "validation": 1, "test": 2}


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the procedural generator.

    Attributes:
        image_size: side ``S`` of the square ``S x S`` RGB image (>= 48).
        min_shapes, max_shapes: inclusive range of the number of shapes per scene (2 <= min <= max <= 12).
        family_weights: relative sampling weight of each instruction family (keys from :data:`FAMILIES`;
            missing families get weight 0). Weights need not sum to one.
        no_target_fraction: probability that a sample's instruction has no referent (``no_target=True``).
        occlusion: allow later shapes to partly cover earlier ones (each instance keeps at least
            ``min_visible_fraction`` of its area visible). When False, shapes never overlap.
        min_visible_fraction: smallest visible fraction of an occluded shape's full area.
        textured_background: when True, about half of the scenes get a lightly noisy background
            (otherwise all backgrounds are plain).
        split_offsets: per-split offset in the seed rule of :func:`sample_seed`; distinct integers in
            ``[0, 1000)``, which keeps the splits' seed ranges disjoint.
        max_attempts: scenes tried per sample before giving up on the chosen family (each failed attempt draws
            a fresh scene from the same random stream, so the outcome stays deterministic).
    """

    image_size: int = 128
    min_shapes: int = 2
    max_shapes: int = 7
    family_weights: Mapping[str, float] = field(default_factory=_default_family_weights)
    no_target_fraction: float = 0.15
    occlusion: bool = True
    min_visible_fraction: float = 0.6
    textured_background: bool = True
    split_offsets: Mapping[str, int] = field(default_factory=_default_split_offsets)
    max_attempts: int = 200

    def __post_init__(self) -> None:
        self._check_types()
        if not isinstance(self.image_size, int) or self.image_size < MIN_IMAGE_SIZE:
            raise ValueError(
                f"image_size={self.image_size!r} is too small: shapes stop being identifiable below "
                f"{MIN_IMAGE_SIZE} px; pass an int image_size >= {MIN_IMAGE_SIZE}."
            )
        if self.min_shapes < 2:
            raise ValueError(
                f"min_shapes={self.min_shapes} < 2: relational instructions need a reference and a target; "
                "pass min_shapes >= 2."
            )
        if self.min_shapes > self.max_shapes:
            raise ValueError(
                f"min_shapes={self.min_shapes} > max_shapes={self.max_shapes}; pass min_shapes <= max_shapes."
            )
        if self.max_shapes > MAX_SHAPES_LIMIT:
            raise ValueError(
                f"max_shapes={self.max_shapes} does not fit on the canvas; pass max_shapes <= {MAX_SHAPES_LIMIT}."
            )
        unknown = sorted(set(self.family_weights) - set(FAMILIES))
        if unknown:
            raise ValueError(f"unknown family name(s) {unknown} in family_weights; use names from {FAMILIES}.")
        if any(w < 0 for w in self.family_weights.values()) or sum(self.family_weights.values()) <= 0:
            raise ValueError(
                f"family_weights={dict(self.family_weights)} must be non-negative with a positive sum; "
                "give at least one family a positive weight."
            )
        if not 0.0 <= self.no_target_fraction <= 1.0:
            raise ValueError(f"no_target_fraction={self.no_target_fraction} is not in [0, 1]; pass a probability.")
        if not 0.2 <= self.min_visible_fraction <= 1.0:
            raise ValueError(
                f"min_visible_fraction={self.min_visible_fraction} is not in [0.2, 1]; below 0.2 occluded shapes "
                "stop being identifiable. Pass a value in [0.2, 1]."
            )
        missing = [s for s in SPLITS if s not in self.split_offsets]
        if missing:
            raise ValueError(f"split_offsets={dict(self.split_offsets)} lacks {missing}; give an offset for {SPLITS}.")
        offsets = list(self.split_offsets.values())
        if len(set(offsets)) != len(offsets) or any(
            not isinstance(o, int) or not 0 <= o < SPLIT_OFFSET_STRIDE for o in offsets
        ):
            raise ValueError(
                f"split_offsets={dict(self.split_offsets)} must be distinct ints in [0, {SPLIT_OFFSET_STRIDE}) "
                "so that the splits' seed ranges stay disjoint."
            )
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts={self.max_attempts} < 1; pass a positive number of attempts.")

    def _check_types(self) -> None:
        """Wrong types raise a ValueError naming the field (a comparison would raise a bare TypeError, a truthy string
        would silently switch a flag on, a NaN weight would reach numpy's sampler)."""

        def is_int(value) -> bool:
            return isinstance(value, numbers.Integral) and not isinstance(value, bool)

        def is_number(value) -> bool:
            return isinstance(value, numbers.Real) and not isinstance(value, bool)

        for name in ("min_shapes", "max_shapes", "max_attempts"):
            if not is_int(getattr(self, name)):
                raise ValueError(f"{name}={getattr(self, name)!r} must be an int.")
        for name in ("no_target_fraction", "min_visible_fraction"):
            if not is_number(getattr(self, name)):
                raise ValueError(f"{name}={getattr(self, name)!r} is not a number; pass a fraction such as 0.5.")
        for name in ("occlusion", "textured_background"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be True or False.")
        weights = self.family_weights
        if not isinstance(weights, Mapping) or not all(is_number(w) and math.isfinite(w) for w in weights.values()):
            raise ValueError(
                f"family_weights={dict(weights) if isinstance(weights, Mapping) else weights!r} must be finite, "
                "non-negative numbers per family name, e.g. {'spatial': 1.0}."
            )
        if not isinstance(self.split_offsets, Mapping):
            raise ValueError(f"split_offsets={self.split_offsets!r} must map each split name to an int offset.")

    def normalized_family_weights(self) -> dict[str, float]:
        """Family probabilities over :data:`FAMILIES` (in that order), summing to one."""
        total = float(sum(self.family_weights.values()))
        return {f: float(self.family_weights.get(f, 0.0)) / total for f in FAMILIES}

    def fingerprint(self) -> str:
        """A short stable hash of every field (used as part of cache directory names)."""
        payload = asdict(self)
        payload["family_weights"] = dict(sorted(dict(self.family_weights).items()))
        payload["split_offsets"] = dict(sorted(dict(self.split_offsets).items()))
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def sample_seed(split: str, index: int, seed: int = 0, config: SyntheticConfig | None = None) -> int:
    """The integer seed of sample ``index`` of ``split``.

    Rule: ``(seed * 1000 + split_offsets[split]) * 10**9 + index``. With the default offsets
    (train 0, validation 1, test 2) and ``seed=0`` that is ``index``, ``10**9 + index`` and ``2 * 10**9 + index``:
    for a given ``seed`` the three splits never share a sample seed (nor an ``image_id``), as long as
    ``index < 10**9``, and different ``seed`` values give disjoint ranges too.
    """
    config = config or SyntheticConfig()
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}; pass one of them.")
    if not 0 <= index < SAMPLES_PER_SPLIT_LIMIT:
        raise ValueError(f"index={index} is outside [0, {SAMPLES_PER_SPLIT_LIMIT}); use fewer samples per split.")
    if seed < 0:
        raise ValueError(f"seed={seed} is negative; pass a non-negative int.")
    return (seed * SPLIT_OFFSET_STRIDE + config.split_offsets[split]) * SAMPLES_PER_SPLIT_LIMIT + index
