"""SAELens layout: round-trips, both config generations, and clear errors for broken directories."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from segcompass import SparseAutoencoder
from segcompass.testing import tiny_sae_config


@pytest.mark.parametrize("activation,k", [("relu", None), ("topk", 7), ("jumprelu", None)])
def test_roundtrip_identical_outputs(tmp_path, activation, k):
    sae = SparseAutoencoder(tiny_sae_config(activation=activation, k=k, hook_layer=5, apply_b_dec_to_input=True))
    with torch.no_grad():
        sae.b_dec.normal_()
        if activation == "jumprelu":
            sae.threshold.uniform_(0, 0.5)
    sae.save_saelens(tmp_path)
    tensors = load_file(str(tmp_path / "sae_weights.safetensors"))
    assert tensors["W_enc"].shape == (32, 128) and tensors["W_dec"].shape == (128, 32)
    assert ("threshold" in tensors) == (activation == "jumprelu")
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}[activation]
    loaded = SparseAutoencoder.from_saelens(tmp_path)
    assert loaded.config.hook_layer == 5 and loaded.config.activation == activation and loaded.config.k == k
    x = torch.randn(4, 32)
    assert torch.equal(sae(x).feature_acts, loaded(x).feature_acts)
    assert torch.equal(sae(x).reconstruction, loaded(x).reconstruction)


def _write_legacy(path, **cfg_overrides):
    cfg = {"d_in": 32, "d_sae": 128, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3},
           "hook_name": "blocks.12.hook_resid_post", "normalize_activations": "none"}
    cfg.update(cfg_overrides)
    path.mkdir(parents=True, exist_ok=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file({"W_enc": torch.randn(32, 128), "b_enc": torch.zeros(128), "W_dec": torch.randn(128, 32),
               "b_dec": torch.zeros(32)}, str(path / "sae_weights.safetensors"))


def test_legacy_config_and_transformerlens_hook_name(tmp_path):
    _write_legacy(tmp_path)
    sae = SparseAutoencoder.from_saelens(tmp_path)
    assert sae.config.activation == "topk" and sae.config.k == 3
    assert sae.config.hook_layer == 13  # blocks.12.hook_resid_post = hidden_states[13]
    assert SparseAutoencoder.from_saelens(tmp_path, hook_layer=12).config.hook_layer == 12


def test_jumprelu_log_threshold_is_exponentiated(tmp_path):
    cfg = {"architecture": "jumprelu", "d_in": 4, "d_sae": 3}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    save_file({"W_enc": torch.randn(4, 3), "b_enc": torch.zeros(3), "W_dec": torch.randn(3, 4), "b_dec": torch.zeros(4),
               "log_threshold": torch.log(torch.tensor([0.1, 0.2, 0.3]))}, str(tmp_path / "sae_weights.safetensors"))
    sae = SparseAutoencoder.from_saelens(tmp_path)
    torch.testing.assert_close(sae.threshold.data, torch.tensor([0.1, 0.2, 0.3]))


def test_missing_tensor_names_it(tmp_path):
    _write_legacy(tmp_path)
    tensors = load_file(str(tmp_path / "sae_weights.safetensors"))
    del tensors["b_dec"]
    save_file(tensors, str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match=r"missing tensors \['b_dec'\]"):
        SparseAutoencoder.from_saelens(tmp_path)


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
    _write_legacy(tmp_path, d_sae=64)
    with pytest.raises(ValueError, match=r"W_enc has shape \(32, 128\) .* implies \(32, 64\)"):
        SparseAutoencoder.from_saelens(tmp_path)


def test_missing_files_and_unsupported_options(tmp_path):
    with pytest.raises(ValueError, match="cfg.json not found"):
        SparseAutoencoder.from_saelens(tmp_path)
    _write_legacy(tmp_path / "norm", normalize_activations="expected_average_only_in")
    with pytest.raises(ValueError, match="normalize_activations"):
        SparseAutoencoder.from_saelens(tmp_path / "norm")
    _write_legacy(tmp_path / "gated", architecture="gated")
    with pytest.raises(ValueError, match="'gated' is not supported"):
        SparseAutoencoder.from_saelens(tmp_path / "gated")
    _write_legacy(tmp_path / "bigk", activation_fn_kwargs={"k": 1000})
    with pytest.raises(ValueError, match="k=1000"):
        SparseAutoencoder.from_saelens(tmp_path / "bigk")
