"""Tests of the procedural reasoning-segmentation dataset (segcompass.data.synthetic)."""

from __future__ import annotations

import io
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segcompass.data.schema import SEGMENTATION_FEATURES
from segcompass.data.synthetic import (
    COLOURS,
    FAMILIES,
    KINDS,
    VOCABULARY,
    SyntheticConfig,
    build_synthetic_dataset,
    generate_example,
    generate_sample,
    generate_scene,
    get_vocabulary,
    load_synthetic,
    reference_completion,
    sample_seed,
)
from segcompass.data.synthetic.scene import COLOUR_JITTER
from segcompass.data.synthetic.tasks import (
    EDGE_MARGIN,
    NEAREST_MARGIN,
    NEAREST_RATIO,
    RELATION_MARGIN,
    SUPERLATIVE_RATIO,
)

N_EXAMPLES = 300


@pytest.fixture(scope="module")
def examples():
    return [generate_example(sample_seed("test", i)) for i in range(N_EXAMPLES)]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


# ------------------------------------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_samples():
    config = SyntheticConfig(image_size=96)
    for seed in (0, 7, 2 * 10**9 + 5):
        a, b = generate_sample(seed, config), generate_sample(seed, config)
        assert _png(a["image"]) == _png(b["image"])
        for key in ("instruction", "reasoning", "masks", "boxes", "no_target", "image_id", "sample_id"):
            assert a[key] == b[key], key
        assert a["instance_ids"] == b["instance_ids"]
    assert np.array_equal(generate_scene(3).image, generate_scene(3).image)
    assert _png(generate_sample(1)["image"]) != _png(generate_sample(2)["image"])


def test_dataset_is_reproducible_and_splits_are_disjoint():
    config = SyntheticConfig(image_size=64)
    built = {split: build_synthetic_dataset(split, 12, config=config) for split in ("train", "validation", "test")}
    again = build_synthetic_dataset("test", 12, config=config)
    assert again["image"] == built["test"]["image"]  # decoded PIL images compare by pixels
    assert again.data.column("image").to_pylist() == built["test"].data.column("image").to_pylist()  # PNG bytes
    assert again["reasoning"] == built["test"]["reasoning"]
    ids = {split: set(ds["image_id"]) for split, ds in built.items()}
    assert all(len(v) == 12 for v in ids.values())
    assert not (ids["train"] & ids["validation"]) and not (ids["train"] & ids["test"])
    assert not (ids["validation"] & ids["test"])
    seeds = {split: {sample_seed(split, i) for i in range(1000)} for split in built}
    assert not (seeds["train"] & seeds["validation"]) and not (seeds["validation"] & seeds["test"])
    assert sample_seed("test", 5, seed=1) not in {sample_seed(s, 5) for s in built}
    test = built["test"]
    assert test[3]["sample_id"] == "synthetic-test-000003"
    assert set(test["split"]) == {"test"} and set(test["source"]) == {"synthetic"}
    other_seed = build_synthetic_dataset("test", 2, config=config, seed=1)
    assert other_seed[0]["sample_id"] == "synthetic-s1-test-000000"
    assert not set(other_seed["image_id"]) & ids["test"]


def test_dataset_has_schema_features():
    ds = build_synthetic_dataset("validation", 6, config=SyntheticConfig(image_size=64))
    assert ds.features == SEGMENTATION_FEATURES
    row = ds[0]
    assert isinstance(row["image"], Image.Image) and row["image"].size == (64, 64) and row["image"].mode == "RGB"
    assert row["height"] == row["width"] == 64 and row["ignore_mask"] is None
    assert len(build_synthetic_dataset("train", 0)) == 0


# ---------------------------------------------------------------------------------------------------- masks


def test_instance_masks_exact_nonempty_disjoint(examples):
    for ex in examples:
        shapes, image = ex.scene.shapes, ex.scene.image
        union = np.zeros(image.shape[:2], dtype=int)
        for shape in shapes:
            assert shape.mask.any() and shape.area == int(shape.mask.sum())
            union += shape.mask
            # the mask is exactly the shape's painted pixels: all of them carry its colour
            diff = np.abs(image[shape.mask].astype(int) - np.array(COLOURS[shape.colour]))
            assert diff.max() <= COLOUR_JITTER
        assert union.max() <= 1  # pairwise disjoint
        assert len({s.description for s in shapes}) == len(shapes)
        row = ex.row
        assert len(row["masks"]) == len(row["boxes"]) == len(row["instance_ids"]) == len(ex.task.targets)
        for rle, box, index in zip(row["masks"], row["boxes"], ex.task.targets):
            decoded = _decode(rle)
            assert np.array_equal(decoded, shapes[index].mask)
            rle_again = mask_utils.encode(np.asfortranarray(decoded.astype(np.uint8)))
            assert box == pytest.approx(mask_utils.toBbox(rle_again))
        if row["no_target"]:
            assert row["masks"] == [] and row["boxes"] == [] and row["instance_ids"] == []


