"""The recipe's samples (synthetic scenes with dense labels), the auxiliary vision probes, batching and schedules.

Dimension glossary: B batch, T tokens, K slots, m mask grid side, S synthetic image side, D text hidden size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import TinyRecipeConfig
from .distributed import quiet_rank


@dataclass
class Sample:
    image: Any  # PIL image (S, S)
    instruction: str
    completion: str
    masks: np.ndarray  # (G, S, S) bool
    family: str
    sample_id: str
    labels: np.ndarray | None = None  # (3, S, S) int64: colour / kind / size class of every pixel (0 = background)
    centres: list | None = None  # per shape: (x, y, colour, kind, size) of its visible centroid, classes from 0
    shape_attributes: tuple[tuple[str, str, str, str], ...] = ()  # (size, colour, kind, region) per visible shape
    instance_ids: np.ndarray | None = None  # (S, S) uint8: 0 background, i = the i-th visible shape (1-based)

    def instance_masks(self) -> np.ndarray:
        """Every visible shape's mask, target or not: (N, S, S) bool (N = 0 without ``instance_ids``)."""
        if self.instance_ids is None:
            return np.zeros((0, *self.masks.shape[-2:]), dtype=bool)
        count = int(self.instance_ids.max())
        return self.instance_ids[None] == np.arange(1, count + 1)[:, None, None]  # (N, S, S)

    @property
    def no_target(self) -> bool:
        return self.masks.shape[0] == 0


def make_split(split: str, num: int, config: TinyRecipeConfig, desc: str, *, start: int = 0,
               dense: bool = True) -> list[Sample]:
    """Samples ``start .. start + num - 1`` of a synthetic split (base seed ``config.data_seed``), made now and kept.
    ``dense=False`` leaves out the per-pixel class maps (``labels``, 3 × S × S int64 each), which only the vision probes
    read. :class:`LazySplit` is the same samples made on access."""
    split_samples = LazySplit(split, num, config, start=start, dense=dense)
    return [split_samples[i] for i in tqdm(range(num), desc=desc, unit="sample", leave=False, disable=quiet_rank())]


class LazySplit(Sequence):
    """Samples ``start .. start + num - 1`` of a synthetic split, each made again whenever it is indexed and never
    kept: the same samples as :func:`make_split`, in constant memory (a kept sample costs ~0.1 MB, and every rank
    holds the whole list: 120000 kept reasoning-stage samples on each of 2 ranks filled 24 GiB), for loops that read
    each sample a few times (making one takes ~3 ms)."""

    def __init__(self, split: str, num: int, config: TinyRecipeConfig, *, start: int = 0, dense: bool = True):
        from ...data.synthetic import SyntheticConfig

        if num < 0 or start < 0:
            raise ValueError(f"LazySplit needs num >= 0 and start >= 0, got num={num}, start={start}.")
        self.split, self.num, self.config, self.start, self.dense = split, num, config, start, dense
        self.synth = SyntheticConfig(image_size=config.image_size)

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, position: int) -> Sample:
        from ...data.synthetic import generate_example, reference_completion, sample_seed
        from ...utils.masks import decode_rle

        if isinstance(position, slice):
            return [self[i] for i in range(*position.indices(self.num))]
        if not -self.num <= position < self.num:
            raise IndexError(f"sample {position} of a {self.num}-sample split")
        index = self.start + position % self.num
        size = self.config.image_size
        example = generate_example(sample_seed(self.split, index, self.config.data_seed, self.synth), self.synth,
                                   split=self.split)
        row = example.row
        masks = [decode_rle(rle).astype(bool) for rle in row["masks"]]
        stacked = np.stack(masks) if masks else np.zeros((0, size, size), dtype=bool)  # (G, S, S)
        return Sample(row["image"], row["instruction"], reference_completion(row), stacked, example.task.family,
                      row["sample_id"], scene_labels(example.scene, size) if self.dense else None,
                      scene_centres(example.scene),
                      tuple((shape.size, shape.colour, shape.kind, shape.region)
                            for shape in example.scene.shapes if shape.area > 0),
                      scene_instance_ids(example.scene, size))


def scene_labels(scene, size: int) -> np.ndarray:
    """Dense colour / kind / size class maps of every shape in a scene: (3, S, S) int64, 0 = background."""
    from ...data.synthetic import COLOURS, KINDS, SIZES

    labels = np.zeros((3, size, size), dtype=np.int64)
    for shape in scene.shapes:  # instance masks are the visible pixels and pairwise disjoint
        labels[0][shape.mask] = list(COLOURS).index(shape.colour) + 1
        labels[1][shape.mask] = list(KINDS).index(shape.kind) + 1
        labels[2][shape.mask] = list(SIZES).index(shape.size) + 1
    return labels


