"""pipeline("reasoning-segmentation"), AutoProcessor and the segment CLI on tiny offline checkpoints."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, pipeline

import segcompass
from segcompass.cli import main

EXAMPLE = "examples/images/shapes.png"


def image(h=48, w=80, seed=0):
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype("uint8"))


def test_auto_classes_round_trip(tiny_checkpoint):
    model = AutoModel.from_pretrained(tiny_checkpoint)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    assert isinstance(model, segcompass.SegCompassForReasoningSegmentation)
    assert isinstance(processor, segcompass.SegCompassProcessor)
    assert processor.slot_token_ids == model.config.slot_token_ids


def test_pipeline_output_schema(tiny_checkpoint):
    pipe = pipeline("reasoning-segmentation", model=str(tiny_checkpoint))
    assert isinstance(pipe, segcompass.ReasoningSegmentationPipeline)
    out = pipe(image(), "the red circle", max_new_tokens=6, threshold=0.0, top_concepts=3)
    assert set(out) == {"reasoning", "completion", "instances", "mask", "malformed", "warnings"}
    assert out["mask"].shape == (48, 80) and out["mask"].dtype == bool
    assert len(out["instances"]) == 3  # threshold 0 keeps every slot
    scores = [i["score"] for i in out["instances"]]
    assert scores == sorted(scores, reverse=True)
    union = np.zeros((48, 80), bool)
    for instance in out["instances"]:
        assert instance["mask"].shape == (48, 80) and instance["heatmap"].shape == (48, 80)
        assert 0 <= instance["slot"] < 3 and len(instance["concepts"]) == 3
        assert {"feature", "activation", "weight", "label"} == set(instance["concepts"][0])
        weights = [c["weight"] for c in instance["concepts"]]
        assert weights == sorted(weights, reverse=True)
        union |= instance["mask"]
        if instance["mask"].any():
            x, y, w, h = instance["box"]
            ys, xs = np.nonzero(instance["mask"])
            assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
    assert np.array_equal(union, out["mask"])


def test_no_target_gives_empty_instances(tiny_checkpoint):
    pipe = pipeline("reasoning-segmentation", model=str(tiny_checkpoint))
    out = pipe(image(), "the red circle", max_new_tokens=4, threshold=1.0)
    assert out["instances"] == [] and not out["mask"].any()


def test_return_all_slots_flags_the_kept_ones(tiny_checkpoint):
    pipe = pipeline("reasoning-segmentation", model=str(tiny_checkpoint))
    out = pipe(image(), "the red circle", max_new_tokens=4, return_all_slots=True)
    threshold = pipe.model.config.confidence_threshold
    assert sorted(i["slot"] for i in out["instances"]) == [0, 1, 2]  # every slot, kept or not
    assert all(i["kept"] == (i["score"] >= threshold) for i in out["instances"])
    union = np.zeros(out["mask"].shape, bool)
    for instance in out["instances"]:
        if instance["kept"]:
            union |= instance["mask"]
    assert np.array_equal(union, out["mask"])  # the mask is still the union of the kept slots only
    nothing = pipe(image(), "the red circle", max_new_tokens=4, threshold=1.0, return_all_slots=True)
    assert len(nothing["instances"]) == 3 and not any(i["kept"] for i in nothing["instances"])
    assert not nothing["mask"].any()


def test_lists_and_shared_image_embeddings(tiny_checkpoint, monkeypatch):
    pipe = pipeline("reasoning-segmentation", model=str(tiny_checkpoint))
    calls = []
    original = pipe.model.get_image_embeddings
    monkeypatch.setattr(pipe.model, "get_image_embeddings", lambda x: calls.append(len(x)) or original(x))
    outs = pipe(image(), ["the red circle", "every shape", "the square"], max_new_tokens=4, threshold=0.0)
    assert len(outs) == 3 and sum(calls) == 1  # one SAM embedding for three instructions on one image
    pairs = pipe([image(seed=1), image(seed=2)], ["a", "b"], max_new_tokens=4)
    assert len(pairs) == 2 and sum(calls) == 3  # images counted, not encoder calls (a batch encodes several)
    dicts = pipe([{"image": image(), "instruction": "the square"}], max_new_tokens=4)
    assert len(dicts) == 1


def test_pipeline_equals_model_segment(tiny_checkpoint):
    """The pipeline adds no hidden behaviour: its masks equal model.segment's at the original size."""
    pipe = pipeline("reasoning-segmentation", model=str(tiny_checkpoint))
    processor = pipe.processor
    img = image()
    inputs = processor(images=[img], instructions=["the red circle"], return_tensors="pt")
    result = pipe.model.segment(max_new_tokens=5, pad_token_id=processor.tokenizer.pad_token_id,
                                eos_token_id=processor.tokenizer.eos_token_id, **inputs)
    out = pipe(img, "the red circle", max_new_tokens=5, threshold=0.0)
    for instance in out["instances"]:
        assert np.array_equal(instance["mask"], result.masks[0][instance["slot"]].numpy())


