"""``segcompass train-sae --planted`` with its own defaults recovers the planted atoms and says what the numbers mean."""

import re

from segcompass.cli import main
from segcompass.sae.planted import PlantedDemo


def number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, (pattern, text)
    return float(found.group(1))


def test_planted_demo_defaults_recover_the_atoms(tmp_path, capsys):
    assert main(["train-sae", "--planted", "--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    demo = PlantedDemo()
    assert f"learning rate {demo.learning_rate:g}" in out and f"l1_coefficient {demo.l1_coefficient:g}" in out
    assert number(r"atoms recovered +([\d.]+)%", out) >= 90
    assert demo.sparsity / 2 <= number(r"L0 +([\d.]+)", out) <= 2 * demo.sparsity
    assert number(r"FVE +([\d.]+)", out) >= 0.9
    # one line per number saying what it means
    assert f"matched by a decoder row with cosine >= {demo.min_cosine}" in out
    assert "mean active SAE features per sample (the data has 3 active atoms per sample)" in out
    assert "fraction of the held-out variance" in out
    assert "under 90% recovered" not in out


def test_planted_demo_keeps_values_the_user_gives(tmp_path, capsys):
    argv = ["train-sae", "--planted", "--output_dir", str(tmp_path), "--learning_rate", "1e-3",
            "--l1_coefficient", "0.7", "--num_epochs", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "l1_coefficient 0.7, learning rate 0.001, 1 epoch of 64 samples a step" in out
