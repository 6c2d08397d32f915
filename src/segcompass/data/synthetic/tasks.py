"""Instruction families: each one picks an instruction for a scene, evaluates it on the scene's shapes and writes
the reference chain of thought.

Text conventions (instructions and reasoning alike): lowercase words separated by single spaces, punctuation
(``.``, ``,``, ``:``) as separate tokens, every token from :data:`VOCABULARY` — so ``text.split()`` is the
tokenizer. Shapes are named in reasoning by their description ``"{size} {colour} {kind} at {region}"`` (unique
within a scene), lists are comma-separated in left-to-right order (centroid x, then y) or ``none``, and every
trace ends ``target : {list} .``.

A family function returns ``None`` when the scene does not support an unambiguous instruction of the requested
kind; the caller then draws a new scene. Ambiguity rules (margins are fractions of the image side ``S``):

* references are unique by construction (``the triangle`` only when there is exactly one triangle);
* "closest to the top edge": the winner's centroid is at least :data:`EDGE_MARGIN` closer than the runner-up's
  and its box also reaches furthest toward that edge;
* "to the left of" / "above" ...: compares centroids; rejected when any candidate is within
  :data:`RELATION_MARGIN` of the reference along that axis;
* "nearest to": the runner-up is at least :data:`NEAREST_RATIO` times and :data:`NEAREST_MARGIN` further away;
* "largest" / "smallest": the winner's size class is strictly extreme and its visible area differs from every
  other candidate's by a factor of at least :data:`SUPERLATIVE_RATIO`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .scene import COLOURS, DESCRIPTION_PATTERN, KINDS, REGION_WORDS, SIZES, Scene, Shape, neighbouring_descriptions

TARGET_SENTENCE = "target :"
"""How the last sentence of every reasoning trace starts: ``target : {list} .``."""

EDGE_MARGIN = 0.08
RELATION_MARGIN = 0.08
NEAREST_RATIO = 1.3
NEAREST_MARGIN = 0.06
SUPERLATIVE_RATIO = 1.3

PLURALS: dict[str, str] = {kind: kind + "s" for kind in KINDS} | {"shape": "shapes"}
NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
)  # fmt: skip
SIDES: tuple[str, ...] = ("top", "bottom", "left", "right")
RELATIONS: dict[str, str] = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}
SHARE_PHRASES: tuple[str, ...] = (
    "with no other shape",
    "with exactly one other shape",
    "with exactly two other shapes",
)
"""Indexed by the number of *other* shapes a target shares the attribute with."""

PUNCTUATION: tuple[str, ...] = (".", ",", ":")

_FUNCTION_WORDS: tuple[str, ...] = (
    "a", "above", "all", "as", "at", "below", "closest", "colour", "colours", "edge", "every", "exactly", "is",
    "it", "its", "kind", "kinds", "largest", "nearest", "no", "none", "not", "of", "other", "per", "same",
    "shape", "shapes", "shares", "smallest", "target", "that", "the", "there", "to", "with",
)  # fmt: skip


def _build_vocabulary() -> tuple[str, ...]:
    words = set(_FUNCTION_WORDS) | set(PUNCTUATION) | set(NUMBER_WORDS) | set(COLOURS) | set(SIZES)
    words |= set(KINDS) | set(PLURALS.values()) | set(SIDES)
    for region in REGION_WORDS.values():
        words |= set(region.split())
    for phrase in list(RELATIONS.values()) + list(SHARE_PHRASES):
        words |= set(phrase.split())
    return tuple(sorted(words))


VOCABULARY: tuple[str, ...] = _build_vocabulary()
"""Every token that instructions and reasoning traces use, sorted (punctuation included)."""


def get_vocabulary() -> tuple[str, ...]:
    """:data:`VOCABULARY`: the closed word list of the synthetic language (split text on spaces to tokenize)."""
    return VOCABULARY


@dataclass(frozen=True)
class Task:
    """An instruction evaluated on one scene.

    Attributes:
        family: one of :data:`~segcompass.data.synthetic.config.FAMILIES`.
        template: finer sub-type, e.g. ``"spatial.relation"``, ``"counting.share"``.
        instruction: the referring / reasoning instruction.
        reasoning: the reference chain of thought (without ``<think>`` tags).
        targets: indices into ``scene.shapes`` of the referred shapes, in left-to-right order; ``()`` for no target.
    """

    family: str
    template: str
    instruction: str
    reasoning: str
    targets: tuple[int, ...]

    @property
    def no_target(self) -> bool:
        return not self.targets


@dataclass(frozen=True)
class Selector:
    """A set of shapes by optional colour and kind: ``red circle``, ``circle``, ``red shape`` or ``shape``."""

    colour: str | None = None
    kind: str | None = None

    @property
    def singular(self) -> str:
        return " ".join(w for w in (self.colour, self.kind or "shape") if w)

    @property
    def plural(self) -> str:
        return " ".join(w for w in (self.colour, PLURALS[self.kind or "shape"]) if w)

    def matches(self, shape: Shape) -> bool:
        return (self.colour is None or shape.colour == self.colour) and (self.kind is None or shape.kind == self.kind)

    def select(self, scene: Scene) -> list[Shape]:
        return [s for s in scene.shapes if self.matches(s)]


# ----------------------------------------------------------------------------------------------- text helpers


def _order(shapes: Sequence[Shape]) -> list[Shape]:
    return sorted(shapes, key=lambda s: (s.centroid[0], s.centroid[1], s.index))


def _listing(shapes: Sequence[Shape]) -> str:
    return " , ".join(s.description for s in _order(shapes)) or "none"


def _finish(family: str, template: str, instruction: str, facts: Sequence[str], targets: Sequence[Shape]) -> Task:
    """Assemble a task: reasoning = facts + ``target : {list}``, each sentence ending with `` .``."""
    ordered = _order(targets)
    sentences = [*facts, f"{TARGET_SENTENCE} {_listing(ordered)}"]
    return Task(
        family=family,
        template=template,
        instruction=instruction,
        reasoning=" ".join(f"{s} ." for s in sentences),
        targets=tuple(s.index for s in ordered),
    )


def misdescribe_one_target(reasoning: str, scene_shapes: Sequence[tuple[str, str, str, str]],
                           rng: np.random.Generator) -> str | None:
    """``reasoning`` with one of the shapes of its final ``target : ...`` sentence renamed, everywhere the reasoning
    names it, by a near miss (:func:`~segcompass.data.synthetic.scene.neighbouring_descriptions`: one size class or
    one region step off), the kind of slip a model that misjudges a size or a position makes. The near miss must
    still name that shape best: no other shape of ``scene_shapes`` (``(size, colour, kind, region)`` of every
    visible shape) shares three of its four words. The pair (target, near miss) is drawn uniformly from those
    allowed; ``None`` when there is none (no target, or every near miss is ambiguous). The targets stay the same
    shapes, so a mask path trained on the result learns to find the shape a reasoning describes approximately."""
    start = reasoning.rfind(TARGET_SENTENCE)
    if start < 0:
        return None
    targets = {match.group(0): match.groups() for match in DESCRIPTION_PATTERN.finditer(reasoning, start)}
    shapes = [tuple(shape) for shape in scene_shapes]
    allowed = []
    for target, own in targets.items():
        for near in neighbouring_descriptions(target):
            words = DESCRIPTION_PATTERN.fullmatch(near).groups()
            if all(sum(a == b for a, b in zip(words, shape)) < 3 for shape in shapes if shape != own):
                allowed.append((target, near))
    if not allowed:
        return None
    target, near = allowed[int(rng.integers(len(allowed)))]
    return DESCRIPTION_PATTERN.sub(lambda match: near if match.group(0) == target else match.group(0), reasoning)


def _missing(family: str, template: str, instruction: str, absent: Selector) -> Task:
    return _finish(family, template, instruction, [f"there is no {absent.singular}"], [])


def _determiner(n_targets: int, rng: np.random.Generator) -> str:
    """``the`` for exactly one target, ``every`` for several, either (at random) for none."""
    if n_targets == 1:
        return "the"
    if n_targets > 1:
        return "every"
    return ("the", "every")[int(rng.integers(2))]


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _shuffled(rng: np.random.Generator, items: Sequence) -> list:
    return [items[i] for i in rng.permutation(len(items))]


# ------------------------------------------------------------------------------------------- scene helpers


def _unique_selectors(scene: Scene, shape: Shape, *, colour: bool = True, kind: bool = True) -> list[Selector]:
    """Selectors naming exactly ``shape`` (``kind`` alone, ``colour shape`` or ``colour kind``)."""
    candidates = []
    if kind:
        candidates.append(Selector(kind=shape.kind))
    if colour:
        candidates.append(Selector(colour=shape.colour))
    if colour and kind:
        candidates.append(Selector(colour=shape.colour, kind=shape.kind))
    return [sel for sel in candidates if len(sel.select(scene)) == 1]


def _present_selectors(scene: Scene, *, minimum: int, allow_all: bool = True) -> list[Selector]:
    """Selectors (over present colours / kinds) matching at least ``minimum`` shapes."""
    selectors = [Selector()] if allow_all else []
    colours = sorted({s.colour for s in scene.shapes})
    kinds = sorted({s.kind for s in scene.shapes})
    selectors += [Selector(colour=c) for c in colours] + [Selector(kind=k) for k in kinds]
    selectors += [Selector(colour=c, kind=k) for c in colours for k in kinds]
    return [sel for sel in selectors if len(sel.select(scene)) >= minimum]


def _absent_selector(
    scene: Scene, rng: np.random.Generator, *, colour: bool = True, kind: bool = True
) -> Selector | None:
    """A random selector matching no shape, using colour and/or kind as allowed; ``None`` when impossible."""
    options = []
    if colour and kind:
        options += [Selector(colour=c, kind=k) for c in COLOURS for k in KINDS]
    elif colour:
        options += [Selector(colour=c) for c in COLOURS]
    elif kind:
        options += [Selector(kind=k) for k in KINDS]
    options = [sel for sel in options if not sel.select(scene)]
    return _pick(rng, options) if options else None


# ------------------------------------------------------------------------------------------------- families


def attribute_transfer(scene: Scene, rng: np.random.Generator, no_target: bool) -> Task | None:
    """"every shape with the same colour as the triangle" / "the shape with the same kind as the red shape".

    The reference is named without the transferred attribute (by kind for colour, by colour for kind), so the
    attribute has to be looked up; targets exclude the reference.
    """
    family = "attribute_transfer"
    attr = _pick(rng, ("colour", "kind"))
    template = f"{family}.{attr}"
    if no_target and rng.random() < 0.5:
        absent = _absent_selector(scene, rng, colour=attr == "kind", kind=attr == "colour")
        if absent is None:
            return None
        instruction = f"{_determiner(0, rng)} shape with the same {attr} as the {absent.singular}"
        return _missing(family, template + ".missing", instruction, absent)
    for ref in _shuffled(rng, scene.shapes):
        names = _unique_selectors(scene, ref, colour=attr == "kind", kind=attr == "colour")
        if not names:
            continue
        value = getattr(ref, attr)
        targets = [s for s in scene.shapes if s.index != ref.index and getattr(s, attr) == value]
        if bool(targets) == no_target:
            continue
        name = names[0].singular
        instruction = f"{_determiner(len(targets), rng)} shape with the same {attr} as the {name}"
        if attr == "colour":
            facts = [f"the {name} is {value}", f"other {value} shapes : {_listing(targets)}"]
        else:
            facts = [f"the {name} is a {value}", f"other {PLURALS[value]} : {_listing(targets)}"]
        return _finish(family, template, instruction, facts, targets)
    return None


def _edge_distance(shape: Shape, side: str, size: int) -> tuple[float, float]:
    """(centroid distance, box distance) from ``shape`` to the ``side`` edge of the image."""
    x, y = shape.centroid
    bx, by, bw, bh = shape.bbox
    if side == "top":
        return y, by
    if side == "bottom":
        return size - 1 - y, size - (by + bh)
    if side == "left":
        return x, bx
    return size - 1 - x, size - (bx + bw)


def _relation_offset(candidate: Shape, ref: Shape, relation: str) -> float:
    """Signed offset of ``candidate`` from ``ref`` along the relation's axis, positive when the relation holds."""
    (cx, cy), (rx, ry) = candidate.centroid, ref.centroid
    return {"left": rx - cx, "right": cx - rx, "above": ry - cy, "below": cy - ry}[relation]


