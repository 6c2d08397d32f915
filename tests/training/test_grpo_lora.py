"""SegCompassGRPOTrainer with a LoRA adapter (peft) on the language model: tiny checkpoint, 4 synthetic samples,
2 GRPO steps with beta != 0 (CPU, a few seconds)."""

from __future__ import annotations

import math
import os

import pytest
import torch

pytest.importorskip("trl")
peft = pytest.importorskip("peft")

import segcompass  # noqa: F401  (registers the Auto classes)
from segcompass.testing import tiny_grpo_config
from segcompass.training.grpo_data import prepare_grpo_dataset
from segcompass.training.grpo_trainer import SegCompassGRPOTrainer

LANGUAGE_LORA = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
HEADS = ("concept_interface", "slot_mapper", "mask_decoder")


def _args(output_dir, **overrides):
    return tiny_grpo_config(output_dir, **{"learning_rate": 1e-3, "beta": 0.2, **overrides})


def _lora():
    return peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LANGUAGE_LORA)


@pytest.fixture(scope="module")
def lora_run(tiny, tmp_path_factory):
    from segcompass.modeling_segcompass import SegCompassForReasoningSegmentation

    directory, processor, dataset = tiny
    model = SegCompassForReasoningSegmentation.from_pretrained(directory)
    output_dir = tmp_path_factory.mktemp("grpo_lora_out")
    trainer = SegCompassGRPOTrainer(model, args=_args(output_dir), processing_class=processor,
                                    train_dataset=prepare_grpo_dataset(dataset, processor), peft_config=_lora())
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer.train()
    trainer.save_model(str(output_dir))
    return dict(trainer=trainer, model=model, before=before, output_dir=output_dir, processor=processor,
                dataset=dataset)


def test_adapters_are_in_the_segcompass_backbone(lora_run):
    trainer, model = lora_run["trainer"], lora_run["model"]
    assert trainer.model.get_base_model() is model.backbone
    names = [n for n, _ in model.backbone.named_parameters() if "lora_" in n]
    assert names and all("language_model" in n for n in names)
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == set(names)
    # beta != 0 with PEFT: no copied reference model, TRL disables the adapter instead
    assert trainer.beta == pytest.approx(0.2) and trainer.ref_model is None


def test_lora_and_heads_move_base_weights_do_not(lora_run):
    model, before = lora_run["model"], lora_run["before"]
    changed = {name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())}
    lora_b = [n for n in before if "lora_B" in n]
    assert lora_b and all(n in changed for n in lora_b)
    base = [n for n in before if n.startswith("backbone.") and "lora_" not in n]
    assert base and not any(n in changed for n in base), sorted(set(base) & changed)[:5]
    for head in HEADS:
        assert any(n.startswith(f"{head}.") for n in changed), f"{head} did not change"
    assert not any(n.startswith(("sae.", "vision_encoder.")) for n in changed)


def test_optimizer_holds_only_lora_and_heads(lora_run):
    trainer, model = lora_run["trainer"], lora_run["model"]
    names = {id(p): n for n, p in model.named_parameters()}
    peaks = {}
    for group in trainer.optimizer.param_groups:
        component = group["name"].split("/")[0]
        peaks[component] = group["initial_lr"]
        for p in group["params"]:
            name = names[id(p)]
            assert p.requires_grad, name
            if component == "backbone":
                assert "lora_" in name, name
    base = trainer.args.learning_rate
    assert peaks["backbone"] == pytest.approx(base) and peaks["slot_mapper"] == pytest.approx(80 * base)


def test_steps_log_finite_losses_with_kl(lora_run):
    logs = [entry for entry in lora_run["trainer"].state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        for key in ("loss", "kl", "seg/loss", "grad_norm"):
            assert math.isfinite(entry[key]), (key, entry[key])


def test_saved_model_is_merged_and_matches_the_trained_model(lora_run):
    from transformers import AutoModel

    output_dir, model, processor, dataset = (lora_run[k] for k in ("output_dir", "model", "processor", "dataset"))
    assert os.path.isfile(os.path.join(output_dir, "adapter", "adapter_config.json"))
    assert not os.path.exists(os.path.join(output_dir, "adapter_config.json"))
    loaded = AutoModel.from_pretrained(output_dir).eval()
    assert type(loaded).__name__ == "SegCompassForReasoningSegmentation"
    assert not any("lora_" in n or "base_layer" in n for n in loaded.state_dict())
    # the training model still has its (unmerged) adapters
    assert any("lora_B" in n for n in model.state_dict())

    row = dataset[0]
    batch = processor(row["image"], row["instruction"], completions="<think> it </think> <REF_POS>",
                      append_slots=True, return_tensors="pt")
    inputs = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(**inputs)
            got = loaded(**inputs)
    finally:
        model.train(was_training)
    for key in ("logits", "heatmap_logits", "confidence_logits", "mask_logits"):
        torch.testing.assert_close(getattr(got, key), getattr(expected, key), atol=1e-5, rtol=0)
    # the adapters matter: with them disabled, the SegCompass forward (same backbone object) gives other outputs
    with torch.no_grad(), lora_run["trainer"].model.disable_adapter():
        base = model.eval()(**inputs)
    model.train(was_training)
    assert (base.logits - expected.logits).abs().max() > 1e-4
    # ... and they reach the mask path: its input from the backbone (e_k) moves, so do the masks (how far the masks
    # move depends on the random heads' sensitivity, so only "they move" is asserted for them)
    assert (base.slot_embeddings - expected.slot_embeddings).abs().max() > 1e-4
    assert not torch.equal(base.mask_logits, expected.mask_logits)

    adapted = peft.PeftModel.from_pretrained(loaded.backbone.__class__(loaded.backbone.config),
                                             os.path.join(output_dir, "adapter"))
    assert any("lora_B" in n for n, _ in adapted.named_parameters())


def test_sync_ref_model_with_peft_is_rejected(tiny, tmp_path):
    directory, processor, rows = tiny
    dataset = prepare_grpo_dataset(rows.select(range(2)), processor)
    with pytest.raises(ValueError, match="sync_ref_model"):
        SegCompassGRPOTrainer(str(directory), args=_args(tmp_path / "out", sync_ref_model=True),
                              train_dataset=dataset, processing_class=processor, peft_config=_lora())