def test_pipeline_feeds_the_mask_refiner_the_pixels_of_each_image(tiny_checkpoint_factory, tmp_path):
    """A model with a mask refiner reads the SAM pixels beside the cached image embeddings: the pipeline's masks
    equal model.segment's, and two images in one call each get their own pixels."""
    model = AutoModel.from_pretrained(tiny_checkpoint_factory(mask_refiner_hidden_size=4)).eval()
    torch.nn.init.normal_(model.mask_refiner.layers[-1].weight, std=2.0)  # a refiner that moves the masks
    model.save_pretrained(tmp_path)
    AutoProcessor.from_pretrained(tiny_checkpoint_factory(mask_refiner_hidden_size=4)).save_pretrained(tmp_path)
    pipe = pipeline("reasoning-segmentation", model=str(tmp_path))
    processor = pipe.processor
    kwargs = dict(max_new_tokens=5, pad_token_id=processor.tokenizer.pad_token_id,
                  eos_token_id=processor.tokenizer.eos_token_id)
    images = [image(seed=3), image(seed=4)]
    outs = pipe(images, ["the red circle", "the red circle"], max_new_tokens=5, threshold=0.0)
    for img, out in zip(images, outs):
        result = pipe.model.segment(**processor(images=[img], instructions=["the red circle"], return_tensors="pt"),
                                    **kwargs)
        for instance in out["instances"]:
            assert np.array_equal(instance["mask"], result.masks[0][instance["slot"]].numpy())
    plain = AutoModel.from_pretrained(tmp_path, mask_refiner_hidden_size=0).eval()  # the same model, unrefined
    unrefined = plain.segment(**processor(images=[images[0]], instructions=["the red circle"], return_tensors="pt"),
                              **kwargs)
    assert not all(np.array_equal(i["mask"], unrefined.masks[0][i["slot"]].numpy()) for i in outs[0]["instances"])


def test_batch_of_three_images_equals_single_calls(tiny_checkpoint):
    model = AutoModel.from_pretrained(tiny_checkpoint).eval()
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    images = [image(48, 80, 0), image(64, 40, 1), image(30, 30, 2)]
    texts = ["the red circle", "every green shape that is left", "a"]
    kwargs = dict(max_new_tokens=5, pad_token_id=processor.tokenizer.pad_token_id,
                  eos_token_id=processor.tokenizer.eos_token_id)
    batched = model.segment(**processor(images=images, instructions=texts, return_tensors="pt"), **kwargs)
    for b in range(3):
        single = model.segment(**processor(images=[images[b]], instructions=[texts[b]], return_tensors="pt"), **kwargs)
        assert single.masks[0].shape == batched.masks[b].shape == (3, *images[b].size[::-1])
        agree = (single.masks[0] == batched.masks[b]).float().mean()
        assert agree > 0.999  # identical up to bilinear ties at the threshold
        torch.testing.assert_close(single.confidences[0], batched.confidences[b], atol=1e-4, rtol=1e-4)


