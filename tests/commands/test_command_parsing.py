"""The command line's one parsing style: both option spellings, positionals, --config YAML, --version, one-line
errors, and a command package that imports no torch / transformers until a command runs."""

import ast
import importlib.metadata
import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from segcompass.commands import COMMANDS, main
from segcompass.commands._args import CommandError
from segcompass.commands.demo import demo_command
from segcompass.commands.evaluate import evaluate_command
from segcompass.commands.main import entry_point
from segcompass.commands.segment import segment_command
from segcompass.commands.train_sae import train_sae_command
from segcompass.commands.train_tiny import train_tiny_command

SRC = Path(__file__).resolve().parents[2] / "src" / "segcompass"


# ------------------------------------------------------------------------------------------------ spellings
@pytest.mark.parametrize(
    ("entry", "base", "dashed", "underscored", "expected"),
    [
        (evaluate_command, ["--rescore"],
         ["--output-dir", "runs/e", "--batch-size", "3", "--max-new-tokens", "9", "--num-samples", "5",
          "--data-dir", "/data", "--empty-policy", "zero", "--eval-size", "64", "--loader-option", "seed=1"],
         ["--output_dir", "runs/e", "--batch_size", "3", "--max_new_tokens", "9", "--num_samples", "5",
          "--data_dir", "/data", "--empty_policy", "zero", "--eval_size", "64", "--loader_option", "seed=1"],
         {"output_dir": "runs/e", "batch_size": 3, "max_new_tokens": 9, "num_samples": 5, "data_dir": "/data",
          "empty_policy": "zero", "eval_size": [64], "loader_option": ["seed=1"], "rescore": True}),
        (demo_command, [], ["--output-dir", "d", "--num-examples", "2"], ["--output_dir", "d", "--num_examples", "2"],
         {"output_dir": "d", "num_examples": 2}),
        (segment_command, ["a.png", "every red shape"], ["--max-new-tokens", "7", "--top-concepts", "2"],
         ["--max_new_tokens", "7", "--top_concepts", "2"],
         {"image": "a.png", "instruction": "every red shape", "max_new_tokens": 7, "top_concepts": 2}),
        (train_tiny_command, ["runs/t"], ["--evaluate-only"], ["--evaluate_only"],
         {"output_dir": "runs/t", "evaluate_only": True}),
        (train_sae_command, ["--planted"], ["--output-dir", "o", "--hook-layer", "3", "--l1-coefficient", "0.5"],
         ["--output_dir", "o", "--hook_layer", "3", "--l1_coefficient", "0.5"],
         {"hook_layer": 3, "l1_coefficient": 0.5, "output_dir": "o"}),
    ],
    ids=["evaluate", "demo", "segment", "train-tiny", "train-sae"],
)
def test_both_spellings_parse_to_the_same_options(entry, base, dashed, underscored, expected):
    with_dashes, with_underscores = entry.parse(base + dashed), entry.parse(base + underscored)
    assert with_dashes == with_underscores
    values = {k: v for parsed in with_dashes for k, v in vars(parsed).items()}
    assert {k: values[k] for k in expected} == expected


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_multi_word_option_has_both_spellings(name):
    if name == "train":
        pytest.importorskip("trl")
    for action in entry_point(name).parser()._actions:
        long_options = [o for o in action.option_strings if o.startswith("--")]
        words = {o[2:].replace("-", "_") for o in long_options}
        for word in words:
            if "_" in word:
                assert {f"--{word}", f"--{word.replace('_', '-')}"} <= set(long_options), (name, long_options)


# ------------------------------------------------------------------------------------------------ help
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_a_help_text_that_reads_right(name):
    if name == "train":
        pytest.importorskip("trl")
    parser = entry_point(name).parser()
    for action in parser._actions:
        assert (action.help or "").strip(), (name, action.option_strings or action.dest)
        negated = [o for o in action.option_strings if o.startswith("--no_")]
        if negated:  # HfArgumentParser's --no_x of a boolean defaulting to True: not the help of --x
            flag = "--" + negated[0].removeprefix("--no_")
            assert action.help == f"Turn {flag} off (same as {flag} false).", (name, action.help)
    assert parser.format_help().count("\n") > 3  # renders (argparse %-formats every help text)


