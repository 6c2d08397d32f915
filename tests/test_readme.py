"""The README is tested: every ```python block runs as pasted, and every `segcompass ...` command in a ```bash block
runs (with the embedded model and the shipped images), from a scratch directory that sees the repository's
`examples/`, `docs/` and `model_cards/`.

A few commands are too long for the suite; each is named below with what runs instead (a smaller size of the same
command, or the test that already runs it). A command that is neither run nor listed fails the test.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from segcompass.presets import default_model_path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# command prefix -> (what runs instead, why); matched against the command's words after "segcompass"
SMALLER = {
    ("evaluate", "--num-samples", "200"): ("--num-samples 200", "--num-samples 8"),
    ("explain", "--num-samples", "32"): ("--num-samples 32", "--num-samples 2"),
}
RUN_ELSEWHERE = {
    ("train-tiny",): "tests/test_recipe_tiny.py runs `train-tiny --smoke` (the full recipe takes about an hour)",
    ("app",): "tests/test_app_browser.py serves the app and drives it in Chromium (the command blocks)",
    ("train", "--tiny"): "tests/training tests run `segcompass train --tiny`",
}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.DOTALL)


def commands() -> list[list[str]]:
    """Every `segcompass ...` (argv after the program name) and `python examples/...` (argv starting with "python")
    invocation of the README's bash blocks, in order."""
    found = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            line = line.split("&&")[-1].strip()  # "bash tools/setup.sh && .venv/bin/segcompass ..." -> the command
            words = shlex.split(line) if line else []
            if words and words[0] in ("segcompass", ".venv/bin/segcompass"):
                found.append(words[1:])
            elif words[:2] and words[0] == "python" and words[1].startswith("examples/"):
                found.append(words)
    return found


def covered_elsewhere(argv: list[str]) -> str | None:
    for prefix, why in RUN_ELSEWHERE.items():
        if argv[: len(prefix)] == list(prefix) or (prefix[0] == argv[0] and all(p in argv for p in prefix[1:])):
            return why
    return None


def smaller(argv: list[str]) -> list[str]:
    line = shlex.join(argv)
    for prefix, (old, new) in SMALLER.items():
        if argv[0] == prefix[0] and old in line:
            line = line.replace(old, new)
    return shlex.split(line)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    for name in ("examples", "docs", "model_cards"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_has_snippets_and_commands():
    assert len(blocks("python")) >= 3 and len(commands()) >= 10


@pytest.mark.skipif(default_model_path() is None, reason="no shipped default model")
@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_block_runs_as_pasted(index, scratch):
    code = blocks("python")[index]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-c", code], cwd=scratch, capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, f"README python block {index} failed:\n{code}\n{result.stderr[-3000:]}"


@pytest.mark.skipif(default_model_path() is None, reason="no shipped default model")
def test_every_command_runs(scratch, capsys):
    from segcompass.commands import main
    from segcompass.commands.main import entry_point
    from segcompass.commands.registry import COMMANDS

    ran, elsewhere = [], []
    for argv in commands():
        if argv[0] == "python":  # an example script, run as the README says (from the scratch directory)
            result = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, f"`{shlex.join(argv)}` failed:\n{result.stderr[-3000:]}"
            ran.append(argv)
            continue
        assert argv and argv[0] in (*COMMANDS, "--help", "--version"), f"README names an unknown command: {argv}"
        why = covered_elsewhere(argv)
        if why:
            entry_point(argv[0]).parse(argv[1:])  # the README's spelling still parses; the run is elsewhere
            elsewhere.append((argv, why))
            continue
        argv = smaller(argv)
        try:
            status = main(argv)
        except SystemExit as exited:  # a command's one-line error
            pytest.fail(f"`segcompass {shlex.join(argv)}` failed: {exited} {capsys.readouterr().err[-2000:]}")
        assert status in (0, None), argv
        ran.append(argv)
    assert len(ran) >= 8, ran
    assert all(why for _, why in elsewhere)
