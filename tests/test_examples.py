"""The example scripts run as documented (tiny, offline)."""

import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)


def test_segment_example(tiny_checkpoint, tmp_path):
    result = run("examples/segment.py", "examples/images/shapes.png", "every red shape", "--model",
                 str(tiny_checkpoint), "--output", str(tmp_path / "o.png"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reasoning:" in result.stdout and (tmp_path / "o.png").is_file()


def test_train_sae_example(tmp_path):
    result = run("examples/train_sae.py", "--tiny", "--output_dir", str(tmp_path / "sae"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "held-out:" in result.stdout and "fve" in result.stdout
    assert (tmp_path / "sae" / "model.safetensors").is_file()
