"""The example scripts run as their docstrings say (tiny, offline) and show what they claim."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from segcompass.presets import default_model_path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TESTED = {"segment.py", "train_sae.py", "train_grpo.py"}  # each has a test below


def run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, check=False)


def number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, (pattern, text[-2000:])
    return float(found.group(1))


def test_every_example_is_tested():
    assert {path.name for path in EXAMPLES.glob("*.py")} == TESTED


def test_segment_example(tiny_checkpoint, tmp_path):
    result = run("examples/segment.py", "examples/images/shapes.png", "every red shape", "--model",
                 str(tiny_checkpoint), "--output", str(tmp_path / "o.png"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reasoning:" in result.stdout and (tmp_path / "o.png").is_file()


@pytest.mark.skipif(default_model_path() is None, reason="this installation has no embedded default model")
def test_segment_example_on_the_embedded_model_is_quiet(tmp_path):
    # the documented call: no --model, so pipeline("reasoning-segmentation") uses the embedded model
    result = run("examples/segment.py", "examples/images/shapes.png", "every red shape", "--output",
                 str(tmp_path / "o.png"))
    assert result.returncode == 0, result.stderr[-2000:]
    reasoning = result.stdout.splitlines()[0]
    assert reasoning.startswith("reasoning:") and "red" in reasoning
    assert re.search(r"^slot \d score \d\.\d\d box ", result.stdout, flags=re.MULTILINE)  # at least one instance
    assert "Loading weights" not in result.stderr and "No model was supplied" not in result.stderr
    assert result.stderr.strip() == "", result.stderr[-2000:]


def test_train_sae_example(tmp_path):
    result = run("examples/train_sae.py", "--tiny", "--output_dir", str(tmp_path / "sae"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert number(r"fve (-?[\d.]+)", result.stdout) > 0.5  # the SAE reconstructs most of the hidden states' variance
    assert 0 < number(r"l0 ([\d.]+)", result.stdout) < 32  # sparse: a few of the 128 features per token
    assert "Writing model shards" not in result.stderr
    assert (tmp_path / "sae" / "model.safetensors").is_file()


def test_train_grpo_example(tmp_path):
    result = run("examples/train_grpo.py", "--tiny", "--output_dir", str(tmp_path / "grpo"), "--grpo_steps", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    first = number(r"lm loss ([\d.]+) ->", result.stdout)
    last = number(r"lm loss [\d.]+ -> ([\d.]+)", result.stdout)
    assert last < first / 2  # the warm-up teaches the answer format
    assert "GRPO: 2 steps" in result.stdout
    assert number(r"format reward ([\d.]+)", result.stdout) > 0  # a random model never answers in the format
    assert "sft step" not in result.stderr  # the warm-up shows a progress bar, not a log line per step
    assert "`gradient_checkpointing` is deprecated" not in result.stderr  # our config uses transformers 5's name
    assert (tmp_path / "grpo" / "model.safetensors").is_file()