def test_llava_backbone_checkpoint(tiny_checkpoint_factory):
    pipe = pipeline("reasoning-segmentation", model=str(tiny_checkpoint_factory(backbone_type="llava")))
    out = pipe(image(), "the red circle", max_new_tokens=4, threshold=0.0)
    assert out["mask"].shape == (48, 80) and len(out["instances"]) == 3


def test_save_reload_full_pipeline_identical(tiny_checkpoint, tmp_path):
    pipe = pipeline("reasoning-segmentation", model=str(tiny_checkpoint))
    pipe.model.save_pretrained(tmp_path)
    pipe.processor.save_pretrained(tmp_path)
    again = pipeline("reasoning-segmentation", model=str(tmp_path))
    a = pipe(image(), "the square", max_new_tokens=5, threshold=0.0)
    b = again(image(), "the square", max_new_tokens=5, threshold=0.0)
    assert a["completion"] == b["completion"]
    for x, y in zip(a["instances"], b["instances"]):
        assert np.array_equal(x["mask"], y["mask"]) and x["score"] == y["score"]


def test_bad_inputs(tiny_checkpoint, tmp_path):
    pipe = pipeline("reasoning-segmentation", model=str(tiny_checkpoint))
    with pytest.raises(ValueError, match="Instruction 0 is empty"):
        pipe(image(), "   ")
    with pytest.raises(ValueError, match="2 images and 3 instructions"):
        pipe([image(), image()], ["a", "b", "c"])
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="broken.png"):
        pipe(str(corrupt), "the red circle")
    with pytest.raises(ValueError, match="threshold"):
        pipe(image(), "the red circle", threshold=1.5)
    gray = Image.new("L", (20, 30), 128)
    rgba = Image.new("RGBA", (20, 30), (10, 20, 30, 128))
    for img in (gray, rgba):
        assert pipe(img, "the red circle", max_new_tokens=3)["mask"].shape == (30, 20)