def _spatial_edge(scene: Scene, rng: np.random.Generator, no_target: bool) -> Task | None:
    family, template = "spatial", "spatial.edge"
    side = _pick(rng, SIDES)
    if no_target:
        absent = _absent_selector(scene, rng, colour=bool(rng.integers(2)), kind=True)
        if absent is None:
            return None
        return _missing(family, template, f"the {absent.singular} closest to the {side} edge", absent)
    selectors = _present_selectors(scene, minimum=2)
    if not selectors:
        return None
    sel = _pick(rng, selectors)
    members = sel.select(scene)
    ranked = sorted(members, key=lambda s: _edge_distance(s, side, scene.image_size)[0])
    best, second = ranked[0], ranked[1]
    best_c, best_b = _edge_distance(best, side, scene.image_size)
    if _edge_distance(second, side, scene.image_size)[0] - best_c < EDGE_MARGIN * scene.image_size:
        return None
    if any(_edge_distance(s, side, scene.image_size)[1] <= best_b for s in ranked[1:]):
        return None
    instruction = f"the {sel.singular} closest to the {side} edge"
    facts = [f"{sel.plural} : {_listing(members)}", f"closest to the {side} edge : {best.description}"]
    return _finish(family, template, instruction, facts, [best])


def _spatial_relation(scene: Scene, rng: np.random.Generator, no_target: bool) -> Task | None:
    family, template = "spatial", "spatial.relation"
    relation = _pick(rng, tuple(RELATIONS))
    phrase = RELATIONS[relation]
    sel = _pick(rng, [Selector()] + [Selector(kind=k) for k in KINDS] + [Selector(colour=c) for c in COLOURS])
    if no_target and rng.random() < 0.5:
        absent = _absent_selector(scene, rng)
        if absent is None or absent.kind == sel.kind:
            return None
        instruction = f"{_determiner(0, rng)} {sel.singular} {phrase} the {absent.singular}"
        return _missing(family, template + ".missing", instruction, absent)
    for ref in _shuffled(rng, scene.shapes):
        names = _unique_selectors(scene, ref)
        candidates = [s for s in sel.select(scene) if s.index != ref.index]
        if not names or not candidates:
            continue
        offsets = [_relation_offset(s, ref, relation) for s in candidates]
        if any(abs(o) < RELATION_MARGIN * scene.image_size for o in offsets):
            continue
        targets = [s for s, o in zip(candidates, offsets) if o > 0]
        if bool(targets) == no_target:
            continue
        name = _pick(rng, names).singular
        instruction = f"{_determiner(len(targets), rng)} {sel.singular} {phrase} the {name}"
        facts = [f"the {name} is at {ref.region}", f"{sel.plural} {phrase} it : {_listing(targets)}"]
        return _finish(family, template, instruction, facts, targets)
    return None


