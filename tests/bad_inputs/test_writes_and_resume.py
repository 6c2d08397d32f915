"""Writes that cannot lose data, resumes that cannot mix settings, training that stops on a non-finite loss (issue 14).

- ``segcompass segment --output`` never overwrites the input image, and refuses a missing output directory;
- ``evaluate_model(resume=False)`` moves the old run aside (``previous-<timestamp>/``) instead of deleting it, and a
  run killed part-way leaves no report that disagrees with its predictions;
- resuming with another dtype / threshold / token limit is refused naming the field; a damaged run.json is one line;
- a finished SAE job run again keeps its metrics.json;
- SAE training, the supervised warm-up and GRPO stop with :class:`NonFiniteLossError` on a non-finite loss and never
  save non-finite weights;
- :class:`SegCompassGRPOConfig` refuses out-of-range values naming the field.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from segcompass import SegCompassForReasoningSegmentation, SparseAutoencoder, SparseAutoencoderConfig
from segcompass.data import loaders
from segcompass.evaluation import evaluate_model
from segcompass.evaluation.predictions import PREDICTIONS_FILE
from segcompass.evaluation.report import REPORT_FILE
from segcompass.evaluation.runner import RUN_FILE
from segcompass.sae.activations import ActivationStore
from segcompass.sae.training import NonFiniteLossError, SAETrainer, SAETrainingArguments

EVAL = {"num_samples": 4, "batch_size": 2, "max_new_tokens": 4}


@pytest.fixture(autouse=True)
def _private_registry(monkeypatch):
    """The "synthetic" registration made by the runner vanishes after each test."""
    monkeypatch.setattr(loaders, "_REGISTRY", dict(loaders._REGISTRY))


@pytest.fixture(scope="module")
def finished_run(tiny_checkpoint, tmp_path_factory) -> Path:
    """A finished 4-sample synthetic evaluation of the tiny checkpoint (copy it before changing anything)."""
    out = tmp_path_factory.mktemp("eval") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loaders, "_REGISTRY", dict(loaders._REGISTRY))
        evaluate_model(str(tiny_checkpoint), "synthetic", "test", output_dir=out, **EVAL)
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


# ------------------------------------------------------------------------------------------------ segment --output
def _png(path: Path) -> bytes:
    Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(path)
    return path.read_bytes()


@pytest.mark.parametrize("spelling", ["same", "dotted", "relative"])
def test_segment_refuses_to_overwrite_its_input(tiny_checkpoint, tmp_path, monkeypatch, capsys, spelling):
    from segcompass.commands.segment import segment_command

    image = tmp_path / "img.png"
    original = _png(image)
    monkeypatch.chdir(tmp_path)
    output = {"same": str(image), "dotted": str(tmp_path / "." / "img.png"), "relative": "img.png"}[spelling]
    with pytest.raises(SystemExit) as exited:
        segment_command([str(image), "the shape", "--model", str(tiny_checkpoint), "--output", output])
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2
    assert err.startswith("error: ") and "\n" not in err and "is the input image" in err
    assert image.read_bytes() == original


def test_segment_refuses_an_output_in_a_missing_directory(tiny_checkpoint, tmp_path, capsys):
    from segcompass.commands.segment import segment_command

    image = tmp_path / "img.png"
    _png(image)
    target = tmp_path / "missing" / "overlay.png"
    with pytest.raises(SystemExit) as exited:
        segment_command([str(image), "the shape", "--model", str(tiny_checkpoint), "--output", str(target)])
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and "does not exist" in err and "missing" in err and "\n" not in err
    assert not target.parent.exists()


# ------------------------------------------------------------------------------------------------ evaluation
def test_no_resume_keeps_the_old_run_aside_and_a_killed_run_leaves_no_stale_report(
    tiny_checkpoint, run_copy, monkeypatch
):
    old = {name: (run_copy / name).read_bytes() for name in (PREDICTIONS_FILE, RUN_FILE, REPORT_FILE)}
    calls = []
    original = SegCompassForReasoningSegmentation.segment

    def dies_on_the_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SegCompassForReasoningSegmentation, "segment", dies_on_the_second_batch)
    with pytest.raises(RuntimeError, match="killed"):
        evaluate_model(str(tiny_checkpoint), "synthetic", "test", output_dir=run_copy, resume=False, **EVAL)

    (previous,) = sorted(run_copy.glob("previous-*"))
    assert {name: (previous / name).read_bytes() for name in old} == old  # the old run, byte for byte
    assert not (run_copy / REPORT_FILE).exists()  # no report describing other predictions
    new = [json.loads(line) for line in (run_copy / PREDICTIONS_FILE).read_text().splitlines()]
    assert len(new) == 2  # the first batch of the new run

    # resuming the killed run finishes it and rebuilds the report from all four predictions
    monkeypatch.setattr(SegCompassForReasoningSegmentation, "segment", original)
    report = evaluate_model(str(tiny_checkpoint), "synthetic", "test", output_dir=run_copy, **EVAL)
    assert report["num_samples"] == 4
    assert json.loads((run_copy / REPORT_FILE).read_text()) == report


def test_a_second_no_resume_run_gets_its_own_previous_directory(tiny_checkpoint, run_copy):
    evaluate_model(str(tiny_checkpoint), "synthetic", "test", output_dir=run_copy, resume=False, **EVAL)
    evaluate_model(str(tiny_checkpoint), "synthetic", "test", output_dir=run_copy, resume=False, **EVAL)
    previous = sorted(run_copy.glob("previous-*"))
    assert len(previous) == 2 and all((p / PREDICTIONS_FILE).is_file() for p in previous)


@pytest.mark.parametrize("changed, field_name", [
    ({"dtype": "bfloat16"}, "dtype"),
    ({"threshold": 0.9}, "threshold"),
    ({"max_new_tokens": 5}, "max_new_tokens"),
    ({"ablation": "no_concepts"}, "ablation"),
])
def test_resume_with_other_settings_is_refused_naming_the_field(tiny_checkpoint, run_copy, changed, field_name):
    before = (run_copy / PREDICTIONS_FILE).read_bytes()
    with pytest.raises(ValueError, match=rf"another run \({field_name}: .*resume with the same {field_name}") as err:
        evaluate_model(str(tiny_checkpoint), "synthetic", "test", output_dir=run_copy, **{**EVAL, **changed})
    assert "--no-resume" in str(err.value)
    assert (run_copy / PREDICTIONS_FILE).read_bytes() == before
    assert json.loads((run_copy / RUN_FILE).read_text())["dtype"] == "float32"


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\xff\xfe"])
def test_a_damaged_run_json_is_one_line_naming_the_file(tiny_checkpoint, run_copy, content):
    (run_copy / RUN_FILE).write_bytes(content.encode("latin-1"))
    with pytest.raises(ValueError) as err:
        evaluate_model(str(tiny_checkpoint), "synthetic", "test", output_dir=run_copy, **EVAL)
    message = str(err.value)
    assert str(run_copy / RUN_FILE) in message and "\n" not in message and "resume=False" in message


# ------------------------------------------------------------------------------------------------ SAE training
def _sae_args(output_dir, **overrides):
    return SAETrainingArguments(output_dir=str(output_dir), **{
        "learning_rate": 1e-3, "batch_size": 16, "num_epochs": 1, "logging_steps": 1000, "eval_fraction": 0.25,
        **overrides,
    })


def _activations(seed=0):
    return torch.randn(128, 8, generator=torch.Generator().manual_seed(seed))


def _sae(seed=0):
    torch.manual_seed(seed)
    return SparseAutoencoder(SparseAutoencoderConfig(d_in=8, d_sae=16))


def test_rerunning_a_finished_sae_job_keeps_its_metrics(tmp_path):
    first = SAETrainer(_sae(), _sae_args(tmp_path), ActivationStore.from_tensor(_activations())).train()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == first and "fve" in saved and saved["epoch"] == 0
    again = SAETrainer(_sae(1), _sae_args(tmp_path), ActivationStore.from_tensor(_activations())).train()
    assert again == first and json.loads((tmp_path / "metrics.json").read_text()) == saved


def test_rerunning_a_finished_train_sae_command_keeps_its_metrics(tmp_path, capsys):
    from segcompass.commands.train_sae import train_sae_command

    argv = ["--planted", "--output-dir", str(tmp_path), "--num_epochs", "1"]
    assert train_sae_command(argv) == 0
    saved = (tmp_path / "metrics.json").read_text()
    assert json.loads(saved) and "fve" in json.loads(saved)
    assert train_sae_command(argv) == 0
    assert (tmp_path / "metrics.json").read_text() == saved


def _all_finite(directory: Path) -> bool:
    files = list(directory.rglob("*.safetensors"))
    assert files
    return all(torch.isfinite(t).all() for f in files for t in load_file(f).values())


def test_sae_training_on_a_huge_activation_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    SAETrainer(_sae(), _sae_args(tmp_path), ActivationStore.from_tensor(_activations())).train()
    assert (tmp_path / "checkpoint-epoch-0").is_dir()
    poisoned = _activations()
    poisoned[5, 3] = 1e30
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .* step \d+ \(epoch 1\).*activation cache"):
        SAETrainer(_sae(), _sae_args(tmp_path, num_epochs=2), ActivationStore.from_tensor(poisoned)).train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-epoch-*")) == ["checkpoint-epoch-0"]
    assert _all_finite(tmp_path)


def test_sae_training_from_scratch_on_a_huge_activation_saves_nothing(tmp_path):
    poisoned = _activations()
    poisoned[0, 0] = 1e30
    with pytest.raises(NonFiniteLossError, match=r"step 1 \(epoch 0\)") as err:
        SAETrainer(_sae(), _sae_args(tmp_path), ActivationStore.from_tensor(poisoned)).train()
    assert isinstance(err.value, ValueError)
    assert not list(tmp_path.rglob("*.safetensors")) and not (tmp_path / "metrics.json").exists()


# ------------------------------------------------------------------------------------------------ SFT / GRPO
@pytest.fixture
def tiny(tiny_checkpoint):
    """As tests/training/conftest.py ``tiny``: (checkpoint directory, processor, 4-row synthetic dataset)."""
    from segcompass import SegCompassProcessor
    from segcompass.data.synthetic import SyntheticConfig, build_synthetic_dataset

    processor = SegCompassProcessor.from_pretrained(tiny_checkpoint)
    return tiny_checkpoint, processor, build_synthetic_dataset("train", 4, config=SyntheticConfig(image_size=64))


def test_supervised_warmup_stops_on_a_non_finite_loss(tiny):
    from segcompass.training.sft import supervised_warmup

    directory, processor, dataset = tiny
    model = SegCompassForReasoningSegmentation.from_pretrained(directory)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(NonFiniteLossError, match=r"supervised warm-up step 0"):
        supervised_warmup(model, processor, dataset, num_steps=2, batch_size=2, learning_rate=1e-3,
                          lambda_seg=float("nan"))
    for name, param in model.named_parameters():  # no update was applied
        torch.testing.assert_close(param.detach(), before[name], rtol=0, atol=0)


def test_grpo_stops_on_a_non_finite_loss_without_saving(tiny, tmp_path):
    from segcompass.testing import tiny_grpo_config
    from segcompass.training.grpo_data import prepare_grpo_dataset
    from segcompass.training.grpo_trainer import SegCompassGRPOTrainer

    directory, processor, dataset = tiny
    out = tmp_path / "grpo"
    trainer = SegCompassGRPOTrainer(
        str(directory), args=tiny_grpo_config(out, max_steps=1, save_strategy="steps", save_steps=1),
        train_dataset=prepare_grpo_dataset(dataset, processor), processing_class=processor,
    )
    trainer.args.lambda_seg = float("nan")  # a loss that goes non-finite mid-run
    with pytest.raises(NonFiniteLossError, match=r"GRPO step 1 .*lower --learning_rate"):
        trainer.train()
    assert not list(out.glob("checkpoint-*"))
    assert all(torch.isfinite(p).all() for p in trainer.segcompass.parameters())


@pytest.mark.parametrize("field_name, value, allowed", [
    ("beta", -1.0, r"\[0.0, inf\)"),
    ("epsilon", 0.0, r"\(0.0, inf\)"),
    ("learning_rate", -1e-5, r"\[0.0, inf\)"),
    ("weight_decay", float("nan"), r"\[0.0, inf\)"),
    ("temperature", 0.0, r"\(0.0, inf\)"),
    ("top_p", 1.5, r"\(0.0, 1.0\]"),
    ("num_generations", 1, r"\[2, inf\)"),
    ("max_completion_length", 0, r"\[1, inf\)"),
    ("lambda_seg", -0.1, r"\[0.0, inf\)"),
    ("lambda_dice", float("inf"), r"\[0.0, inf\)"),
    ("codebook_lr_multiplier", -25.0, r"\[0.0, inf\)"),
    ("one_cycle_final_div_factor", 0.5, r"\[1.0, inf\)"),
    ("mask_confidence_threshold", 1.5, r"\[0.0, 1.0\]"),
    ("dataset_check_rows", 0, r"\[1, inf\)"),
])
def test_grpo_config_refuses_out_of_range_values(tmp_path, field_name, value, allowed):
    from segcompass.training.grpo_config import SegCompassGRPOConfig

    with pytest.raises(ValueError, match=rf"`{field_name}` = .* must be in {allowed}; pass e.g. --{field_name} "):
        SegCompassGRPOConfig(output_dir=str(tmp_path), use_cpu=True, **{field_name: value})


def test_grpo_config_accepts_the_edges(tmp_path):
    from segcompass.training.grpo_config import SegCompassGRPOConfig

    config = SegCompassGRPOConfig(output_dir=str(tmp_path), use_cpu=True, beta=0.0, top_p=1.0, num_generations=2,
                                  mask_confidence_threshold=1.0, codebook_lr_multiplier=0.0, dataset_check_rows=None)
    assert config.beta == 0.0 and config.num_generations == 2


def test_repairing_a_cut_log_with_non_ascii_text_keeps_every_whole_record(tmp_path):
    """The interrupted last line is cut by bytes, so records holding non-ASCII text survive the repair intact."""
    import json

    from segcompass.evaluation import PREDICTIONS_FILE, load_predictions

    records = [{"sample_id": f"s{i}", "instruction": "la forme à gauche — ★", "mask": {"size": [1, 1], "counts": "1"}}
               for i in range(2)]
    path = tmp_path / PREDICTIONS_FILE
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) + '{"sample_id": "s2", "ins',
                    encoding="utf-8")
    assert list(load_predictions(tmp_path, repair=True)) == ["s0", "s1"]
    with open(path, "a", encoding="utf-8") as handle:  # the runner appends the next record
        handle.write(json.dumps({**records[0], "sample_id": "s2"}, ensure_ascii=False) + "\n")
    assert list(load_predictions(tmp_path)) == ["s0", "s1", "s2"]
    assert load_predictions(tmp_path)["s1"]["instruction"] == "la forme à gauche — ★"


def test_save_pretrained_atomic_replaces_whole_files(tmp_path):
    from segcompass.utils.io import save_pretrained_atomic

    class Fails:
        def save_pretrained(self, directory):
            (Path(directory) / "config.json").write_text("{half")
            raise OSError("disk full")

    (tmp_path / "config.json").write_text('{"old": true}')
    with pytest.raises(OSError, match="disk full"):
        save_pretrained_atomic(Fails(), tmp_path)
    assert (tmp_path / "config.json").read_text() == '{"old": true}'  # the previous file is untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".save-")]  # no temporary left behind