def test_background_pixels_are_grey(examples):
    for ex in examples[:50]:
        covered = np.zeros(ex.scene.image.shape[:2], dtype=bool)
        for shape in ex.scene.shapes:
            covered |= shape.mask
        background = ex.scene.image[~covered].astype(int)
        assert (background.max(axis=1) - background.min(axis=1)).max() <= 30  # unsaturated


def test_occlusion_rules():
    config = SyntheticConfig(max_shapes=7, min_shapes=6)
    occluded = 0
    for seed in range(40):
        for shape in generate_scene(seed, config).shapes:
            assert shape.area >= config.min_visible_fraction * shape.full_area
            occluded += shape.area < shape.full_area
    assert occluded > 0
    for seed in range(20):
        for shape in generate_scene(seed, SyntheticConfig(occlusion=False)).shapes:
            assert shape.area == shape.full_area


# ------------------------------------------------------------------------------------- independent re-derivation

_COLOUR = "|".join(COLOURS)
_KIND = "|".join(KINDS)
_NP = rf"(?:(?:{_COLOUR}) )?(?:{_KIND}|shape)"
_NP_PLURAL = rf"(?:(?:{_COLOUR}) )?(?:{'|'.join(k + 's' for k in KINDS)}|shapes)"


def _filter(phrase: str):
    words = phrase.split()
    colour = words[0] if words[0] in COLOURS else None
    noun = words[-1]
    kind = None if noun in ("shape", "shapes") else noun.removesuffix("s")
    return lambda s: (colour is None or s.colour == colour) and (kind is None or s.kind == kind)


def _centroid(shape):
    ys, xs = np.nonzero(shape.mask)
    return xs.mean(), ys.mean()


def _derive(instruction: str, shapes, size: int) -> tuple[str, set[int]]:
    """Evaluate an instruction on a scene independently of the generator's code; returns (family, targets)."""
    area = {s.index: int(s.mask.sum()) for s in shapes}
    centre = {s.index: _centroid(s) for s in shapes}

    if m := re.fullmatch(rf"(the|every) shape with the same (colour|kind) as the ({_NP})", instruction):
        refs = [s for s in shapes if _filter(m[3])(s)]
        if not refs:
            return "attribute_transfer", set()
        assert len(refs) == 1, instruction
        attr = m[2]
        return "attribute_transfer", {
            s.index for s in shapes if s is not refs[0] and getattr(s, attr) == getattr(refs[0], attr)
        }
    if m := re.fullmatch(rf"the ({_NP}) closest to the (top|bottom|left|right) edge", instruction):
        members = [s for s in shapes if _filter(m[1])(s)]
        axis, sign = {"top": (1, 1), "bottom": (1, -1), "left": (0, 1), "right": (0, -1)}[m[2]]
        ranked = sorted(members, key=lambda s: sign * centre[s.index][axis])
        if len(ranked) >= 2:
            gap = sign * (centre[ranked[1].index][axis] - centre[ranked[0].index][axis])
            assert gap >= EDGE_MARGIN * size, instruction
        return "spatial", {ranked[0].index} if ranked else set()
    relation = r"to the left of|to the right of|above|below"
    if m := re.fullmatch(rf"(the|every) ({_NP}) ({relation}) the ({_NP})", instruction):
        refs = [s for s in shapes if _filter(m[4])(s)]
        if not refs:
            return "spatial", set()
        assert len(refs) == 1, instruction
        rx, ry = centre[refs[0].index]
        offset = {
            "to the left of": lambda x, y: rx - x,
            "to the right of": lambda x, y: x - rx,
            "above": lambda x, y: ry - y,
            "below": lambda x, y: y - ry,
        }[m[3]]
        candidates = [s for s in shapes if _filter(m[2])(s) and s is not refs[0]]
        offsets = {s.index: offset(*centre[s.index]) for s in candidates}
        assert all(abs(o) >= RELATION_MARGIN * size for o in offsets.values()), instruction
        return "spatial", {i for i, o in offsets.items() if o > 0}
    if m := re.fullmatch(rf"the ({_NP}) nearest to the ({_NP})", instruction):
        refs = [s for s in shapes if _filter(m[2])(s)]
        if not refs:
            return "spatial", set()
        assert len(refs) == 1, instruction
        ref = np.array(centre[refs[0].index])
        dist = sorted(
            (float(np.linalg.norm(np.array(centre[s.index]) - ref)), s.index)
            for s in shapes
            if _filter(m[1])(s) and s is not refs[0]
        )
        assert dist[1][0] >= NEAREST_RATIO * dist[0][0] and dist[1][0] - dist[0][0] >= NEAREST_MARGIN * size
        return "spatial", {dist[0][1]}
    if m := re.fullmatch(rf"the (largest|smallest) ({_NP})", instruction):
        members = sorted((area[s.index], s.index) for s in shapes if _filter(m[2])(s))
        if not members:
            return "superlative", set()
        if m[1] == "largest":
            assert members[-1][0] >= SUPERLATIVE_RATIO * members[-2][0], instruction
            return "superlative", {members[-1][1]}
        assert members[1][0] >= SUPERLATIVE_RATIO * members[0][0], instruction
        return "superlative", {members[0][1]}
    if m := re.fullmatch(rf"every ({_NP})|all the ({_NP_PLURAL})", instruction):
        return "counting", {s.index for s in shapes if _filter(m[1] or m[2])(s)}
    if m := re.fullmatch(
        r"every shape that shares its (colour|kind) with (no|exactly one|exactly two) other shapes?",
        instruction,
    ):
        others = {"no": 0, "exactly one": 1, "exactly two": 2}[m[2]]
        counts = Counter(getattr(s, m[1]) for s in shapes)
        return "counting", {s.index for s in shapes if counts[getattr(s, m[1])] == others + 1}
    if m := re.fullmatch(rf"(the|every) ({_NP}) that is not (?:a ({_KIND})|({_COLOUR}))", instruction):
        scope = [s for s in shapes if _filter(m[2])(s)]
        if m[3]:
            return "negation", {s.index for s in scope if s.kind != m[3]}
        return "negation", {s.index for s in scope if s.colour != m[4]}
    raise AssertionError(f"unparsed instruction {instruction!r}")