def test_segment_cli_writes_overlay(tiny_checkpoint, tmp_path, capsys):
    overlay = tmp_path / "overlay.png"
    code = main(["segment", EXAMPLE, "every red shape", "--model", str(tiny_checkpoint), "--output", str(overlay),
                 "--threshold", "0.0", "--max_new_tokens", "6"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "reasoning:" in printed and "instance slot" in printed and "concept f" in printed
    written, source = Image.open(overlay), Image.open(EXAMPLE)
    factor = written.width // source.width  # enlarged by a whole factor to >= 384 px, caption and legend added
    assert written.width == factor * source.width and factor * min(source.size) >= 384 and written.mode == "RGB"
    assert written.height > factor * source.height
    nothing = tmp_path / "nothing.png"
    assert main(["segment", EXAMPLE, "every red shape", "--model", str(tiny_checkpoint), "--output", str(nothing),
                 "--threshold", "1.0", "--max_new_tokens", "4"]) == 0
    assert "instances:   none" in capsys.readouterr().out
    no_target = np.asarray(Image.open(nothing).convert("RGB"))
    assert no_target.shape[:2] != np.asarray(source).shape[:2]  # rendered (banner, legend), not the input unchanged


def test_demo_writes_gallery(tiny_checkpoint, tmp_path, capsys):
    assert main(["demo", "--model", str(tiny_checkpoint), "--output_dir", str(tmp_path), "--num_examples", "2"]) == 0
    page = (tmp_path / "index.html").read_text()
    assert page.count("class='card'") == 2 and "reasoning:" in page and "slot 0" in page
    assert (tmp_path / "example0.png").is_file() and (tmp_path / "example1_slot2.png").is_file()
    assert "demo written to" in capsys.readouterr().out


def test_segment_never_samples_slot_or_image_placeholder_tokens(tiny_checkpoint):
    model = AutoModel.from_pretrained(tiny_checkpoint).eval()
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    banned = set(model.never_generated_token_ids())
    tok = processor.tokenizer
    assert set(processor.slot_token_ids) <= banned and tok.convert_tokens_to_ids("<|image_pad|>") in banned
    with torch.no_grad():  # make the banned tokens the most likely next tokens
        model.backbone.lm_head.weight[sorted(banned)] += 50.0
    inputs = processor(images=[image()], instructions=["the red circle"], return_tensors="pt")
    result = model.segment(max_new_tokens=6, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **inputs)
    assert not banned & set(result.completion_ids[0].tolist())


def test_demo_marks_kept_and_dropped_slots(tmp_path, monkeypatch):
    """Instances hold numpy arrays: deciding kept / dropped must not compare them (it raised before)."""
    from types import SimpleNamespace

    import numpy as np
    import transformers

    from segcompass.demo import build_demo

    def instance(slot, score):
        mask = np.zeros((64, 64), dtype=bool)
        mask[8 * slot:8 * slot + 8, 8:16] = True
        return {"mask": mask, "score": score, "box": [8.0, 8.0 * slot, 8.0, 8.0], "slot": slot, "kept": score >= 0.5,
                "heatmap": np.full((16, 16), score, dtype=np.float32),
                "concepts": [{"feature": 3, "activation": 1.5, "weight": 0.5}]}

    config = SimpleNamespace(confidence_threshold=0.5, sam_config=SimpleNamespace(
        vision_config=SimpleNamespace(image_size=64)))
    calls = []

    def call(self, *args, **kwargs):
        calls.append(kwargs)
        return {"instances": [instance(0, 0.9), instance(1, 0.2)], "reasoning": "r"}

    pipe = type("FakePipe", (), {"model": SimpleNamespace(config=config), "__call__": call})()
    monkeypatch.setattr(transformers, "pipeline", lambda *a, **k: pipe)
    page = build_demo(tmp_path, model="unused", num_examples=1).read_text()
    assert "slot 0: 0.90 (kept)" in page and "slot 1: 0.20 (dropped)" in page
    assert "IoU of prediction and ground truth" in page and ("&#10003; right" in page or "&#10007; wrong" in page)
    assert (tmp_path / "example0_truth.png").is_file() and (tmp_path / "example0_slot1.png").is_file()
    assert calls and all(kwargs.get("return_all_slots") is True and "threshold" not in kwargs for kwargs in calls)


def test_warnings_say_when_the_input_is_outside_what_the_model_knows(tiny_checkpoint, caplog):
    """Unknown words, empty reasoning and a missing <REF_POS> are reported in the result (and logged once each)."""
    import logging

    import segcompass.pipelines as pipelines

    pipe = pipeline("reasoning-segmentation", model=str(tiny_checkpoint))
    pipelines._LOGGED_WARNINGS.clear()
    with caplog.at_level(logging.WARNING, logger="segcompass.pipelines"):
        out = pipe(image(), "the zorblax circle", max_new_tokens=2)  # 2 tokens: no closed <think>, no <REF_POS>
        again = pipe(image(), "the zorblax circle", max_new_tokens=2)
    assert any("'zorblax'" in w and "does not know" in w for w in out["warnings"])
    assert out["malformed"] and any("<REF_POS>" in w for w in out["warnings"])
    assert out["reasoning"] == "" and any("no reasoning" in w for w in out["warnings"])
    assert again["warnings"] == out["warnings"]
    assert sum("zorblax" in r.getMessage() for r in caplog.records) == 1  # logged once, reported every time
    assert not any("embedded model" in w for w in out["warnings"])  # only said for the embedded model


def test_embedded_model_warnings_name_its_domain():
    import segcompass.pipelines as pipelines
    from segcompass.presets import default_model_path

    if default_model_path() is None:
        pytest.skip("no shipped default model")
    pipe = pipeline("reasoning-segmentation", model=default_model_path())
    out = pipe(image(), "the mug next to the zorblax", max_new_tokens=40)
    assert out["warnings"] and all(pipelines.EMBEDDED_DOMAIN_NOTE in w for w in out["warnings"])
