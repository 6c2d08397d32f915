"""Batched ``pipeline("reasoning-segmentation")`` (``batch_size``): one processor call, one ``model.segment`` and one
SAM embedding per distinct image for each chunk of pairs, with the same results as one pair at a time."""

import numpy as np
import pytest
from PIL import Image
from transformers import pipeline

from segcompass.data.synthetic.generator import generate_sample
from segcompass.image_utils import load_image
from segcompass.pipelines import DEFAULT_BATCH_SIZE
from segcompass.presets import default_model_dir, default_model_path

INSTRUCTIONS = ["the shape with the same kind as the green shape", "every purple shape", "every red shape",
                "the largest circle"]


def image(h=48, w=80, seed=0):
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype("uint8"))


def count_encoded_images(pipe, monkeypatch) -> list[int]:
    """Records the number of images in each SAM vision-encoder call."""
    rows, original = [], pipe.model.get_image_embeddings
    monkeypatch.setattr(pipe.model, "get_image_embeddings", lambda x: rows.append(len(x)) or original(x))
    return rows


def assert_same_results(batched, looped, score_atol=1e-3, min_iou=0.99):
    assert len(batched) == len(looped)
    for got, want in zip(batched, looped):
        assert got["reasoning"] == want["reasoning"] and got["completion"] == want["completion"]
        assert got["malformed"] == want["malformed"] and got["warnings"] == want["warnings"]
        assert [i["slot"] for i in got["instances"]] == [i["slot"] for i in want["instances"]]
        for a, b in [(got, want), *zip(got["instances"], want["instances"])]:
            union = np.logical_or(a["mask"], b["mask"]).sum()
            assert union == 0 or np.logical_and(a["mask"], b["mask"]).sum() / union >= min_iou
        for a, b in zip(got["instances"], want["instances"]):
            assert abs(a["score"] - b["score"]) <= score_atol
            assert [c["feature"] for c in a["concepts"]] == [c["feature"] for c in b["concepts"]]


# ------------------------------------------------------------------------------------------ the embedded model
@pytest.fixture(scope="module")
def embedded():
    if default_model_path() is None:
        pytest.skip("no shipped default model")
    return pipeline("reasoning-segmentation", model=str(default_model_dir()))


def test_embedded_four_instructions_on_one_image_batched_equal_looped(embedded, monkeypatch):
    scene = load_image("examples/images/scene.png")
    looped = embedded(scene, INSTRUCTIONS, batch_size=1)
    rows = count_encoded_images(embedded, monkeypatch)
    batched = embedded(scene, INSTRUCTIONS, batch_size=4)
    assert rows == [1]  # the shared image is encoded once
    assert_same_results(batched, looped)
    assert any(out["instances"] for out in looped)  # the comparison covers kept slots, not only empty answers


def test_embedded_three_images_batched_equal_looped(embedded, monkeypatch):
    samples = [generate_sample(2 * 10**9 + seed) for seed in (1, 2)]
    images = [load_image("examples/images/shapes.png"), *(s["image"] for s in samples)]  # 128 and 128 px
    images[0] = images[0].resize((112, 96))  # different sizes: each mask returns at its own image's size
    texts = ["every green shape", *(s["instruction"] for s in samples)]
    looped = [embedded(img, text) for img, text in zip(images, texts)]
    rows = count_encoded_images(embedded, monkeypatch)
    batched = embedded(images, texts, batch_size=3)
    assert rows == [3]
    assert [out["mask"].shape for out in batched] == [(96, 112), (128, 128), (128, 128)]
    assert_same_results(batched, looped)
    assert any(out["instances"] for out in looped)


# ------------------------------------------------------------------------------------------ the tiny checkpoint
def test_chunks_share_one_embedding_and_keep_order(tiny_checkpoint, monkeypatch):
    pipe = pipeline("reasoning-segmentation", model=str(tiny_checkpoint))
    texts = ["the red circle", "every shape", "the square", "a", "every green shape that is left"]
    looped = [pipe(image(), text, max_new_tokens=5, threshold=0.0) for text in texts]
    rows = count_encoded_images(pipe, monkeypatch)
    batched = pipe(image(), texts, max_new_tokens=5, threshold=0.0, batch_size=2)  # chunks of 2, 2, 1
    assert rows == [1]  # the image of the first chunk is reused by the later ones
    assert_same_results(batched, looped)


def test_construction_batch_size_and_mixed_images(tiny_checkpoint, monkeypatch):
    pipe = pipeline("reasoning-segmentation", model=str(tiny_checkpoint), batch_size=3, threshold=0.0)
    images = [image(48, 80, 0), image(64, 40, 1), image(48, 80, 0), image(30, 30, 2)]  # the first repeated
    texts = ["the red circle", "every green shape that is left", "the square", "a"]
    looped = [pipe(img, text, max_new_tokens=5, batch_size=1) for img, text in zip(images, texts)]
    rows = count_encoded_images(pipe, monkeypatch)
    batched = pipe(images, texts, max_new_tokens=5)
    assert rows == [2, 1]  # chunk 1: two distinct images (one repeated); chunk 2: one new image
    assert [len(out["instances"]) for out in batched] == [3] * 4  # the construction threshold still applies
    assert_same_results(batched, looped)


def test_default_batch_size_runs_a_list_in_one_segment_call(tiny_checkpoint, monkeypatch):
    pipe = pipeline("reasoning-segmentation", model=str(tiny_checkpoint))
    calls, original = [], pipe.model.segment
    monkeypatch.setattr(pipe.model, "segment", lambda **kw: calls.append(len(kw["input_ids"])) or original(**kw))
    outs = pipe(image(), ["a"] * (DEFAULT_BATCH_SIZE + 1), max_new_tokens=3)
    assert len(outs) == DEFAULT_BATCH_SIZE + 1 and calls == [DEFAULT_BATCH_SIZE, 1]
    single = pipe(image(), "a", max_new_tokens=3)
    assert isinstance(single, dict) and calls[-1] == 1


def test_error_in_a_later_chunk_names_where_it_counts_from(tiny_checkpoint):
    pipe = pipeline("reasoning-segmentation", model=str(tiny_checkpoint))
    with pytest.raises(ValueError, match=r"Instruction 1 is empty.*pair 2 of this call"):
        pipe(image(), ["a", "b", "c", "  "], batch_size=2, max_new_tokens=3)