def _spatial_nearest(scene: Scene, rng: np.random.Generator, no_target: bool) -> Task | None:
    family, template = "spatial", "spatial.nearest"
    sel = _pick(rng, [Selector()] + [Selector(kind=k) for k in KINDS] + [Selector(colour=c) for c in COLOURS])
    if no_target:
        absent = _absent_selector(scene, rng)
        if absent is None or absent.kind == sel.kind:
            return None
        return _missing(family, template, f"the {sel.singular} nearest to the {absent.singular}", absent)
    for ref in _shuffled(rng, scene.shapes):
        names = _unique_selectors(scene, ref)
        candidates = [s for s in sel.select(scene) if s.index != ref.index]
        if not names or len(candidates) < 2:
            continue
        ranked = sorted(candidates, key=lambda s: float(np.hypot(*np.subtract(s.centroid, ref.centroid))))
        d1, d2 = (float(np.hypot(*np.subtract(s.centroid, ref.centroid))) for s in ranked[:2])
        if d2 < NEAREST_RATIO * d1 or d2 - d1 < NEAREST_MARGIN * scene.image_size:
            continue
        name = _pick(rng, names).singular
        instruction = f"the {sel.singular} nearest to the {name}"
        facts = [
            f"the {name} is at {ref.region}",
            f"{sel.plural} : {_listing(candidates)}",
            f"nearest to it : {ranked[0].description}",
        ]
        return _finish(family, template, instruction, facts, [ranked[0]])
    return None


