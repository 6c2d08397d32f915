"""A deterministic, procedurally generated reasoning-segmentation dataset.

Each sample is a scene of 2-7 coloured shapes (circle, square, triangle, star, diamond; red, green, blue, yellow,
purple, orange; small / medium / large; optional partial occlusion) with exact instance masks, and an instruction
that takes 1-3 reasoning steps to resolve, from five families:

* ``attribute_transfer`` - "every shape with the same colour as the triangle"
* ``spatial``            - "the square closest to the top edge", "every shape to the left of the blue circle",
  "the circle nearest to the red star"
* ``superlative``        - "the largest circle", "the smallest red shape"
* ``counting``           - "every green shape", "all the circles",
  "every shape that shares its colour with exactly one other shape"
* ``negation``           - "every shape that is not red", "the circle that is not blue"

A fraction of samples (``no_target_fraction``) has no referent ("the shape with the same colour as the star"
when there is no star; "every shape that is not red" when every shape is red): ``no_target=True``, ``masks=[]``.
Targets are computed by evaluating the instruction on the scene, and instructions that would be ambiguous on
their scene (ties in "closest" / "largest", a shape on the boundary of "left of", a non-unique reference) are
rejected and redrawn (:mod:`.tasks` lists the margins).

Rows follow :data:`segcompass.data.schema.SEGMENTATION_FEATURES` (``source="synthetic"``, ``ignore_mask=None``) and
carry a reference chain of thought in ``reasoning``; :func:`reference_completion` gives the full policy target
``<think>{reasoning}</think><REF_POS>``.

Text: lowercase, single-space separated tokens, punctuation (``. , :``) as separate tokens, all from
:data:`VOCABULARY` (:func:`get_vocabulary`); ``text.split()`` tokenizes.

Determinism and splits: sample ``i`` of ``split`` with base ``seed`` uses the numpy seed
``(seed * 1000 + split_offsets[split]) * 10**9 + i`` (:func:`sample_seed`; offsets train 0, validation 1, test 2),
so splits never share a scene and the same arguments always give byte-identical images, masks and text.

    >>> from segcompass.data.synthetic import build_synthetic_dataset, reference_completion
    >>> ds = build_synthetic_dataset("train", 1000)             # about 1 s at 128 px
    >>> reference_completion(ds[0])                             # '<think>... target : ... .</think><REF_POS>'
"""

from .config import FAMILIES, SPLITS, SyntheticConfig, sample_seed
from .generator import (
    DEFAULT_NUM_SAMPLES,
    GENERATOR_VERSION,
    REF_TOKEN,
    SyntheticExample,
    build_synthetic_dataset,
    generate_example,
    generate_sample,
    load_synthetic,
    reference_completion,
)
from .scene import COLOURS, KINDS, SIZES, Scene, Shape, generate_scene, make_scene
from .tasks import VOCABULARY, Task, get_vocabulary, misdescribe_one_target

__all__ = [
    "COLOURS",
    "DEFAULT_NUM_SAMPLES",
    "FAMILIES",
    "GENERATOR_VERSION",
    "KINDS",
    "REF_TOKEN",
    "SIZES",
    "SPLITS",
    "VOCABULARY",
    "Scene",
    "Shape",
    "SyntheticConfig",
    "SyntheticExample",
    "Task",
    "build_synthetic_dataset",
    "generate_example",
    "generate_sample",
    "generate_scene",
    "get_vocabulary",
    "load_synthetic",
    "make_scene",
    "misdescribe_one_target",
    "reference_completion",
    "sample_seed",
]