def test_no_flags_parse_and_say_what_they_do():
    _, training = train_sae_command.parse(["--output-dir", "o", "--no_resume", "--no-init-b-dec-from-data"])
    assert (training.resume, training.init_b_dec_from_data) == (False, False)
    _, training = train_sae_command.parse(["--output-dir", "o"])
    assert (training.resume, training.init_b_dec_from_data) == (True, True)
    help_text = " ".join(train_sae_command.parser().format_help().split())
    assert "--no_resume, --no-resume Turn --resume off (same as --resume false)." in help_text
    assert "(--no_resume: start fresh, ignoring it). (default: True)" in help_text


def test_train_help_shows_the_first_options_and_help_all_shows_every_option(capsys):
    pytest.importorskip("trl")
    from segcompass.commands.train import first_options, train_command

    parser = train_command.parser()
    dests = {action.dest for action in parser._actions}
    groups = first_options()
    assert not [n for names in groups.values() for n in names if n not in dests]  # every declared option exists
    assert {"lambda_seg", "codebook_lr_multiplier", "use_one_cycle_schedule"} <= set(groups[list(groups)[-1]])
    for argv, most in ((["--help"], 250), (["--help-all"], None)):
        with pytest.raises(SystemExit) as exited:
            train_command(argv)
        assert exited.value.code in (0, None)
        out = capsys.readouterr().out
        lines = out.count("\n")
        if most:
            assert lines <= most and "'segcompass train --help-all' lists every option" in " ".join(out.split())
            assert "--lora_r" in out and "--sft_steps" in out and "--lambda_seg" in out
            assert "--adam_beta1" not in out and "--torch_compile" not in out  # behind --help-all
        else:
            assert lines > 3 * 250 and "--adam_beta1" in out and "--lambda_seg" in out
    with pytest.raises(SystemExit):
        segment_command(["--help"])  # a command without first options: --help is everything, no --help-all
    assert "--help-all" not in capsys.readouterr().out


def test_evaluate_prints_the_json_report_only_when_verbose():
    from segcompass.commands.evaluate import format_report

    (args,) = evaluate_command.parse(["--rescore", "--output-dir", "o"])
    assert args.verbose is False
    (args,) = evaluate_command.parse(["--rescore", "--output-dir", "o", "--verbose"])
    assert args.verbose is True
    report = {"table_row": {"table": "synthetic", "split": "test", "giou": 40.0, "ciou": 38.5},
              "num_samples": 2, "num_no_target": 0, "metrics": {"giou": 0.4}}
    short, verbose = format_report(report, verbose=False), format_report(report, verbose=True)
    assert short.splitlines() == ["synthetic test: 2 samples (0 no-target, 0 malformed answers)",
                                  "  giou 40.0  ciou 38.5"]
    assert verbose.startswith(short + "\n") and json.loads(verbose[len(short):]) == report


# ------------------------------------------------------------------------------------------------ positionals
def test_positionals_work_anywhere_between_options():
    (segment,) = segment_command.parse(["--model", "ckpt", "a.png", "--threshold", "0.4", "the red shape"])
    assert (segment.image, segment.instruction, segment.model, segment.threshold) == ("a.png", "the red shape",
                                                                                     "ckpt", 0.4)
    # a boolean flag without a value never takes the positional after it
    for argv in (["--smoke", "runs/t"], ["runs/t", "--smoke"], ["--smoke", "true", "runs/t"]):
        (tiny,) = train_tiny_command.parse(argv)
        assert (tiny.output_dir, tiny.smoke) == ("runs/t", True), argv
    (tiny,) = train_tiny_command.parse(["runs/t", "--smoke", "false", "--set", "a=1", "--set", "b=2"])
    assert (tiny.smoke, tiny.set) == (False, ["a=1", "b=2"])


def test_readme_invocations_parse(tmp_path, monkeypatch):
    readme = (SRC.parents[1] / "README.md").read_text()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sae.yaml").write_text("output_dir: runs/sae\n")  # segcompass train-sae --config sae.yaml
    lines = [line.split("#")[0].strip().removeprefix("bash tools/setup.sh && .venv/bin/")
             for line in readme.replace("\\\n", " ").splitlines()]
    invocations = [line for line in lines if line.startswith("segcompass ") and "..." not in line]
    assert len(invocations) >= 10
    for line in invocations:
        name, *argv = shlex.split(line)[1:]
        entry_point(name).parse(argv)  # raises CommandError if any documented option no longer parses


