"""The feature dictionary: its file format, validation, the label rule, the builder on a planted SAE, and the models
and pipeline that carry it."""

import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, pipeline

import segcompass  # noqa: F401  (registers the Auto classes and the pipeline task)
from segcompass.data.synthetic import COLOURS
from segcompass.interpret.features import (UNLABELLED, build_feature_dictionary, colour_name, label_feature,
                                          label_word)
from segcompass.interpret.tokens import image_token_grid
from segcompass.sae import SparseAutoencoder, SparseAutoencoderConfig
from segcompass.sae.feature_dictionary import (
    CROPS_NAME,
    DICTIONARY_NAME,
    FeatureDictionary,
    FeatureEntry,
    find_feature_dictionary,
)

PURPLE = COLOURS["purple"]


def make_dictionary(d_sae=4, hook_layer=1, crops=True) -> FeatureDictionary:
    cell = {"sample_id": "s-1", "row": 0, "col": 2, "activation": 2.5, "crop": 0 if crops else None}
    entries = [FeatureEntry("purple", 0.25, 1.5, [("purple", 3), ("the", 1)], [cell])]
    entries += [FeatureEntry("image: grey", 0.5, 0.75, [], [dict(cell, sample_id="s-2", row=1, crop=1 if crops
                                                                  else None)])]
    entries += [FeatureEntry(None)] * (d_sae - 2)
    pixels = torch.arange(2 * 4 * 4 * 3, dtype=torch.uint8).reshape(2, 4, 4, 3) if crops else None
    return FeatureDictionary(entries, hook_layer=hook_layer, model="tiny", dataset="synthetic", split="train",
                             num_samples=2, num_tokens=8, crops=pixels, label_rule="test")


def make_sae(d_sae=4, hook_layer=1) -> SparseAutoencoder:
    return SparseAutoencoder(SparseAutoencoderConfig(d_in=8, d_sae=d_sae, hook_layer=hook_layer))


# ------------------------------------------------------------------------------------------------ file format
def test_save_load_round_trip(tmp_path):
    dictionary = make_dictionary()
    dictionary.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CROPS_NAME, DICTIONARY_NAME]  # no temporary files left
    text = (tmp_path / DICTIONARY_NAME).read_text()
    payload = json.loads(text)
    assert payload["format"] == "segcompass-feature-dictionary" and payload["d_sae"] == 4
    assert payload["samples"] == ["s-1", "s-2"] and payload["features"][1]["top_image_cells"] == [[1, 1, 2, 2.5, 1]]
    assert len([line for line in text.splitlines() if line.startswith('  {"label"')]) == 4  # one feature per line

    loaded = FeatureDictionary.load(tmp_path, d_sae=4, hook_layer=1)
    assert loaded.features == dictionary.features
    assert torch.equal(loaded.crops, dictionary.crops)
    assert (loaded.model, loaded.dataset, loaded.split, loaded.num_samples, loaded.num_tokens) == (
        "tiny", "synthetic", "train", 2, 8)
    assert loaded.label(0) == "purple" and loaded.label(2) is None
    assert loaded[1].top_image_cells == [{"sample_id": "s-2", "row": 1, "col": 2, "activation": 2.5, "crop": 1}]
    assert torch.equal(loaded.crops_of(1), dictionary.crops[[1]])
    assert loaded.most_frequent(10) == [1, 0]  # by frequency; never-fired features left out

    make_dictionary(crops=False).save(tmp_path)  # a dictionary without crops removes the stale crops file
    assert not (tmp_path / CROPS_NAME).exists() and FeatureDictionary.load(tmp_path).crops is None


