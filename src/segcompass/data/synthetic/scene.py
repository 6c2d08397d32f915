"""Procedural scenes: coloured shapes on a plain or lightly textured background, with exact instance masks.

Every shape is rasterised into its own boolean mask with ``PIL.ImageDraw`` (no anti-aliasing, so the mask is
exactly the set of pixels painted in the shape's colour); shapes are painted in order, so a later shape covers
an earlier one, and an instance's mask is its *visible* pixels: its own mask minus every later shape's mask.
Instance masks are therefore pairwise disjoint and match the image pixel for pixel.

Rules that keep every instance identifiable:

* an occluded shape keeps at least ``config.min_visible_fraction`` of its full area visible;
* two shapes of the same colour never touch (their bounding circles are at least 2 px apart), so that two
  instances never merge into one blob of one colour; with ``occlusion=False`` that holds for every pair;
* shapes of one size class have the same nominal area whatever their kind (a large triangle is as big as a
  large circle), so size words mean the same across kinds;
* no two shapes share a description ``(size, colour, kind, region)``, so a reasoning trace that lists shapes
  by description never names two shapes the same way.

All geometry (centroid, area, box, region) is measured on the visible mask.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .config import SyntheticConfig

KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 45),
    "green": (45, 160, 70),
    "blue": (45, 85, 215),
    "yellow": (235, 205, 35),
    "purple": (140, 65, 190),
    "orange": (245, 135, 30),
}
"""Named colours (sRGB). Each rendered shape's colour is jittered by at most :data:`COLOUR_JITTER` per channel."""

COLOUR_JITTER = 8

SIZES: tuple[str, ...] = ("small", "medium", "large")

SIZE_RADIUS: dict[str, float] = {"small": 0.065, "medium": 0.095, "large": 0.135}
"""Radius (fraction of the image side) of the circle whose area every shape of that size class has."""

SIZE_JITTER = 0.08
"""Each shape's radius is scaled by a factor drawn uniformly from ``[1 - SIZE_JITTER, 1 + SIZE_JITTER]``."""

STAR_INNER_RATIO = 0.45
DIAMOND_ASPECT = 0.65

REGION_WORDS: dict[tuple[str, str], str] = {
    ("top", "left"): "top left",
    ("top", "centre"): "top",
    ("top", "right"): "top right",
    ("middle", "left"): "left",
    ("middle", "centre"): "centre",
    ("middle", "right"): "right",
    ("bottom", "left"): "bottom left",
    ("bottom", "centre"): "bottom",
    ("bottom", "right"): "bottom right",
}
"""Nine image regions (a 3 x 3 grid over the visible centroid) and their words."""

DESCRIPTION_PATTERN = re.compile(
    r"\b({}) ({}) ({}) at ({})\b".format(
        "|".join(SIZES), "|".join(COLOURS), "|".join(KINDS),
        "|".join(sorted(REGION_WORDS.values(), key=len, reverse=True)),  # "top left" before "top"
    )
)
"""A shape's description ``"{size} {colour} {kind} at {region}"`` in token-spaced text; groups: the four words."""

_REGION_CELLS = {word: (("top", "middle", "bottom").index(row), ("left", "centre", "right").index(column))
                 for (row, column), word in REGION_WORDS.items()}
"""Region word -> (grid row, grid column) of the 3 x 3 grid."""
_CELL_REGIONS = {cell: word for word, cell in _REGION_CELLS.items()}


def neighbouring_descriptions(description: str) -> list[str]:
    """The descriptions one step from ``description``: its size class one up or down, or its region one grid step
    along a row or a column (``"top left"`` -> ``"top"``, ``"left"``); colour and kind kept. The near misses a
    model that misjudges a shape's size or position writes. Raises ``ValueError`` for text that is not exactly one
    description."""
    match = DESCRIPTION_PATTERN.fullmatch(description)
    if match is None:
        raise ValueError(f"{description!r} is not a shape description '{{size}} {{colour}} {{kind}} at {{region}}' "
                         f"(sizes {SIZES}, colours {tuple(COLOURS)}, kinds {KINDS}).")
    size, colour, kind, region = match.groups()
    r, c = _REGION_CELLS[region]
    sizes = [SIZES[i] for i in (SIZES.index(size) - 1, SIZES.index(size) + 1) if 0 <= i < len(SIZES)]
    steps = ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1))  # one grid step along a column or a row
    regions = [_CELL_REGIONS[cell] for cell in steps if cell in _CELL_REGIONS]
    return ([f"{s} {colour} {kind} at {region}" for s in sizes]
            + [f"{size} {colour} {kind} at {w}" for w in regions])