def spatial(scene: Scene, rng: np.random.Generator, no_target: bool) -> Task | None:
    """"the square closest to the top edge", "every shape to the left of the blue circle",
    "the circle nearest to the red star"."""
    sub = _pick(rng, (_spatial_edge, _spatial_relation, _spatial_nearest))
    return sub(scene, rng, no_target)


def superlative(scene: Scene, rng: np.random.Generator, no_target: bool) -> Task | None:
    """"the largest circle", "the smallest red shape" (by visible area, with a size-class and ratio margin)."""
    family, template = "superlative", "superlative"
    which = _pick(rng, ("largest", "smallest"))
    if no_target:
        absent = _absent_selector(scene, rng, colour=bool(rng.integers(2)), kind=True)
        if absent is None:
            return None
        return _missing(family, template, f"the {which} {absent.singular}", absent)
    selectors = _present_selectors(scene, minimum=2)
    if not selectors:
        return None
    sel = _pick(rng, selectors)
    members = sel.select(scene)
    sign = 1 if which == "largest" else -1
    ranked = sorted(members, key=lambda s: -sign * s.area)
    best, others = ranked[0], ranked[1:]
    best_class = SIZES.index(best.size)
    if any(sign * (best_class - SIZES.index(s.size)) <= 0 for s in others):
        return None
    big, small = (best, others[0]) if which == "largest" else (others[0], best)
    if big.area < SUPERLATIVE_RATIO * small.area:
        return None
    instruction = f"the {which} {sel.singular}"
    facts = [f"{sel.plural} : {_listing(members)}", f"{which} : {best.description}"]
    return _finish(family, template, instruction, facts, [best])


