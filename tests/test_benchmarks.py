"""`python benchmarks/run.py --quick` runs every comparison and prints one `name: ours X, reference Y, ratio Z` line
each (timings are never asserted: a benchmark is not a test)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(?P<name>.+): ours (?P<ours>[0-9.]+) (?P<unit>\w+), reference (?P<ref>[0-9.]+) (?P=unit), "
                  r"ratio (?P<ratio>[0-9.]+)$")


def test_quick_run_prints_every_comparison(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if ": ours " in line]
    assert all(LINE.match(line) for line in lines), lines
    results = json.loads(out.read_text())
    assert len(results) == len(lines) and {r["group"] for r in results} == {"grpo", "concepts", "pipeline"}
    names = " | ".join(r["name"] for r in results)
    for expected in ("GRPO loss forward + backward", "GRPO activations held", "concept path vs SAE encode matmul",
                     "SAE encode", "pipeline, 4 instructions on one image", "pipeline, 2 images"):
        assert expected in names, names
    for r in results:
        assert r["ours"] > 0 and r["reference"] > 0 and r["ratio"] == pytest.approx(r["ours"] / r["reference"])


def test_unknown_group_is_named():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--only", "gpu"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown group(s) gpu" in done.stderr
