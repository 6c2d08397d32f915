"""SAE training: planted-dictionary recovery, resumable checkpoints, caching from a tiny transformers model."""

import json

import datasets
import pytest
import torch

from segcompass import SparseAutoencoder, SparseAutoencoderConfig
from segcompass.sae.activations import ActivationStore, cache_activations, read_manifest
from segcompass.sae.planted import atom_recovery, make_planted_dictionary
from segcompass.sae.training import SAETrainer, SAETrainingArguments, evaluate_sae
from segcompass.testing import tiny_causal_lm


def test_planted_dictionary_is_recovered(tmp_path):
    # 64 planted atoms in 64 dimensions, 3 active per sample; a 128-feature ReLU SAE with the paper's objective.
    train = make_planted_dictionary(8000, d_in=64, num_atoms=64, sparsity=3, magnitude_range=(1.0, 3.0), seed=0)
    held_out = make_planted_dictionary(2000, seed=1, dictionary=train.dictionary, magnitude_range=(1.0, 3.0))
    sae = SparseAutoencoder(SparseAutoencoderConfig(d_in=64, d_sae=128, l1_coefficient=0.5))
    args = SAETrainingArguments(output_dir=str(tmp_path), learning_rate=3e-3, batch_size=64, num_epochs=10,
                                logging_steps=50)
    SAETrainer(sae, args, ActivationStore.from_tensor(train.activations)).train()
    metrics = evaluate_sae(sae, [held_out.activations])
    assert metrics["fve"] >= 0.9
    assert train.sparsity / 2 <= metrics["l0"] <= 2 * train.sparsity
    assert atom_recovery(sae.W_dec.detach(), train.dictionary, min_cosine=0.9) >= 0.9
    # artefacts: final model, metrics, per-step log, decoder kept at unit norm
    reloaded = SparseAutoencoder.from_pretrained(tmp_path)
    assert torch.equal(reloaded.W_dec, sae.W_dec)
    assert json.loads((tmp_path / "metrics.json").read_text())["fve"] >= 0.9
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("l0" in r and "dead_fraction" in r for r in logged) and any("eval" in r for r in logged)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(128), rtol=1e-4, atol=1e-4)


def test_evaluate_sae_hand_computed():
    sae = SparseAutoencoder(SparseAutoencoderConfig(d_in=2, d_sae=2))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.W_dec.copy_(torch.eye(2))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    x = torch.tensor([[1.0, -1.0], [3.0, 1.0]])  # relu drops the -1: reconstruction (1, 0), (3, 1)
    m = evaluate_sae(sae, [x])
    # squared error 1; mean (2, 0); total variance (1 + 1) + (1 + 1) = 4 -> fve = 0.75
    assert m["fve"] == pytest.approx(0.75) and m["mse"] == pytest.approx(0.5)
    assert m["l0"] == pytest.approx(1.5) and m["dead_fraction"] == 0.0


def _run(tmp_path, epochs, resume=True):
    data = make_planted_dictionary(600, d_in=16, num_atoms=16, sparsity=2, seed=3)
    torch.manual_seed(0)
    sae = SparseAutoencoder(SparseAutoencoderConfig(d_in=16, d_sae=32, l1_coefficient=0.3))
    args = SAETrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, batch_size=32, num_epochs=epochs,
                                resume=resume, logging_steps=5)
    trainer = SAETrainer(sae, args, ActivationStore.from_tensor(data.activations))
    trainer.train()
    return sae, trainer


def test_resume_continues_with_same_state(tmp_path):
    import shutil

    straight, _ = _run(tmp_path / "straight", epochs=3)
    _run(tmp_path / "interrupted", epochs=3)
    # simulate a run killed during its last epoch: the epoch-2 checkpoint and the final model never got written
    shutil.rmtree(tmp_path / "interrupted" / "checkpoint-epoch-2")
    (tmp_path / "interrupted" / "model.safetensors").unlink()
    resumed, trainer = _run(tmp_path / "interrupted", epochs=3)
    assert trainer.start_epoch == 2  # resumed after epoch 1, ran only epoch 2
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(resumed, name), getattr(straight, name))
    assert sorted(p.name for p in (tmp_path / "interrupted").glob("checkpoint-epoch-*")) == [
        "checkpoint-epoch-1", "checkpoint-epoch-2"]


def test_trainer_rejects_mismatched_width(tmp_path):
    sae = SparseAutoencoder(SparseAutoencoderConfig(d_in=8, d_sae=16))
    store = ActivationStore.from_tensor(torch.randn(10, 4))
    with pytest.raises(ValueError, match="d_in=4 but the SAE expects d_in=8"):
        SAETrainer(sae, SAETrainingArguments(output_dir=str(tmp_path)), store)