# ------------------------------------------------------------------------------------------------ --config
def test_config_yaml_is_overridden_by_flags(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"output-dir": "runs/from-yaml", "batch_size": 8, "num_samples": 20,
                                      "rescore": True, "eval_size": [32, 48], "loader_option": ["seed=3"]}))
    (args,) = evaluate_command.parse(["--batch-size", "2", "--config", str(config), "--num_samples", "5"])
    assert (args.output_dir, args.batch_size, args.num_samples) == ("runs/from-yaml", 2, 5)  # flags win
    assert (args.rescore, args.eval_size, args.loader_option) == (True, [32, 48], ["seed=3"])  # the file's values
    (args,) = evaluate_command.parse([f"--config={config}"])
    assert args.batch_size == 8

    positional = tmp_path / "tiny.yaml"
    positional.write_text(yaml.safe_dump({"output_dir": "runs/t", "seed": 3}))
    with pytest.raises(CommandError, match="positional argument"):
        train_tiny_command.parse(["--config", str(positional)])
    options = tmp_path / "tiny-options.yaml"
    options.write_text(yaml.safe_dump({"seed": 3, "smoke": True, "set": ["joint_steps=2", "grpo_steps=1"]}))
    for argv in (["runs/cli", "--config", str(options), "--seed", "4"], ["--config", str(options), "runs/cli",
                                                                          "--seed", "4", "--set", "lm_warmup_steps=1"]):
        (tiny,) = train_tiny_command.parse(argv)
        assert (tiny.output_dir, tiny.seed, tiny.smoke) == ("runs/cli", 4, True), argv
        assert tiny.set[:2] == ["joint_steps=2", "grpo_steps=1"], argv  # repeatable: the file's, then the flags'


def test_config_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--config", str(tmp_path / "missing.yaml")])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and err.startswith("error: cannot read --config")


# ------------------------------------------------------------------------------------------------ --version, errors
def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"segcompass {importlib.metadata.version('segcompass')}\n"


@pytest.mark.parametrize("argv", [["demo", "--bogus", "1"], ["evaluate", "--output-dir", "x", "--no-such-flag"],
                                  ["segment", "a.png", "words", "--top-concepts", "many"], ["train-tiny"]])
def test_usage_errors_are_one_line_and_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and f"segcompass {argv[0]} --help" in err, err
    assert str(exited.value) == err.strip()
    if "--bogus" in argv:
        assert "unrecognized arguments: --bogus 1" in err


def test_library_errors_are_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:  # rescore raises ValueError: nothing to rescore in an empty directory
        main(["evaluate", "--rescore", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and "no predictions.jsonl" in err, err


# ------------------------------------------------------------------------------------------------ imports
def test_commands_import_no_torch_until_a_command_runs():
    """``segcompass.commands`` (its own modules: the dispatcher, --help, --version and every command module) imports
    neither torch nor transformers. The parent package ``segcompass`` is stubbed: its ``__init__`` registers the
    model classes with transformers and so imports torch by design."""
    code = f"""
import importlib, io, json, sys, types, contextlib
package = types.ModuleType("segcompass")
package.__path__ = {json.dumps([str(SRC)])}
sys.modules["segcompass"] = package
import segcompass.commands
from segcompass.commands import COMMANDS, main
with contextlib.redirect_stdout(io.StringIO()) as out:
    assert main(["--help"]) == 0 and main(["--version"]) == 0
for module, _, _ in COMMANDS.values():
    importlib.import_module("segcompass.commands." + module)
print(json.dumps({{"heavy": sorted(m for m in ("torch", "transformers", "datasets", "trl") if m in sys.modules),
                  "printed": out.getvalue()}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["heavy"] == []
    assert "train-tiny" in result["printed"] and "segcompass " in result["printed"]


def test_library_modules_never_import_the_command_line():
    for path in SRC.rglob("*.py"):
        relative = path.relative_to(SRC)
        if relative.parts[0] == "commands" or relative.as_posix() == "cli.py":
            continue
        package = ["segcompass", *relative.parts[:-1]]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                names = [module] + [f"{module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                assert not name.startswith(("segcompass.commands", "segcompass.cli")), (relative, name)
