"""Instance coverage of the most activated image tokens (paper §4.3, Figure 5): how much of each ground-truth
instance the top-K% image tokens by total SAE activation cover, against K% tokens drawn at random.

Dimension glossary: ``n`` image tokens of one sample, ``P`` fractions, ``(H, W)`` original image size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..utils.logging import get_logger
from ._common import EvalMode, check_values, prepare
from .activations import sample_activations
from .tokens import token_mask_overlap

logger = get_logger(__name__)


def _top_count(fraction: float, n: int) -> int:
    return max(1, min(n, math.ceil(round(fraction * n, 9))))


def instance_coverage(
    model,
    processor,
    samples: Iterable[Mapping[str, Any]],
    fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.4),
    seed: int = 0,
    *,
    random_repeats: int = 10,
    threshold: float = 0.0,
    completions: Sequence[str] | None = None,
) -> dict:
    """Figure 5: how much of each instance the top-K% most activated image tokens cover, vs random K%.

    Image tokens are ranked by their total SAE activation (sum over features with ``|h| >= threshold``); the top
    ``ceil(K * n)`` tokens (at least one) are kept and an instance's coverage is the fraction of its pixels whose
    cell (:func:`patch_index_map`) belongs to a kept token. The baseline keeps the same number of tokens chosen
    uniformly at random (``random_repeats`` draws per instance from ``numpy.random.default_rng(seed)``, averaged).
    Instances are the entries of ``sample["masks"]``; samples without any are skipped.

    Args:
        fractions: the P values of K, in (0, 1].
        seed: seed of the random baseline.

    Returns:
        ``{"fractions": [P], "top_k_coverage": [P], "random_coverage": [P]`` (means over instances, ``None`` when
        there is no instance), ``"per_instance_top_k": [num_instances][P]``, ``"per_instance_random":
        [num_instances][P]``, ``"instance_sample_index": [num_instances]``, ``"num_instances"``,
        ``"num_samples"``, ``"num_skipped_samples"}``.
    """
    fractions = check_values(fractions, "fractions", 0.0, 1.0, low_open=True)
    threshold = check_values([threshold], "threshold", 0.0, math.inf, low_open=False)[0]
    if not isinstance(random_repeats, int) or random_repeats < 1:
        raise ValueError(f"`random_repeats` must be a positive int, got {random_repeats!r}.")
    samples, completions = prepare(model, processor, samples, completions)
    rng = np.random.default_rng(seed)
    top_rows, random_rows, owners, skipped = [], [], [], 0
    with EvalMode(model):
        for index, (sample, completion) in enumerate(zip(samples, completions)):
            if not sample.get("masks"):
                skipped += 1
                continue
            acts = sample_activations(model, processor, sample, completion, index, [threshold], threshold)
            scores = acts["total"][acts["image_positions"]]  # (n,)
            n = len(scores)
            order = np.argsort(-scores, kind="stable")  # (n,) highest first, ties by position
            for mask in acts["instances"]:
                inside, _ = token_mask_overlap(mask, acts["grid"])  # (n,)
                pixels = inside.sum()
                if pixels == 0:
                    continue
                top, rand = [], []
                for fraction in fractions:
                    k = _top_count(fraction, n)
                    top.append(float(inside[order[:k]].sum() / pixels))
                    draws = [inside[rng.permutation(n)[:k]].sum() / pixels for _ in range(random_repeats)]
                    rand.append(float(np.mean(draws)))
                top_rows.append(top)
                random_rows.append(rand)
                owners.append(index)
    top_mean = np.mean(top_rows, axis=0).tolist() if top_rows else None
    random_mean = np.mean(random_rows, axis=0).tolist() if random_rows else None
    logger.info("instance_coverage: %d instances from %d samples (%d skipped)", len(top_rows), len(samples), skipped)
    return {
        "fractions": fractions,
        "top_k_coverage": top_mean,
        "random_coverage": random_mean,
        "per_instance_top_k": top_rows,
        "per_instance_random": random_rows,
        "instance_sample_index": owners,
        "num_instances": len(top_rows),
        "num_samples": len(samples),
        "num_skipped_samples": skipped,
    }