def scene_instance_ids(scene, size: int) -> np.ndarray:
    """(S, S) uint8 instance map of a scene: 0 background, i for its i-th visible shape (visible masks are disjoint)."""
    ids = np.zeros((size, size), dtype=np.uint8)
    visible = [shape for shape in scene.shapes if shape.area > 0]
    if len(visible) > 255:
        raise ValueError(f"{len(visible)} visible shapes do not fit a uint8 instance map (at most 255).")
    for index, shape in enumerate(visible, start=1):
        ids[shape.mask] = index
    return ids


def scene_centres(scene) -> list[tuple[float, float, int, int, int]]:
    """(x, y, colour, kind, size) of every visible shape: its visible centroid and class indices (from 0)."""
    from ...data.synthetic import COLOURS, KINDS, SIZES

    return [(float(shape.centroid[0]), float(shape.centroid[1]), list(COLOURS).index(shape.colour),
             list(KINDS).index(shape.kind), list(SIZES).index(shape.size)) for shape in scene.shapes if shape.area > 0]


class SceneProbe(torch.nn.Module):
    """Auxiliary dense head on the SAM image embedding (training only, not saved): per-pixel colour, kind and size
    classes on the m × m mask grid. It gives the from-scratch SAM encoder a dense signal so its image keys encode
    what the slot queries ask for."""

    def __init__(self, channels: int, upscale: int = 4, kind_weight: float = 1.0):
        """``kind_weight`` multiplies the kind map's loss (kinds are learnt last; colours first)."""
        super().__init__()
        from ...data.synthetic import COLOURS, KINDS, SIZES

        self.sizes = (len(COLOURS) + 1, len(KINDS) + 1, len(SIZES) + 1)
        self.weights = (1.0, float(kind_weight), 1.0)
        self.upscale = upscale
        self.head = torch.nn.Sequential(
            torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.GELU(),
            torch.nn.Conv2d(channels, sum(self.sizes), 1),
        )

    def loss(self, image_embeddings: torch.Tensor, samples: list[Sample], letterbox_size: int) -> torch.Tensor:
        """image_embeddings (B, C, h, w) -> mean cross-entropy of the three class maps on the (4h, 4w) grid."""
        up = torch.nn.functional.interpolate(image_embeddings, scale_factor=self.upscale, mode="bilinear",
                                             align_corners=False)
        logits = self.head(up)  # (B, sum(sizes), m, m)
        grid = logits.shape[-1]
        targets = torch.from_numpy(np.stack([labels_on_grid(s.labels, grid, letterbox_size) for s in samples]))
        total = logits.new_zeros(())
        for part, target, weight in zip(logits.split(self.sizes, dim=1), targets.unbind(1), self.weights):
            total = total + weight * torch.nn.functional.cross_entropy(part, target)
        return total / sum(self.weights)