def test_store_split_is_disjoint_and_complete():
    acts = torch.arange(40, dtype=torch.float32)[:, None].repeat(1, 3)
    store = ActivationStore.from_tensor(acts, lengths=torch.full((10,), 4))
    train = torch.cat(list(store.iter_batches(3, split="train", eval_fraction=0.3, seed=1)))
    held = torch.cat(list(store.iter_batches(3, split="eval", eval_fraction=0.3, seed=1)))
    rows = sorted(train[:, 0].tolist() + held[:, 0].tolist())
    assert rows == list(range(40))  # every token exactly once across the two splits
    assert len(held) % 4 == 0 and len(held) > 0  # whole sequences are held out


def test_cache_activations_from_tiny_transformers_model(tmp_path):
    model, tokenizer = tiny_causal_lm(hidden_size=32, num_layers=2)
    texts = ["the red circle", "the blue square is left of the green shape", "every shape", "a triangle"] * 3
    dataset = datasets.Dataset.from_dict({"text": texts})
    out = cache_activations(model, tokenizer, dataset, tmp_path, hook_layer=1, batch_size=5, sequences_per_shard=4)
    manifest = read_manifest(out)
    assert manifest["complete"] and manifest["rows_done"] == 12 and manifest["d_in"] == 32
    store = ActivationStore.from_cache(out)
    lengths = torch.cat([store.load_shard(i)[1] for i in range(len(store.shards))])
    expected = [len(tokenizer(t).input_ids) for t in texts]
    assert lengths.tolist() == expected  # only valid (unpadded) tokens are stored
    acts, _ = store.load_shard(0)
    assert acts.dtype == torch.float16 and acts.shape[1] == 32
    # values equal hidden_states[1] of an unpadded forward of the first text
    with torch.no_grad():
        ids = tokenizer(texts[0], return_tensors="pt")
        reference = model(**ids, output_hidden_states=True).hidden_states[1][0]
    torch.testing.assert_close(acts[: expected[0]].float(), reference, rtol=1e-2, atol=1e-2)


def test_cache_resumes_after_interruption(tmp_path):
    model, tokenizer = tiny_causal_lm()
    dataset = datasets.Dataset.from_dict({"text": ["the red circle"] * 10})
    cache_activations(model, tokenizer, dataset.select(range(4)), tmp_path, hook_layer=2, batch_size=2,
                      sequences_per_shard=2)
    manifest = read_manifest(tmp_path)
    manifest["complete"] = False
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    cache_activations(model, tokenizer, dataset, tmp_path, hook_layer=2, batch_size=2, sequences_per_shard=2)
    manifest = read_manifest(tmp_path)
    assert manifest["rows_done"] == 10 and len(manifest["shards"]) == 5
    with pytest.raises(ValueError, match="hook_layer=2, not 1"):
        cache_activations(model, tokenizer, dataset, tmp_path, hook_layer=1)
    with pytest.raises(ValueError, match="out of range"):
        cache_activations(model, tokenizer, dataset, tmp_path / "x", hook_layer=7)
    with pytest.raises(ValueError, match="Column 'caption'"):
        cache_activations(model, tokenizer, dataset, tmp_path / "y", hook_layer=1, text_column="caption")


def test_cache_activations_from_tiny_image_text_model(tmp_path):
    import numpy as np
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    from segcompass.testing import tiny_config_for_processor
    from segcompass.testing_processor import tiny_segcompass_processor

    segcompass_processor = tiny_segcompass_processor()
    processor = segcompass_processor.backbone_processor  # the image-only Qwen2.5-VL processor
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(tiny_config_for_processor(segcompass_processor).backbone_config)
    images = [Image.fromarray((np.random.default_rng(i).random((40 + 16 * i, 60, 3)) * 255).astype("uint8"))
              for i in range(4)]
    texts = ["the red circle", "every shape", "the square", "a blue shape"]
    dataset = datasets.Dataset.from_dict({"image": images, "text": texts}).cast_column("image", datasets.Image())
    cache_activations(model, processor, dataset, tmp_path, hook_layer=1, image_column="image", batch_size=3)
    store = ActivationStore.from_cache(tmp_path)
    lengths = torch.cat([store.load_shard(i)[1] for i in range(len(store.shards))]).tolist()
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for length, image, text in zip(lengths, images, texts):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        single = processor(images=[image], text=[prompt], return_tensors="pt")
        assert length == int(single["attention_mask"].sum())  # image tokens included, padding excluded
        assert (single["input_ids"] == image_pad).sum() > 0