def test_targets_match_instructions(examples):
    seen = Counter()
    for ex in examples:
        family, expected = _derive(ex.task.instruction, ex.scene.shapes, ex.scene.image_size)
        assert family == ex.task.family, ex.task.instruction
        assert expected == set(ex.task.targets), (ex.task.instruction, ex.task.reasoning)
        assert ex.row["no_target"] == (not expected)
        if ex.task.instruction.startswith("the ") and expected:
            assert len(expected) == 1, ex.task.instruction
        seen[(family, bool(expected))] += 1
    assert {f for f, has_target in seen if has_target} == set(FAMILIES)
    assert sum(n for (f, has_target), n in seen.items() if not has_target) > 0


def test_reasoning_names_targets(examples):
    for ex in examples:
        listed = ex.task.reasoning.split(" target : ")[-1].removesuffix(" .")
        expected = " , ".join(ex.scene.shapes[i].description for i in ex.task.targets) or "none"
        assert listed == expected


# ---------------------------------------------------------------------------------------------- distribution


def test_family_and_no_target_frequencies_follow_config():
    weights = {"attribute_transfer": 1.0, "spatial": 2.0, "superlative": 1.0, "counting": 0.0, "negation": 1.0}
    config = SyntheticConfig(family_weights=weights, no_target_fraction=0.3, image_size=64)
    n = 400
    tasks = [generate_example(sample_seed("train", i), config).task for i in range(n)]
    counts = Counter(t.family for t in tasks)
    assert counts["counting"] == 0
    for family, weight in weights.items():
        assert abs(counts[family] / n - weight / 5.0) < 0.07, (family, counts)
    assert abs(sum(t.no_target for t in tasks) / n - 0.3) < 0.07


# -------------------------------------------------------------------------------------------------- text


def test_text_uses_vocabulary(examples):
    vocabulary = set(get_vocabulary())
    assert get_vocabulary() == VOCABULARY and len(vocabulary) == len(VOCABULARY)
    for ex in examples:
        for text in (ex.task.instruction, ex.task.reasoning):
            assert text == text.lower() and text == " ".join(text.split())
            assert set(text.split()) <= vocabulary, set(text.split()) - vocabulary
    for token in VOCABULARY:
        assert token.isalpha() or token in {".", ",", ":"}


def test_reference_completion_format(examples):
    for ex in examples[:50]:
        completion = reference_completion(ex.row)
        assert completion.count("<think>") == completion.count("</think>") == completion.count("<REF_POS>") == 1
        assert completion.startswith("<think>") and completion.endswith("</think><REF_POS>")
        assert completion.index("</think>") < completion.index("<REF_POS>")
        assert completion[len("<think>") : completion.index("</think>")].strip()
    assert reference_completion({"reasoning": "x ."}, ref_token="<SEG>") == "<think>x .</think><SEG>"
    with pytest.raises(ValueError, match="reasoning"):
        reference_completion({"reasoning": ""})


