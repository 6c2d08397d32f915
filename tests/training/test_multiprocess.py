"""A 2-process CPU run of the GRPO example through torchrun (gloo): both ranks train, rank 0 saves."""

import os
import subprocess
import sys

import pytest


TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")  # installed with torch, beside python


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not found beside the interpreter")
def test_two_process_cpu_grpo(tmp_path):
    torchrun = TORCHRUN
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "examples/train_grpo.py", "--tiny", "--output_dir", str(tmp_path),
         "--sft_steps", "20", "--grpo_steps", "2"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert log.count("GRPO: 2 steps") == 2  # one summary line per rank
    import segcompass  # noqa: F401
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tmp_path)
    assert type(model).__name__ == "SegCompassForReasoningSegmentation"