def _counting_filter(scene: Scene, rng: np.random.Generator, no_target: bool) -> Task | None:
    family, template = "counting", "counting.filter"
    if no_target:
        sel = _absent_selector(scene, rng, colour=True, kind=bool(rng.integers(2)))
        if sel is None:
            return None
    else:
        selectors = _present_selectors(scene, minimum=2, allow_all=False)
        if not selectors:
            return None
        sel = _pick(rng, selectors)
    members = sel.select(scene)
    instruction = f"every {sel.singular}" if rng.random() < 0.5 else f"all the {sel.plural}"
    if not members:
        return _missing(family, template, instruction, sel)
    return _finish(family, template, instruction, [f"{sel.plural} : {_listing(members)}"], members)


def _counting_share(scene: Scene, rng: np.random.Generator, no_target: bool) -> Task | None:
    family = "counting"
    attr = _pick(rng, ("colour", "kind"))
    others = int(rng.integers(len(SHARE_PHRASES)))
    values = list(COLOURS) if attr == "colour" else list(KINDS)
    counts = {v: sum(getattr(s, attr) == v for s in scene.shapes) for v in values}
    chosen = [v for v in values if counts[v] == others + 1]
    targets = [s for s in scene.shapes if getattr(s, attr) in chosen]
    if bool(targets) == no_target:
        return None
    instruction = f"every shape that shares its {attr} {SHARE_PHRASES[others]}"
    group = "shape" if others == 0 else "shapes"
    facts = [
        f"shapes per {attr} : " + " , ".join(f"{v} {NUMBER_WORDS[counts[v]]}" for v in values if counts[v]),
        f"{attr}s with {NUMBER_WORDS[others + 1]} {group} : {' , '.join(chosen) or 'none'}",
    ]
    return _finish(family, f"counting.share.{attr}", instruction, facts, targets)


def counting(scene: Scene, rng: np.random.Generator, no_target: bool) -> Task | None:
    """"every green shape", "all the circles", "every shape that shares its colour with exactly one other shape"."""
    sub = _pick(rng, (_counting_filter, _counting_share))
    return sub(scene, rng, no_target)


def negation(scene: Scene, rng: np.random.Generator, no_target: bool) -> Task | None:
    """"every shape that is not red", "the circle that is not blue", "every red shape that is not a star".

    The negated value must occur in the scope (so the negation removes something); targets are the rest of the
    scope. No target: every shape in the scope has the negated value.
    """
    family = "negation"
    if rng.random() < 0.5:  # negate a colour within "shape" or one kind
        template = "negation.colour"
        scope = _pick(rng, [Selector()] + [Selector(kind=k) for k in sorted({s.kind for s in scene.shapes})])
        value = _pick(rng, sorted({s.colour for s in scope.select(scene)}))
        excluded_sel = Selector(colour=value, kind=scope.kind)
        negated = value
    else:  # negate a kind within "shape" or one colour
        template = "negation.kind"
        scope = _pick(rng, [Selector()] + [Selector(colour=c) for c in sorted({s.colour for s in scene.shapes})])
        value = _pick(rng, sorted({s.kind for s in scope.select(scene)}))
        excluded_sel = Selector(colour=scope.colour, kind=value)
        negated = f"a {value}"
    members = scope.select(scene)
    excluded = [s for s in members if excluded_sel.matches(s)]
    targets = [s for s in members if not excluded_sel.matches(s)]
    if bool(targets) == no_target:
        return None
    instruction = f"{_determiner(len(targets), rng)} {scope.singular} that is not {negated}"
    facts = [f"{excluded_sel.plural} : {_listing(excluded)}", f"other {scope.plural} : {_listing(targets)}"]
    return _finish(family, template, instruction, facts, targets)


FAMILY_FUNCTIONS: dict[str, Callable[[Scene, np.random.Generator, bool], Task | None]] = {
    "attribute_transfer": attribute_transfer,
    "spatial": spatial,
    "superlative": superlative,
    "counting": counting,
    "negation": negation,
}
"""Family name -> ``fn(scene, rng, no_target) -> Task | None``."""