# ---------------------------------------------------------------------------------------- config and loader


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_shapes": 5, "max_shapes": 3}, "min_shapes"),
        ({"min_shapes": 1}, "min_shapes"),
        ({"max_shapes": 40}, "max_shapes"),
        ({"image_size": 16}, "image_size"),
        ({"family_weights": {"riddles": 1.0}}, "riddles"),
        ({"family_weights": {"spatial": -1.0}}, "family_weights"),
        ({"no_target_fraction": 1.5}, "no_target_fraction"),
        ({"split_offsets": {"train": 0, "validation": 0, "test": 2}}, "split_offsets"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticConfig(**kwargs)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        build_synthetic_dataset("dev", 3)
    with pytest.raises(ValueError, match="num_samples"):
        build_synthetic_dataset("test", -1)
    with pytest.raises(ValueError, match="colour_count"):
        load_synthetic(split="test", num_samples=2, colour_count=3)


def test_load_synthetic_caches(tmp_path):
    first = load_synthetic(tmp_path, split="validation", num_samples=4, image_size=64)
    cached = list(tmp_path.iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("synthetic-v")
    second = load_synthetic(str(tmp_path), split="validation", num_samples=4, image_size=64)
    assert second["image_id"] == first["image_id"] and second["reasoning"] == first["reasoning"]
    assert second.features == SEGMENTATION_FEATURES and second[0]["width"] == 64
    in_memory = load_synthetic(None, "validation", 4, image_size=64)
    assert in_memory["masks"] == first["masks"]


# ------------------------------------------------------------------------------------------- misdescriptions


def test_neighbouring_descriptions_are_one_step_off():
    from segcompass.data.synthetic.scene import DESCRIPTION_PATTERN, neighbouring_descriptions

    assert neighbouring_descriptions("small red circle at top left") == [
        "medium red circle at top left", "small red circle at left", "small red circle at top"]
    assert sorted(neighbouring_descriptions("medium blue star at centre")) == sorted([
        "small blue star at centre", "large blue star at centre", "medium blue star at top",
        "medium blue star at bottom", "medium blue star at left", "medium blue star at right"])
    assert DESCRIPTION_PATTERN.findall("a large red circle at top left , small red circle at top .") == [
        ("large", "red", "circle", "top left"), ("small", "red", "circle", "top")]  # the longer region wins
    for bad in ("huge red circle at top", "small red circle at top left ,", ""):
        with pytest.raises(ValueError, match="is not a shape description"):
            neighbouring_descriptions(bad)


def test_misdescribe_one_target_renames_one_target_everywhere_by_an_unambiguous_near_miss(examples):
    from segcompass.data.synthetic import misdescribe_one_target
    from segcompass.data.synthetic.scene import DESCRIPTION_PATTERN

    rng = np.random.default_rng(0)
    changed = 0
    for ex in examples:
        shapes = [(s.size, s.colour, s.kind, s.region) for s in ex.scene.shapes if s.area > 0]
        slipped = misdescribe_one_target(ex.task.reasoning, shapes, rng)
        if slipped is None:
            continue
        changed += 1
        old = [m.group(0) for m in DESCRIPTION_PATTERN.finditer(ex.task.reasoning)]
        new = [m.group(0) for m in DESCRIPTION_PATTERN.finditer(slipped)]
        assert len(old) == len(new)
        renamed = {(a, b) for a, b in zip(old, new) if a != b}
        assert len(renamed) == 1, renamed  # one shape, renamed the same way wherever it is named
        (target, near), = renamed
        assert target in ex.task.reasoning.split("target :")[-1]
        words, own = DESCRIPTION_PATTERN.fullmatch(near).groups(), DESCRIPTION_PATTERN.fullmatch(target).groups()
        assert sum(a == b for a, b in zip(words, own)) == 3
        assert all(sum(a == b for a, b in zip(words, shape)) < 3 for shape in shapes if shape != own)
    assert changed > len(examples) // 2
    no_target = "there is no red star . target : none ."
    assert misdescribe_one_target(no_target, [("small", "red", "circle", "top")], rng) is None
    assert misdescribe_one_target("no target sentence .", [], rng) is None
    crowded = "reds : small red circle at top . target : small red circle at top ."
    neighbours = [("medium", "red", "circle", "top"), ("small", "red", "circle", "top left"),
                  ("small", "red", "circle", "top right"), ("small", "red", "circle", "centre")]
    assert misdescribe_one_target(crowded, [("small", "red", "circle", "top"), *neighbours], rng) is None
    assert misdescribe_one_target(crowded, [("small", "red", "circle", "top"), *neighbours[1:]], rng) == (
        "reds : medium red circle at top . target : medium red circle at top .")
