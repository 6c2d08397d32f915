"""The command line: help, unknown commands, train-sae from a YAML config and from a cached tiny model."""

import datasets
import pytest
import yaml

from segcompass import SparseAutoencoder
from segcompass.cli import main
from segcompass.testing import tiny_causal_lm


def test_help_lists_commands(capsys):
    assert main([]) == 0
    assert "train-sae" in capsys.readouterr().out


def test_unknown_command(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["frobnicate"])
    assert exited.value.code == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_train_sae_planted_from_yaml(tmp_path, capsys):
    config = tmp_path / "sae.yaml"
    config.write_text(yaml.safe_dump({"planted": True, "output_dir": str(tmp_path / "out"), "learning_rate": 3e-3,
                                      "l1_coefficient": 0.5, "num_epochs": 4}))
    assert main(["train-sae", "--config", str(config), "--num_epochs", "5"]) == 0
    out = capsys.readouterr().out
    assert "atoms recovered" in out and "sample 2:" in out
    sae = SparseAutoencoder.from_pretrained(tmp_path / "out")
    assert sae.config.d_in == 64 and sae.config.l1_coefficient == 0.5


def test_train_sae_from_model_and_dataset(tmp_path, capsys):
    model, tokenizer = tiny_causal_lm()
    model.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    datasets.Dataset.from_dict({"text": ["the red circle is left of the blue square"] * 40}).save_to_disk(
        str(tmp_path / "data"))
    code = main(["train-sae", "--model", str(tmp_path / "lm"), "--dataset", str(tmp_path / "data"), "--hook_layer", "1",
                 "--output_dir", str(tmp_path / "sae"), "--num_epochs", "1", "--batch_size", "8", "--d_sae", "64"])
    assert code == 0
    sae = SparseAutoencoder.from_pretrained(tmp_path / "sae")
    assert sae.config.hook_layer == 1 and sae.config.d_in == 32 and sae.config.d_sae == 64
    assert "fve=" in capsys.readouterr().out


def test_train_sae_needs_a_source(tmp_path):
    with pytest.raises(SystemExit, match="--activations DIR"):
        main(["train-sae", "--output_dir", str(tmp_path)])
