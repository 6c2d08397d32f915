"""Interpretability analyses (segcompass.interpret) on a tiny random Qwen2.5-VL checkpoint and synthetic samples."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from segcompass.data.synthetic import generate_sample, sample_seed
from segcompass.interpret import (
    TOKEN_TYPES,
    activation_patterns,
    heatmap_mask_agreement,
    image_token_grid,
    instance_coverage,
    patch_index_map,
    to_jsonable,
    token_mask_overlap,
    token_types,
)
from segcompass.interpret.agreement import _pearson_and_fit
from segcompass.testing_processor import tiny_segcompass_processor
from segcompass.utils.masks import union_masks


@pytest.fixture(scope="module")
def samples():
    # test-split samples 0 (two squares, 1185 mask pixels), 4 (two shapes) and 6 (no target)
    rows = [generate_sample(sample_seed("test", i)) for i in (0, 4, 6)]
    assert [bool(r["masks"]) for r in rows] == [True, True, False]
    return rows


def _spaced_completion(sample):
    """A completion the word-level tiny tokenizer splits into known words (tags separated by spaces)."""
    return f"<think> {sample['reasoning']} </think> <REF_POS>"


def _union(sample):
    return union_masks(sample["masks"], shape=(sample["height"], sample["width"]))


# ------------------------------------------------------------------------------------------------ geometry
def test_patch_index_map_partitions_the_image():
    cells = patch_index_map(60, 90, (2, 3))
    assert cells.shape == (60, 90)
    assert cells[0, 0] == 0 and cells[0, 89] == 2 and cells[59, 0] == 3 and cells[59, 89] == 5
    assert cells[29, 29] == 0 and cells[30, 30] == 4  # rows [0, 30) / [30, 60), columns split every 30 pixels
    assert np.bincount(cells.ravel()).tolist() == [900] * 6


def test_image_token_grid_checks_inputs():
    assert image_token_grid(torch.tensor([[1, 8, 6]]), 2) == (4, 3)
    with pytest.raises(ValueError, match="t=2"):
        image_token_grid([2, 8, 6], 2)
    with pytest.raises(ValueError, match="merge_size"):
        image_token_grid([1, 7, 6], 2)


def test_constructed_image_and_mask_by_hand(tiny_processor):
    processor = tiny_processor
    # 60 x 90 image -> Qwen smart resize to 56 x 84 -> image_grid_thw (1, 4, 6) -> 2 x 3 merged tokens, each covering
    # a 30 x 30 block of the original image.
    image = Image.new("RGB", (90, 60), (200, 200, 200))
    mask = np.zeros((60, 90), dtype=bool)
    mask[35:50, 65:80] = True  # inside the bottom-right block only -> token 1 * 3 + 2 = 5
    mask[0, 0] = True  # one pixel of the top-left block -> token 0
    completion = "<think> the mug is left of it </think> <REF_POS>"
    batch = processor(image, "the mug", completions=completion, append_slots=True)
    assert batch["image_grid_thw"].tolist() == [[1, 4, 6]]
    ids = batch["input_ids"][0]
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    image_positions = (ids == image_id).nonzero().flatten()
    assert len(image_positions) == 6

    types = token_types(ids, processor, "the mug", completion, image_grid_thw=batch["image_grid_thw"], masks=[mask])
    assert types.shape == ids.shape
    assert types[image_positions].tolist() == ["instance", "background", "background",
                                               "background", "background", "instance"]
    inside, sizes = token_mask_overlap(mask, (2, 3))
    assert inside.tolist() == [1, 0, 0, 0, 0, 15 * 15] and sizes.tolist() == [900] * 6
    # the one-pixel overlap no longer counts once a token needs more than 10% of its block
    strict = token_types(ids, processor, "the mug", completion, image_grid_thw=batch["image_grid_thw"], masks=[mask],
                         min_overlap=0.1)
    assert strict[image_positions].tolist() == ["background"] * 5 + ["instance"]

    tokens = processor.tokenizer.convert_ids_to_tokens(ids.tolist())
    cot = [t for t, k in zip(tokens, types) if k == "cot"]
    assert cot == "the mug is left of it".split()
    question = [t for t, k in zip(tokens, types) if k == "question"]
    assert question[:3] == ["Request:", "the", "mug"] and question[-1] == "else."
    # the tags, <REF_POS>, slots and chat tokens are "other"
    for token in ("<REF_POS>", "<SLOT_0>", "<|im_start|>", "<|vision_start|>", "<|vision_end|>", "assistant"):
        assert all(k == "other" for t, k in zip(tokens, types) if t == token), token


# ------------------------------------------------------------------------------------------------ token types
def test_token_types_cover_the_sequence(tiny_processor, samples):
    processor = tiny_processor
    sample = samples[0]
    completion = _spaced_completion(sample)
    batch = processor(sample["image"], sample["instruction"], completions=completion, append_slots=True)
    ids = batch["input_ids"][0]
    types = token_types(ids, processor, sample["instruction"], completion, image_grid_thw=batch["image_grid_thw"],
                        masks=[_union(sample)])
    counts = {name: int((types == name).sum()) for name in TOKEN_TYPES}
    assert sum(counts.values()) == len(ids)
    assert set(np.unique(types)) <= set(TOKEN_TYPES)
    # image tokens: exactly the processor's expansion, prod(image_grid_thw) / merge_size**2
    expansion = int(batch["image_grid_thw"][0].prod()) // processor.image_processor.merge_size ** 2
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    assert counts["instance"] + counts["background"] == expansion == int((ids == image_id).sum())
    # the large mask (two squares) lands on some but not all tokens, and every instance token's cell overlaps it
    assert 0 < counts["instance"] < expansion
    grid = image_token_grid(batch["image_grid_thw"][0], processor.image_processor.merge_size)
    inside, _ = token_mask_overlap(_union(sample), grid)
    image_types = types[(ids == image_id).numpy()]
    assert ((image_types == "instance") == (inside > 0)).all()
    # CoT: every reasoning word, all after the prompt
    assert counts["cot"] == len(sample["reasoning"].split())
    assert np.flatnonzero(types == "cot").min() > np.flatnonzero(types == "question").max()


def test_token_types_batched_left_padding_matches_single_rows(tiny_processor, samples):
    processor = tiny_processor
    rows = samples[:2]
    completions = [_spaced_completion(s) for s in rows]
    instructions = [s["instruction"] for s in rows]
    batch = processor([s["image"] for s in rows], instructions, completions=completions, append_slots=True)
    masks = [_union(s) for s in rows]
    types = token_types(batch["input_ids"], processor, instructions, completions,
                        image_grid_thw=batch["image_grid_thw"], masks=masks, attention_mask=batch["attention_mask"])
    assert types.shape == tuple(batch["input_ids"].shape)
    for b, sample in enumerate(rows):
        single = processor(sample["image"], instructions[b], completions=completions[b], append_slots=True)
        expected = token_types(single["input_ids"][0], processor, instructions[b], completions[b],
                               image_grid_thw=single["image_grid_thw"], masks=[masks[b]])
        valid = batch["attention_mask"][b].bool().numpy()
        assert types[b][valid].tolist() == expected.tolist()
        assert (types[b][~valid] == "other").all()


def test_token_types_errors(tiny_processor, samples):
    processor = tiny_processor
    sample = samples[0]
    completion = _spaced_completion(sample)
    batch = processor(sample["image"], sample["instruction"], completions=completion, append_slots=True)
    with pytest.raises(ValueError, match="does not reproduce input_ids"):
        token_types(batch["input_ids"][0], processor, sample["instruction"], "<think> other words </think>",
                    image_grid_thw=batch["image_grid_thw"], masks=[_union(sample)])
    with pytest.raises(ValueError, match="masks must be a list"):
        token_types(batch["input_ids"][0], processor, sample["instruction"], completion,
                    image_grid_thw=batch["image_grid_thw"], masks=[])
    llava = tiny_segcompass_processor(backbone_type="llava")
    with pytest.raises(ValueError, match="Qwen2.5-VL"):
        token_types(batch["input_ids"][0], llava, sample["instruction"], completion,
                    image_grid_thw=batch["image_grid_thw"], masks=[_union(sample)])


# ------------------------------------------------------------------------------------------------ Figure 4
def test_activation_patterns(tiny_model, tiny_processor, samples):
    model, processor = tiny_model, tiny_processor
    thresholds = (0.0, 0.01, 0.05, 0.1, 0.5)
    result = activation_patterns(model, processor, samples, thresholds=thresholds)
    assert result["thresholds"] == list(thresholds) and result["num_samples"] == 3
    assert set(result["mean_active_features"]) == set(TOKEN_TYPES)
    for name in ("question", "cot", "instance", "background", "other"):
        means = result["mean_active_features"][name]
        assert result["token_counts"][name] > 0 and len(means) == len(thresholds)
        assert all(0 <= m <= model.config.sae_config.d_sae for m in means)
        assert all(a >= b for a, b in zip(means, means[1:])), (name, means)
    assert result["mean_active_features"]["question"][0] > 0

    # the token counts add up to the scored sequences, and one mean matches a dense recomputation
    total, cot_counts = 0, []
    with torch.no_grad():
        for sample in samples:
            completion = f"<think>{sample['reasoning']}</think>{processor.ref_token}"
            batch = processor(sample["image"], sample["instruction"], completions=completion, append_slots=True)
            total += batch["input_ids"].shape[1]
            names = processor.backbone_processor.model_input_names
            out = model.backbone(**{k: batch[k] for k in names if k in batch}, output_hidden_states=True)
            codes = model.sae.encode(out.hidden_states[model.config.sae_config.hook_layer][0])  # (T, d_sae)
            types = token_types(batch["input_ids"][0], processor, sample["instruction"], completion,
                                image_grid_thw=batch["image_grid_thw"], masks=[_union(sample)])
            active = (codes != 0) & (codes.abs() >= 0.05)
            cot_counts += active[torch.from_numpy(types == "cot")].sum(-1).tolist()
    assert sum(result["token_counts"].values()) == total
    assert result["mean_active_features"]["cot"][2] == pytest.approx(np.mean(cot_counts))
    json.dumps(to_jsonable(result))

    with pytest.raises(ValueError, match="thresholds"):
        activation_patterns(model, processor, samples, thresholds=(-0.1,))


def test_activation_patterns_needs_reasoning_or_completions(tiny_model, tiny_processor, samples):
    model, processor = tiny_model, tiny_processor
    sample = dict(samples[0], reasoning="")
    with pytest.raises(ValueError, match="completions="):
        activation_patterns(model, processor, [sample])
    result = activation_patterns(model, processor, [sample], completions=[_spaced_completion(samples[0])])
    assert result["token_counts"]["cot"] == len(samples[0]["reasoning"].split())


# ------------------------------------------------------------------------------------------------ Figure 5
def test_instance_coverage(tiny_model, tiny_processor, samples):
    model, processor = tiny_model, tiny_processor
    fractions = (0.05, 0.1, 0.2, 0.4, 1.0)
    result = instance_coverage(model, processor, samples, fractions=fractions, seed=3)
    num_instances = sum(len(s["masks"]) for s in samples)
    assert result["num_instances"] == num_instances and result["num_skipped_samples"] == 1
    assert result["instance_sample_index"] == [0] * len(samples[0]["masks"]) + [1] * len(samples[1]["masks"])
    for key in ("per_instance_top_k", "per_instance_random"):
        rows = np.asarray(result[key])
        assert rows.shape == (num_instances, len(fractions))
        assert ((rows >= 0) & (rows <= 1)).all()
        assert rows[:, -1] == pytest.approx(1.0)  # 100% of the tokens cover every pixel
    top = np.asarray(result["per_instance_top_k"])
    assert (np.diff(top, axis=1) >= 0).all()  # top-K sets are nested
    assert result["top_k_coverage"][-1] == pytest.approx(1.0) and result["random_coverage"][-1] == pytest.approx(1.0)
    assert all(0 <= v <= 1 for v in result["top_k_coverage"] + result["random_coverage"])
    # seeded: the random baseline is reproducible
    again = instance_coverage(model, processor, samples, fractions=fractions, seed=3)
    assert again["per_instance_random"] == result["per_instance_random"]
    json.dumps(to_jsonable(result))

    with pytest.raises(ValueError, match="fractions"):
        instance_coverage(model, processor, samples, fractions=(0.0,))


# ------------------------------------------------------------------------------------------------ Figure 8 (right)
def test_heatmap_mask_agreement(tiny_model, tiny_processor, samples):
    model, processor = tiny_model, tiny_processor
    keys = {"heatmap_iou", "mask_iou", "heatmap_ciou", "mask_ciou", "pearson_r", "ols_slope", "ols_intercept",
            "num_kept_slots", "sample_ids", "num_samples"}
    everything = heatmap_mask_agreement(model, processor, samples, confidence_threshold=0.0, heatmap_threshold=0.0)
    assert set(everything) == keys and everything["num_samples"] == 3
    assert everything["num_kept_slots"] == [model.config.num_slots] * 3
    assert everything["sample_ids"] == [s["sample_id"] for s in samples]
    # a heatmap threshold of 0 marks every pixel: IoU = |GT| / |image|
    for sample, iou in zip(samples, everything["heatmap_iou"]):
        assert iou == pytest.approx(_union(sample).sum() / _union(sample).size)
    assert all(0 <= v <= 1 for v in everything["mask_iou"])

    nothing = heatmap_mask_agreement(model, processor, samples, confidence_threshold=1.0)
    assert nothing["num_kept_slots"] == [0, 0, 0]
    # empty predictions: IoU 0 with a target, 1 for the no-target sample
    assert nothing["heatmap_iou"] == [0.0, 0.0, 1.0] and nothing["mask_iou"] == [0.0, 0.0, 1.0]
    assert nothing["heatmap_ciou"] == 0.0 and nothing["pearson_r"] == pytest.approx(1.0)
    json.dumps(to_jsonable(everything))


def test_pearson_and_fit():
    fit = _pearson_and_fit([0.1, 0.2, 0.3, 0.4], [0.3, 0.5, 0.7, 0.9])
    assert fit["pearson_r"] == pytest.approx(1.0)
    assert fit["ols_slope"] == pytest.approx(2.0) and fit["ols_intercept"] == pytest.approx(0.1)
    assert _pearson_and_fit([0.5], [0.5])["pearson_r"] is None
    assert _pearson_and_fit([0.5, 0.5], [0.1, 0.2])["pearson_r"] is None


def test_to_jsonable():
    value = {"a": np.arange(3), "b": np.float32(0.5), "c": float("nan"), "d": torch.tensor([1.0]), 1: (np.int64(2),)}
    assert to_jsonable(value) == {"a": [0, 1, 2], "b": 0.5, "c": None, "d": [1.0], "1": [2]}