_PLACEMENT_TRIES = 60
_SCENE_TRIES = 50


@dataclass(frozen=True, eq=False)
class Shape:
    """One instance in a scene.

    Attributes:
        index: drawing order (0 is drawn first, i.e. lowest).
        kind, colour, size: names from :data:`KINDS`, :data:`COLOURS`, :data:`SIZES`.
        centre: nominal centre ``(x, y)`` used to draw the shape.
        radius: radius of the circle of equal nominal area, in pixels.
        full_area: pixel count of the shape as drawn, before occlusion.
        mask: visible pixels, ``bool`` array of shape ``(S, S)``.
        area: visible pixel count (``mask.sum()``).
        centroid: mean ``(x, y)`` = (column, row) of the visible pixels.
        bbox: ``[x, y, w, h]`` of the visible pixels (COCO convention, integers as floats).
        region: one of the :data:`REGION_WORDS` values, from the visible centroid.
    """

    index: int
    kind: str
    colour: str
    size: str
    centre: tuple[float, float]
    radius: float
    full_area: int
    mask: np.ndarray
    area: int
    centroid: tuple[float, float]
    bbox: tuple[float, float, float, float]
    region: str

    @property
    def description(self) -> str:
        """``"{size} {colour} {kind} at {region}"``, unique within its scene."""
        return f"{self.size} {self.colour} {self.kind} at {self.region}"


@dataclass(frozen=True, eq=False)
class Scene:
    """A rendered scene: ``image`` is ``uint8 (S, S, 3)``; ``shapes`` in drawing order."""

    image: np.ndarray
    shapes: tuple[Shape, ...]
    image_size: int
    background: str  # "plain" or "textured"


@dataclass(frozen=True)
class _Spec:
    kind: str
    colour: str
    size: str
    centre: tuple[float, float]
    radius: float
    bound: float  # radius of the bounding circle around ``centre``
    rgb: tuple[int, int, int]


def _unit_polygon(kind: str) -> list[tuple[float, float]]:
    """Vertices of a polygonal kind around the origin with bounding radius 1 (y points down)."""
    if kind == "square":
        h = 1.0 / math.sqrt(2.0)
        return [(-h, -h), (h, -h), (h, h), (-h, h)]
    if kind == "triangle":
        return [(math.cos(a), math.sin(a)) for a in (math.radians(d) for d in (-90.0, 30.0, 150.0))]
    if kind == "diamond":
        return [(0.0, -1.0), (DIAMOND_ASPECT, 0.0), (0.0, 1.0), (-DIAMOND_ASPECT, 0.0)]
    if kind == "star":
        points = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else STAR_INNER_RATIO
            a = math.radians(-90.0 + 36.0 * k)
            points.append((r * math.cos(a), r * math.sin(a)))
        return points
    raise ValueError(f"kind={kind!r} has no polygon; use one of {KINDS}.")


def _polygon_area(points: list[tuple[float, float]]) -> float:
    return 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1])))


_UNIT_POLYGONS = {kind: _unit_polygon(kind) for kind in KINDS if kind != "circle"}
# Bounding radius per unit of equal-area radius: a kind with bounding radius b has area pi * r**2 when
# b = r * _BOUND_PER_RADIUS[kind].
_BOUND_PER_RADIUS = {"circle": 1.0} | {
    kind: math.sqrt(math.pi / _polygon_area(points)) for kind, points in _UNIT_POLYGONS.items()
}


def _draw_full_mask(spec: _Spec, image_size: int) -> np.ndarray:
    """Rasterise one shape into its own ``bool (S, S)`` mask."""
    canvas = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = spec.centre
    if spec.kind == "circle":
        r = spec.bound
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
        draw.polygon([(cx + spec.bound * x, cy + spec.bound * y) for x, y in _UNIT_POLYGONS[spec.kind]], fill=1)
    return np.asarray(canvas, dtype=bool)


def _sample_spec(rng: np.random.Generator, image_size: int) -> _Spec:
    kind = KINDS[int(rng.integers(len(KINDS)))]
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    size = SIZES[int(rng.integers(len(SIZES)))]
    radius = SIZE_RADIUS[size] * image_size * float(rng.uniform(1.0 - SIZE_JITTER, 1.0 + SIZE_JITTER))
    bound = radius * _BOUND_PER_RADIUS[kind]
    low, high = bound + 1.0, image_size - 2.0 - bound
    cx, cy = (float(v) for v in rng.uniform(low, high, size=2))
    base = np.array(COLOURS[colour])
    rgb = np.clip(base + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3), 0, 255)
    return _Spec(kind, colour, size, (cx, cy), radius, bound, tuple(int(v) for v in rgb))