class TokenProbe(torch.nn.Module):
    """Auxiliary multi-label head on the backbone's merged image tokens (training only, not saved): which colours,
    kinds, sizes and colour-kind pairs are visible in each token's image cell, and which third of the image (row and
    column, the synthetic instructions' "top" / "left" / ...) the cell is in; and, for the cell holding a shape's
    visible centroid, that shape's colour, kind, size and pair (one token per shape must say what the shape is as a
    whole: a cell that sees only part of an outline cannot tell a circle from a diamond). It gives the from-scratch ViT a dense
    signal, so the image tokens the LM reads already say what is where: Qwen2.5-VL's ViT and LM only have relative
    (rotary) positions, and a tiny LM does not learn absolute image positions from those in a short run."""

    def __init__(self, dim: int, kind_weight: float = 1.0, pos_weight: float = 1.0):
        """``kind_weight`` multiplies the loss of the kind and colour-kind outputs; ``pos_weight`` the positives of
        every output (BCE ``pos_weight``: labels are sparse, an all-negative probe is otherwise a cheap optimum)."""
        super().__init__()
        from ...data.synthetic import COLOURS, KINDS, SIZES

        self.counts = (len(COLOURS), len(KINDS), len(SIZES))
        self.attributes = sum(self.counts) + len(COLOURS) * len(KINDS)
        outputs = 2 * self.attributes + 6  # visible attributes, row third, column third, centred shape
        self.head = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.GELU(), torch.nn.Linear(dim, outputs))
        colours, kinds, _ = self.counts
        weight = torch.ones(outputs)  # kinds are what a small ViT learns last: weigh them up
        for offset in (0, self.attributes + 6):
            weight[offset + colours:offset + colours + kinds] = kind_weight
            weight[offset + sum(self.counts):offset + self.attributes] = kind_weight  # colour-kind pairs
        self.register_buffer("output_weight", weight, persistent=False)
        self.register_buffer("pos_weight", torch.full((outputs,), float(pos_weight)), persistent=False)

    def targets(self, labels: np.ndarray, grid: int, centres: list | None = None) -> torch.Tensor:
        """(3, S, S) class maps (+ shape centres) -> (grid * grid, outputs) multi-hot, cells in raster order (as
        Qwen's tokens)."""
        colours, kinds, sizes = self.counts
        size = labels.shape[-1]
        edges = np.linspace(0, size, grid + 1).round().astype(int)
        rows = []
        for r in range(grid):
            for c in range(grid):
                cell = labels[:, edges[r]:edges[r + 1], edges[c]:edges[c + 1]].reshape(3, -1)
                target = np.zeros(2 * self.attributes + 6, dtype=np.float32)
                target[self.attributes + min(2, 3 * r // grid)] = 1.0  # the cell's row third (from its index)
                target[self.attributes + 3 + min(2, 3 * c // grid)] = 1.0  # the cell's column third
                on = cell[0] > 0
                if on.sum() >= 3:
                    for value, offset in ((cell[0], 0), (cell[1], colours), (cell[2], colours + kinds)):
                        ids, n = np.unique(value[on], return_counts=True)
                        target[offset + ids[n >= 3] - 1] = 1.0
                    pairs, n = np.unique((cell[0][on] - 1) * kinds + cell[1][on] - 1, return_counts=True)
                    target[sum(self.counts) + pairs[n >= 3]] = 1.0
                rows.append(target)
        centre = self.attributes + 6
        for x, y, colour, kind, shape_size in centres or []:
            cell = min(grid - 1, int(y * grid / size)) * grid + min(grid - 1, int(x * grid / size))
            for index in (colour, colours + kind, colours + kinds + shape_size,
                          sum(self.counts) + colour * kinds + kind):
                rows[cell][centre + index] = 1.0
        return torch.from_numpy(np.stack(rows))

    def loss(self, features: list[torch.Tensor], samples: list[Sample]) -> torch.Tensor:
        """BCE of the probe on the merged image tokens of one image per sample: B × (g*g, D)."""
        logits = self.head(torch.cat(features))  # (B*g*g, outputs)
        grids = [int(math.isqrt(int(f.shape[0]))) for f in features]
        targets = torch.cat([self.targets(s.labels, g, s.centres) for s, g in zip(samples, grids)])
        return torch.nn.functional.binary_cross_entropy_with_logits(
            logits, targets, weight=self.output_weight, pos_weight=self.pos_weight)


class PositionProbe(torch.nn.Module):
    """Auxiliary head on the backbone's merged image tokens (training only, not saved): each token's absolute cell (its
    row and its column of the g x g token grid, a cross-entropy over g classes each) and, on the token whose cell holds
    a shape's visible centroid, that centroid's absolute x and y in 2g bins each. Qwen2.5-VL's ViT and LM see only
    relative (rotary) positions; on the stop-28 model a ridge probe reads a centroid's offset inside its 16 px cell
    from the token (R² 0.74, 1.8 px mean error) but its absolute position only to ~9 px, about the margin of the
    synthetic "closest to the ... edge" decisions the model gets wrong.

    Args:
        dim (`int`): the merged tokens' width. grid (`int`): g, tokens per side.
    """

    def __init__(self, dim: int, grid: int):
        super().__init__()
        if grid < 1:
            raise ValueError(f"PositionProbe needs a token grid of at least 1 x 1, got grid={grid}.")
        self.grid = grid
        self.head = torch.nn.Linear(dim, 6 * grid)  # row (g), column (g), centroid x (2g), centroid y (2g)

    def loss(self, features: list[torch.Tensor], samples: list[Sample]) -> torch.Tensor:
        """Mean of the cross-entropies on B × (g*g, D) merged tokens (cells in raster order, as Qwen's): row and
        column, and centroid x and y when the samples have shapes."""
        g = self.grid
        for f in features:
            if f.shape[0] != g * g:
                raise ValueError(f"PositionProbe(grid={g}) reads {g * g} merged tokens per image, got {f.shape[0]}; "
                                 "build it with the backbone's token grid (backbone_image_side // 28).")
        logits = self.head(torch.cat(features))  # (B*g*g, 6g)
        cells = torch.arange(g * g, device=logits.device).repeat(len(features))  # (B*g*g,) raster index
        rows, columns = cells // g, cells % g
        cross_entropy = torch.nn.functional.cross_entropy
        terms = [cross_entropy(logits[:, :g], rows), cross_entropy(logits[:, g:2 * g], columns)]
        picked, xs, ys = [], [], []
        for b, sample in enumerate(samples):
            size = sample.masks.shape[-1]
            for x, y, *_ in sample.centres or []:
                picked.append(b * g * g + min(g - 1, int(y * g / size)) * g + min(g - 1, int(x * g / size)))
                xs.append(min(2 * g - 1, int(x * 2 * g / size)))
                ys.append(min(2 * g - 1, int(y * 2 * g / size)))
        if picked:
            centre = logits[torch.tensor(picked, device=logits.device)]  # (shapes, 6g)
            terms += [cross_entropy(centre[:, 2 * g:4 * g], torch.tensor(xs, device=logits.device)),
                      cross_entropy(centre[:, 4 * g:], torch.tensor(ys, device=logits.device))]
        return sum(terms) / len(terms)


def labels_on_grid(labels: np.ndarray, grid: int, frame: int) -> np.ndarray:
    """(3, S, S) class maps -> (3, grid, grid) by nearest sampling in SAM's letterboxed frame (square images)."""
    size = labels.shape[-1]
    scale = size / frame  # the image fills the square frame (longest side = frame)
    centres = ((np.arange(grid) + 0.5) * frame / grid * scale).astype(np.int64).clip(0, size - 1)
    return labels[:, centres][:, :, centres]


def batch_inputs(processor, samples: list[Sample], *, completions: bool, append_slots: bool,
                  generated: list[str | None] | None = None) -> dict:
    """Processor inputs for a list of samples (left-padded), with LM labels on the completion tokens.
    ``generated[b]`` (when not None) replaces sample b's reference completion and gets no LM labels."""
    generated = generated or [None] * len(samples)
    texts = [s.completion if g is None else g for s, g in zip(samples, generated)]
    enc = processor(
        [s.image for s in samples], [s.instruction for s in samples],
        completions=texts if completions else None, append_slots=append_slots,
    )
    batch = dict(enc)
    batch.pop("missing_ref_pos", None)
    if completions:
        tokenizer, num_slots = processor.tokenizer, processor.num_slots if append_slots else 0
        labels = torch.full_like(batch["input_ids"], -100)
        width = batch["input_ids"].shape[1]
        for b, sample in enumerate(samples):
            if generated[b] is not None:
                continue
            n = len(tokenizer(sample.completion, add_special_tokens=False).input_ids)
            end = width - num_slots
            labels[b, end - n:end] = batch["input_ids"][b, end - n:end]
        batch["labels"] = labels
    return batch


def slip_seeds(coin: torch.Generator, count: int, share: float) -> list[int | None]:
    """Per sample, with probability ``share``, a seed for :func:`misdescribed` (else ``None``), drawn from ``coin``
    (the same on every rank when ``coin`` is). With ``share == 0`` nothing is drawn, so a run without
    misdescriptions keeps its random streams."""
    if share <= 0:
        return [None] * count
    hits = (torch.rand(count, generator=coin) < share).tolist()
    seeds = torch.randint(0, 2**31, (count,), generator=coin).tolist()
    return [seed if hit else None for hit, seed in zip(hits, seeds)]


def misdescribed(sample: Sample, seed: int) -> str | None:
    """``sample``'s reference completion with one target misdescribed
    (:func:`~segcompass.data.synthetic.misdescribe_one_target`, drawn with ``seed``); ``None`` when it has no target
    with an unambiguous near miss."""
    from ...data.synthetic import misdescribe_one_target

    return misdescribe_one_target(sample.completion, sample.shape_attributes, np.random.default_rng(seed))


def backbone_kwargs(batch: dict) -> dict:
    return {k: batch[k] for k in ("pixel_values", "image_grid_thw", "mm_token_type_ids") if k in batch}


def gt_on_grid(samples: list[Sample], mask_size: int, *, every_instance: bool = False) -> list[torch.Tensor]:
    """Ground-truth instances resized into SAM's letterboxed m × m frame: B × (G_b, m, m) floats; with
    ``every_instance`` every visible shape of the scene (:meth:`Sample.instance_masks`), B × (N_b, m, m)."""
    from ...sam_frame import resize_masks

    return [resize_masks(torch.from_numpy(s.instance_masks() if every_instance else s.masks), (mask_size, mask_size),
                         letterbox=True) for s in samples]


def index_batches(num: int, batch_size: int, steps: int, generator: torch.Generator):
    """``steps`` index batches drawn epoch by epoch from a seeded permutation."""
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(num, generator=generator).tolist()
        yield order[:batch_size]
        order = order[batch_size:]


def cosine_schedule(optimizer, steps: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