def test_validation_errors(tmp_path):
    dictionary = make_dictionary()
    with pytest.raises(ValueError, match=r"4 features but the SAE has d_sae=8"):
        dictionary.check(8)
    with pytest.raises(ValueError, match=r"hook layer 1 but the SAE reads hook_layer=3"):
        dictionary.check(4, hook_layer=3)
    with pytest.raises(ValueError, match=r"feature index 4 is out of range .* d_sae=4"):
        dictionary.label(4)
    with pytest.raises(ValueError, match="crop 1 but there are 1 crops"):
        FeatureDictionary(dictionary.features, hook_layer=1, crops=dictionary.crops[:1])
    with pytest.raises(ValueError, match="uint8"):
        FeatureDictionary(dictionary.features, hook_layer=1, crops=torch.zeros(2, 4, 4, 3))

    dictionary.save(tmp_path)
    good = json.loads((tmp_path / DICTIONARY_NAME).read_text())
    broken = {
        "not a SegCompass feature dictionary": dict(good, format="other"),
        "version 7": dict(good, version=7),
        "declares d_sae=4 but lists 3 features": dict(good, features=good["features"][:3]),
        "feature 1 has image cell": dict(good, features=[good["features"][0], dict(
            good["features"][1], top_image_cells=[[9, 1, 2, 2.5, 1]])] + good["features"][2:]),
        "feature 0 has label 3": dict(good, features=[dict(good["features"][0], label=3)] + good["features"][1:]),
    }
    for message, payload in broken.items():
        (tmp_path / DICTIONARY_NAME).write_text(json.dumps(payload))
        with pytest.raises(ValueError, match=message):
            FeatureDictionary.load(tmp_path)
    (tmp_path / DICTIONARY_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        FeatureDictionary.load(tmp_path)
    (tmp_path / DICTIONARY_NAME).write_text(json.dumps(good))
    (tmp_path / CROPS_NAME).unlink()  # cells point at crops that are gone
    with pytest.raises(ValueError, match="keep feature_crops.safetensors"):
        FeatureDictionary.load(tmp_path)


# ------------------------------------------------------------------------------------------------ the label rule
def test_colour_names():
    for name, rgb in COLOURS.items():
        assert colour_name(np.full((4, 4, 3), rgb, dtype=np.uint8)) == name
    assert colour_name(np.full((2, 2, 3), 210, dtype=np.uint8)) == "grey"  # the synthetic backgrounds
    assert colour_name(np.full((2, 2, 3), 250, dtype=np.uint8)) == "white"
    assert colour_name(np.zeros((2, 2, 3), dtype=np.uint8)) == "black"
    mostly_grey = np.full((10, 3), 210, dtype=np.uint8)
    mostly_grey[:2] = PURPLE  # 20 % chromatic pixels are enough
    assert colour_name(mostly_grey) == "purple"
    with pytest.raises(ValueError, match="at least one pixel"):
        colour_name(np.zeros((0, 3), dtype=np.uint8))


def test_label_rule():
    purple = np.full((2, 4, 4, 3), PURPLE, dtype=np.uint8)
    assert label_feature(Counter({"the": 10, ".": 8, "Purple": 3}), 0) == "purple"  # stop-words, punctuation dropped
    assert label_feature(Counter({"left": 4, "right": 2, "at": 9}), 1) == "left / right"  # runner-up at half
    assert label_feature(Counter({"left": 5, "right": 2}), 0) == "left"
    assert label_feature(Counter({"red": 2}), 5, purple) == "image: purple"  # fires more on image tokens
    assert label_feature(Counter({"red": 5}), 5, purple) == "red"  # ties go to the words
    assert label_feature(Counter({"the": 4, ",": 2}), 0) == UNLABELLED
    assert label_feature(Counter(), 0, fired=False) is None
    # with the tokens seen, firing rates decide: 30 of 100 words beat 100 of 1000 image tokens, not 30 of 1000
    assert label_feature(Counter({"red": 30}), 100, purple, word_tokens=100, image_tokens=1000) == "red"
    assert label_feature(Counter({"red": 30}), 100, purple, word_tokens=1000, image_tokens=1000) == "image: purple"
    assert label_feature(Counter({"red": 10}), 100, purple, word_tokens=100, image_tokens=1000) == "red"  # tie: words
    assert label_feature(Counter({"red": 30}), 100, purple, word_tokens=0, image_tokens=1000) == "image: purple"
    assert label_word(" Left") == "left" and label_word("the") is None and label_word(",") is None


# ------------------------------------------------------------------------------------------------ the builder
ROWS = [
    {"instruction": "the red circle", "reasoning": "the red circle is on top", "sample_id": "row-0"},
    {"instruction": "the blue circle on the left", "reasoning": "the blue circle is on the left", "sample_id": "row-1"},
    {"instruction": "every red square", "reasoning": "", "sample_id": "row-2"},  # no reasoning: the prompt alone
]
WORD, TEMPLATE_WORD = "circle", "Find"  # "Find" occurs only in the prompt template


def planted_model(model, processor):
    """SAE features that fire on exactly one thing: f0 on ``circle``, f1 on the template word ``Find``, f2 on image
    tokens (activation 1 + the cell's grid index), f3 never; every other feature is off."""
    tokenizer = processor.tokenizer
    word, template = tokenizer.convert_tokens_to_ids(WORD), tokenizer.convert_tokens_to_ids(TEMPLATE_WORD)
    image = tokenizer.convert_tokens_to_ids(processor.image_token)
    assert tokenizer.unk_token_id not in (word, template)

    def hook_states(input_ids, attention_mask=None, **backbone_inputs):
        states = torch.zeros(*input_ids.shape, model.config.sae_config.d_in)  # (B, T, D)
        states[..., 0] = 5.0 * (input_ids == word)
        states[..., 1] = 5.0 * (input_ids == template)
        is_image = input_ids == image
        states[..., 2] = torch.where(is_image, 2.0 + is_image.cumsum(1) - 1, 0.0)  # 1 + cell index after the bias
        # f4: the word and 5 of the 18 image tokens (cells 0-1 of rows 0-1, cell 0 of row 2; batches of 2 rows)
        first = is_image & (is_image.cumsum(1) <= 2)
        if input_ids.shape[0] == 1:  # the last batch: row 2
            first = is_image & (is_image.cumsum(1) <= 1)
        states[..., 4] = 5.0 * ((input_ids == word) | first)
        return states

    with torch.no_grad():
        model.sae.W_enc.zero_()
        model.sae.b_enc.fill_(-1.0)
        model.sae.b_dec.zero_()
        for j in (0, 1, 2, 4):
            model.sae.W_enc[j, j] = 1.0
    model.get_hook_states = hook_states
    return model


def test_builder_on_planted_features(tiny_model, tiny_processor):
    image = Image.new("RGB", (80, 64), PURPLE)
    rows = [dict(row, image=image, masks=[]) for row in ROWS]
    model = planted_model(tiny_model, tiny_processor)
    dictionary = build_feature_dictionary(model, tiny_processor, rows, batch_size=2, top_cells=3, crop_size=4,
                                          dataset_name="planted", split="train")
    assert dictionary.d_sae == model.config.sae_config.d_sae and dictionary.num_samples == 3
    completions = ["<think>the red circle is on top</think><REF_POS>",
                   "<think>the blue circle is on the left</think><REF_POS>", ""]
    batch = tiny_processor([image] * 3, [r["instruction"] for r in ROWS], completions=completions, append_slots=True)
    assert dictionary.num_tokens == int(batch["attention_mask"].sum())

    word, template, cells, dead = dictionary[0], dictionary[1], dictionary[2], dictionary[3]
    assert word.label == WORD and word.top_text_tokens == [(WORD, 4)]  # 2 instructions + 2 reasonings
    assert word.frequency == pytest.approx(4 / dictionary.num_tokens, rel=1e-5)
    assert word.mean_activation == pytest.approx(4.0) and word.top_image_cells == []
    # the template word fires 3 times, but template tokens are not text the feature is labelled by
    assert template.label == UNLABELLED and template.top_text_tokens == []
    assert template.frequency == pytest.approx(3 / dictionary.num_tokens, rel=1e-5)
    # image feature: strongest at the last cells of each image; the first row wins ties
    grid = image_token_grid(batch["image_grid_thw"][0], tiny_processor.image_processor.merge_size)
    n = grid[0] * grid[1]
    assert cells.label == "image: purple"
    assert [(c["sample_id"], c["row"], c["col"], c["activation"]) for c in cells.top_image_cells] == [
        ("row-0", (n - 1) // grid[1], (n - 1) % grid[1], float(n)), ("row-1", (n - 1) // grid[1], (n - 1) % grid[1],
                                                                      float(n)),
        ("row-2", (n - 1) // grid[1], (n - 1) % grid[1], float(n))]
    assert cells.mean_activation == pytest.approx((n + 1) / 2)
    crops = dictionary.crops_of(2)
    assert crops.shape == (3, 4, 4, 3) and crops.dtype == torch.uint8
    assert torch.equal(crops, torch.tensor(PURPLE, dtype=torch.uint8).expand(3, 4, 4, 3))
    assert dead.label is None and dead.frequency == 0.0 and dictionary.label(100) is None
    # f4 fires on the word 4 times (of 14 word tokens) and on 5 of the 18 image tokens: more often on the image, but
    # at a lower rate, so the word labels it (the count rule would say image)
    both = dictionary[4]
    assert both.top_text_tokens == [(WORD, 4)] and len(both.top_image_cells) == 3
    assert both.frequency == pytest.approx(9 / dictionary.num_tokens, rel=1e-5)
    assert both.label == WORD
    assert label_feature(Counter({WORD: 4}), 5, dictionary.crops_of(4).numpy()) == "image: purple"
    assert (dictionary.dataset, dictionary.split, dictionary.hook_layer) == ("planted", "train", 1)


def test_builder_rejects_bad_arguments(tiny_model, tiny_processor):
    with pytest.raises(ValueError, match="`top_cells` must be an int >= 0"):
        build_feature_dictionary(tiny_model, tiny_processor, [], top_cells=-1)
    with pytest.raises(ValueError, match="No rows to run"):
        build_feature_dictionary(tiny_model, tiny_processor, [])


# ------------------------------------------------------------------------------------------------ carried by models
def test_sparse_autoencoder_carries_the_dictionary(tmp_path, monkeypatch):
    sae = make_sae()
    assert sae.feature_dictionary is None and sae.feature_label(0) is None
    sae.feature_dictionary = make_dictionary()
    sae.save_pretrained(tmp_path)
    assert (tmp_path / DICTIONARY_NAME).is_file() and (tmp_path / CROPS_NAME).is_file()
    for loaded in (SparseAutoencoder.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert loaded.feature_label(0) == "purple" and loaded.feature_label(2) is None
        assert torch.equal(loaded.feature_dictionary.crops, sae.feature_dictionary.crops)

    sae.save_saelens(tmp_path / "saelens")  # SAELens interop is untouched: no dictionary files there
    assert not (tmp_path / "saelens" / DICTIONARY_NAME).exists()

    sae.feature_dictionary = None  # saving an SAE without a dictionary removes a stale one
    sae.save_pretrained(tmp_path)
    assert not (tmp_path / DICTIONARY_NAME).exists() and not (tmp_path / CROPS_NAME).exists()
    assert SparseAutoencoder.from_pretrained(tmp_path).feature_dictionary is None

    pushed = []
    monkeypatch.setattr(SparseAutoencoder, "push_to_hub", lambda self, repo_id, **kw: pushed.append((repo_id, kw)))
    sae.feature_dictionary = make_dictionary()
    sae.save_pretrained(tmp_path / "push", push_to_hub=True, repo_id="me/sae", commit_message="m")
    assert pushed == [("me/sae", {"token": None, "commit_message": "m"})]
    assert (tmp_path / "push" / DICTIONARY_NAME).is_file()


def test_wrong_d_sae_fails_loading(tmp_path):
    make_sae(d_sae=8).save_pretrained(tmp_path)
    make_dictionary(d_sae=4).save(tmp_path)
    with pytest.raises(ValueError, match=r"describes 4 features but the SAE has d_sae=8"):
        SparseAutoencoder.from_pretrained(tmp_path)


def test_hub_lookup_uses_the_cache_only(tmp_path):
    assert find_feature_dictionary("nobody/no-such-model", 4, local_files_only=True) is None
    snapshot = tmp_path / "models--me--sae" / "snapshots" / ("0" * 40)
    make_dictionary().save(snapshot)
    (tmp_path / "models--me--sae" / "refs").mkdir()
    (tmp_path / "models--me--sae" / "refs" / "main").write_text("0" * 40)
    found = find_feature_dictionary("me/sae", 4, 1, cache_dir=str(tmp_path), local_files_only=True)
    assert found.label(0) == "purple" and found.crops is not None


def test_segcompass_checkpoint_carries_the_dictionary(tmp_path, tiny_model):
    d_sae = tiny_model.config.sae_config.d_sae
    dictionary = make_dictionary(d_sae=d_sae, hook_layer=tiny_model.config.sae_config.hook_layer)
    tiny_model.sae.feature_dictionary = dictionary
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / DICTIONARY_NAME).is_file()
    loaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)  # (model, info) still works
    assert loaded.sae.feature_label(0) == "purple" and loaded.sae.feature_dictionary.d_sae == d_sae
    assert torch.equal(loaded.sae.feature_dictionary.crops, dictionary.crops) and "missing_keys" in info

    make_dictionary(d_sae=d_sae + 1, hook_layer=1).save(tmp_path)
    with pytest.raises(ValueError, match=rf"{d_sae + 1} features but the SAE has d_sae={d_sae}"):
        AutoModel.from_pretrained(tmp_path)


def test_pipeline_concepts_carry_labels(tmp_path, tiny_checkpoint):
    image = Image.new("RGB", (80, 48), PURPLE)
    plain = pipeline("reasoning-segmentation", model=str(tiny_checkpoint))
    out = plain(image, "the red circle", max_new_tokens=4, threshold=0.0, top_concepts=3)
    concepts = [c for instance in out["instances"] for c in instance["concepts"]]
    assert concepts and all(c["label"] is None for c in concepts)

    labelled_dir = tmp_path / "labelled"
    shutil.copytree(tiny_checkpoint, labelled_dir)
    d_sae = plain.model.config.sae_config.d_sae
    entries = [FeatureEntry(f"word{j}", 0.1) for j in range(d_sae)]
    FeatureDictionary(entries, hook_layer=plain.model.config.sae_config.hook_layer).save(labelled_dir)
    labelled = pipeline("reasoning-segmentation", model=str(labelled_dir))
    out = labelled(image, "the red circle", max_new_tokens=4, threshold=0.0, top_concepts=3)
    concepts = [c for instance in out["instances"] for c in instance["concepts"]]
    assert concepts and all(c["label"] == f"word{c['feature']}" for c in concepts)