def _fits(
    spec: _Spec,
    full: np.ndarray,
    placed: list[tuple[_Spec, np.ndarray]],
    visible: list[np.ndarray],
    config: SyntheticConfig,
) -> bool:
    """Whether ``spec`` can be painted on top of ``placed`` without breaking the identifiability rules."""
    for (other, other_full), other_visible in zip(placed, visible):
        apart = math.dist(spec.centre, other.centre) >= spec.bound + other.bound + 2.0
        if apart:
            continue
        if other.colour == spec.colour or not config.occlusion:
            return False
        remaining = int(np.count_nonzero(other_visible & ~full))
        if remaining < config.min_visible_fraction * int(np.count_nonzero(other_full)):
            return False
    return True


def _region(centroid: tuple[float, float], image_size: int) -> str:
    x, y = centroid
    column = "left" if x < image_size / 3 else "right" if x >= 2 * image_size / 3 else "centre"
    row = "top" if y < image_size / 3 else "bottom" if y >= 2 * image_size / 3 else "middle"
    return REGION_WORDS[(row, column)]


def _background(rng: np.random.Generator, config: SyntheticConfig) -> tuple[np.ndarray, str]:
    size = config.image_size
    grey = int(rng.integers(190, 231))
    tint = rng.integers(-6, 7, size=3)
    base = np.clip(grey + tint, 0, 255).astype(np.int16)
    textured = config.textured_background and bool(rng.random() < 0.5)
    image = np.broadcast_to(base, (size, size, 3)).copy()
    if textured:
        image += rng.integers(-7, 8, size=(size, size, 1), dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8), "textured" if textured else "plain"


def _build_shapes(placed: list[tuple[_Spec, np.ndarray]], visible: list[np.ndarray], size: int) -> tuple[Shape, ...]:
    shapes = []
    for index, ((spec, full), mask) in enumerate(zip(placed, visible)):
        ys, xs = np.nonzero(mask)
        centroid = (float(xs.mean()), float(ys.mean()))
        x0, y0 = int(xs.min()), int(ys.min())
        bbox = (float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1))
        shapes.append(
            Shape(
                index=index,
                kind=spec.kind,
                colour=spec.colour,
                size=spec.size,
                centre=spec.centre,
                radius=spec.radius,
                full_area=int(np.count_nonzero(full)),
                mask=mask,
                area=int(xs.size),
                centroid=centroid,
                bbox=bbox,
                region=_region(centroid, size),
            )
        )
    return tuple(shapes)


def _place_shapes(
    rng: np.random.Generator, count: int, config: SyntheticConfig
) -> tuple[list[tuple[_Spec, np.ndarray]], list[np.ndarray]] | None:
    """Place ``count`` shapes one after another; ``None`` when one does not fit after many tries."""
    placed: list[tuple[_Spec, np.ndarray]] = []
    visible: list[np.ndarray] = []
    for _ in range(count):
        for _try in range(_PLACEMENT_TRIES):
            spec = _sample_spec(rng, config.image_size)
            full = _draw_full_mask(spec, config.image_size)
            if _fits(spec, full, placed, visible, config):
                visible = [v & ~full for v in visible]
                placed.append((spec, full))
                visible.append(full.copy())
                break
        else:
            return None
    return placed, visible


def make_scene(rng: np.random.Generator, config: SyntheticConfig | None = None) -> Scene:
    """Draw one scene from ``rng`` (advancing it). See the module docstring for the rules."""
    config = config or SyntheticConfig()
    for _ in range(_SCENE_TRIES):
        image, background = _background(rng, config)
        count = int(rng.integers(config.min_shapes, config.max_shapes + 1))
        result = _place_shapes(rng, count, config)
        if result is None:
            continue
        placed, visible = result
        shapes = _build_shapes(placed, visible, config.image_size)
        if len({s.description for s in shapes}) != len(shapes):
            continue
        for spec, full in placed:
            image[full] = spec.rgb
        return Scene(image=image, shapes=shapes, image_size=config.image_size, background=background)
    raise RuntimeError(
        f"could not place {config.min_shapes}-{config.max_shapes} shapes on a {config.image_size} px canvas in "
        f"{_SCENE_TRIES} tries; lower max_shapes, enable occlusion or raise image_size."
    )


def generate_scene(seed: int, config: SyntheticConfig | None = None) -> Scene:
    """The scene drawn from ``numpy.random.default_rng(seed)``: same seed and config, identical pixels."""
    return make_scene(np.random.default_rng(seed), config)
