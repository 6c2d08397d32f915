"""Benchmark evaluation: report layout, predictions.jsonl, resume, rescore, the command, hand-computed metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest

from segcompass import SegCompassForReasoningSegmentation
from segcompass.commands.evaluate import evaluate_command
from segcompass.data import available_datasets, load_segmentation_dataset, loaders, register_dataset
from segcompass.evaluation import (
    PREDICTIONS_FILE,
    REPORT_FILE,
    RUN_FILE,
    evaluate_model,
    load_predictions,
    register_synthetic_dataset,
    rescore,
)
from segcompass.utils.masks import decode_rle, encode_rle

sys.path.insert(0, str(Path(__file__).parent / "data"))
import loader_fixtures  # noqa: E402  (helpers writing gRefCOCO in its real on-disk format)

REPORT_KEYS = {"dataset", "split", "num_samples", "num_no_target", "model", "data_dir", "loader_kwargs", "threshold",
               "max_new_tokens", "num_malformed", "metric_options", "predictions", "metrics", "paper_columns",
               "table_row", "ablation"}
METRICS = {"ciou", "giou", "pr@0.5", "pr@0.6", "pr@0.7", "pr@0.8", "pr@0.9", "n_acc", "t_acc"}


@pytest.fixture(autouse=True)
def _private_registry(monkeypatch):
    """Registrations made here ("synthetic") vanish after each test, so the registry tests see the built-ins only."""
    monkeypatch.setattr(loaders, "_REGISTRY", dict(loaders._REGISTRY))


@pytest.fixture
def checkpoint(tiny_checkpoint) -> str:
    """The session's tiny checkpoint (tests/conftest.py) as the string a user passes to ``--model``."""
    return str(tiny_checkpoint)


@pytest.fixture
def gres_root(tmp_path: Path) -> Path:
    """gRefCOCO fixture (as ``loader_fixtures.grefcoco_root``): val has 4 rows, one of them no-target."""
    root = tmp_path / "gres"
    loader_fixtures.write_coco_images(root, "train2014")
    (root / "grefcoco").mkdir(parents=True)
    (root / "grefcoco" / "instances.json").write_text(json.dumps(loader_fixtures.instances_json()))
    (root / "grefcoco" / "grefs(unc).json").write_text(json.dumps(loader_fixtures.grefs()))
    return root


@pytest.fixture
def segment_calls(monkeypatch) -> list[int]:
    """Rows passed to each ``model.segment`` call."""
    calls: list[int] = []
    original = SegCompassForReasoningSegmentation.segment

    def counting(self, *args, **kwargs):
        calls.append(int(kwargs["input_ids"].shape[0]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SegCompassForReasoningSegmentation, "segment", counting)
    return calls


def read_lines(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / PREDICTIONS_FILE).read_text().splitlines() if line.strip()]


def test_synthetic_registration_keeps_existing_loader():
    register_synthetic_dataset()
    assert "synthetic" in available_datasets()
    ds = load_segmentation_dataset("synthetic", None, "val", num_samples=2)  # "val" -> "validation"
    assert set(ds["split"]) == {"validation"} and len(ds) == 2
    register_synthetic_dataset()  # idempotent
    register_dataset("synthetic", lambda data_dir, split, **kw: "mine", overwrite=True)
    register_synthetic_dataset()  # keeps the user's loader
    assert load_segmentation_dataset("synthetic", None, "test") == "mine"


def test_synthetic_report_and_predictions(checkpoint, tmp_path, segment_calls):
    out = tmp_path / "synthetic"
    report = evaluate_model(checkpoint, "synthetic", "test", output_dir=out, num_samples=5, batch_size=2,
                            max_new_tokens=4, threshold=0.0)
    assert segment_calls == [2, 2, 1]
    assert set(report) == REPORT_KEYS and set(report["metrics"]) == METRICS
    assert report["num_samples"] == 5 and report["dataset"] == "synthetic" and report["split"] == "test"
    assert report["model"] == checkpoint and report["threshold"] == 0.0
    config = SegCompassForReasoningSegmentation.config_class.from_pretrained(checkpoint)
    side = config.sam_config.vision_config.image_size
    assert report["loader_kwargs"] == {"image_size": side}  # synthetic scenes at the model's SAM input size
    assert report["metric_options"]["protocol"] == "lisa" and report["metric_options"]["empty_policy"] == "one"
    row = report["table_row"]
    assert row["table"] == "synthetic" and row["split"] == "test"
    assert row["gIoU"] == pytest.approx(100 * report["metrics"]["giou"])
    assert row["cIoU"] == pytest.approx(100 * report["metrics"]["ciou"])
    assert json.loads((out / REPORT_FILE).read_text()) == report
    assert json.loads((out / RUN_FILE).read_text())["dataset"] == "synthetic"

    records = read_lines(out)
    assert len(records) == 5 and len({r["sample_id"] for r in records}) == 5
    for record in records:
        keys = {"sample_id", "image_id", "instruction", "reasoning", "malformed", "scores", "kept_slots", "mask"}
        assert keys <= set(record)
        assert record["kept_slots"] == list(range(len(record["scores"])))  # threshold 0 keeps every slot
        slots = np.stack([decode_rle(m) for m in record["slot_masks"]])  # (K, H, W)
        np.testing.assert_array_equal(decode_rle(record["mask"]), slots.any(0))
        assert decode_rle(record["mask"]).shape == (record["height"], record["width"]) == (side, side)

    segment_calls.clear()  # a longer run over the same output_dir predicts only the new rows
    more = evaluate_model(checkpoint, "synthetic", "test", output_dir=out, num_samples=6, batch_size=2,
                          max_new_tokens=4, threshold=0.0)
    assert segment_calls == [1] and more["num_samples"] == 6 and len(read_lines(out)) == 6


def test_grefcoco_fixture_resume_and_rescore(checkpoint, gres_root, tmp_path, segment_calls):
    out = tmp_path / "gres-val"
    full = evaluate_model(checkpoint, "grefcoco", "val", gres_root, output_dir=out, batch_size=2, max_new_tokens=4,
                          threshold=0.0)
    assert sum(segment_calls) == 4
    assert full["num_samples"] == 4 and full["num_no_target"] == 1
    assert full["table_row"]["table"] == "gRefCOCO" and full["table_row"]["paper_table"] == "Table 2"
    assert full["paper_columns"] == ["gIoU", "cIoU", "N-acc", "T-acc"]
    assert list(full["table_row"])[:7] == ["table", "paper_table", "split", "gIoU", "cIoU", "N-acc", "T-acc"]
    assert full["table_row"]["N-acc"] == pytest.approx(0.0)  # threshold 0: a mask on the no-target row too
    lines = (out / PREDICTIONS_FILE).read_text().splitlines(keepends=True)
    assert len(lines) == 4

    # interrupted run: two complete lines and half of the third
    (out / PREDICTIONS_FILE).write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    segment_calls.clear()
    resumed = evaluate_model(checkpoint, "grefcoco", "val", gres_root, output_dir=out, batch_size=2,
                             max_new_tokens=4, threshold=0.0)
    assert segment_calls == [2]  # only the two missing samples
    assert resumed == full
    assert len(read_lines(out)) == 4

    segment_calls.clear()
    assert evaluate_model(checkpoint, "grefcoco", "val", gres_root, output_dir=out, batch_size=2, max_new_tokens=4,
                          threshold=0.0) == full
    assert segment_calls == []  # nothing left to predict

    # rescore from the saved predictions alone: same numbers; other options give another file
    assert rescore(out) == full
    rela = rescore(out, protocol="rela")
    assert rela["metric_options"]["protocol"] == "rela" and (out / "report-rescored.json").is_file()
    strict = rescore(out, threshold=1.0)  # nothing kept: every row predicts "no target"
    assert strict["metrics"]["n_acc"] == 1.0 and strict["metrics"]["t_acc"] == 0.0
    assert json.loads((out / REPORT_FILE).read_text()) == full

    with pytest.raises(ValueError, match="another run"):
        evaluate_model(checkpoint, "grefcoco", "val", gres_root, output_dir=out, threshold=0.5, max_new_tokens=4)


def test_command_evaluate_and_errors(checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cli"
    code = evaluate_command(["--model", checkpoint, "--dataset", "synthetic", "--split", "val",
                             "--output-dir", str(out), "--num-samples", "3", "--batch-size", "3",
                             "--max-new-tokens", "4"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "synthetic val: 3 samples" in printed and "gIoU" in printed
    assert json.loads((out / REPORT_FILE).read_text())["num_samples"] == 3

    assert evaluate_command(["--output-dir", str(out), "--rescore"]) == 0
    assert "synthetic val: 3 samples" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exited:  # one "error: ..." line on stderr, exit status 2
        evaluate_command(["--model", str(tmp_path / "missing"), "--dataset", "synthetic",
                          "--output-dir", str(tmp_path / "x")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "missing" in err
    with pytest.raises(SystemExit) as exited:
        evaluate_command(["--model", checkpoint, "--dataset", "imagenet", "--output-dir", str(tmp_path / "y")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'imagenet'" in err and "grefcoco" in err and "synthetic" in err
    import segcompass.presets

    monkeypatch.setattr(segcompass.presets, "default_model_path", lambda: None)  # an install without the default
    with pytest.raises(SystemExit) as exited:
        evaluate_command(["--dataset", "synthetic", "--output-dir", str(tmp_path / "z")])
    assert exited.value.code == 2 and "--model is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        evaluate_command(["--output-dir", str(tmp_path / "empty"), "--rescore"])
    assert exited.value.code == 2 and "no predictions.jsonl" in capsys.readouterr().err


def test_evaluate_model_argument_errors(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        evaluate_model(checkpoint, "nope", "val", output_dir=tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        evaluate_model(tmp_path / "no-model", "synthetic", "test", output_dir=tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_model(checkpoint, "synthetic", "test", output_dir=tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="threshold"):
        evaluate_model(checkpoint, "synthetic", "test", output_dir=tmp_path, threshold=1.5)
    with pytest.raises(ValueError, match="unknown metric option"):
        evaluate_model(checkpoint, "synthetic", "test", output_dir=tmp_path, metric_options={"iou": 1})


# ------------------------------------------------------------------------------------------------ hand-computed
def _mask(*cells) -> np.ndarray:
    mask = np.zeros((4, 4), dtype=bool)
    for rows, cols in cells:
        mask[rows, cols] = True
    return mask


ALL = slice(None)


def crafted(tmp_path: Path):
    """Five 4x4 samples with known I / U (ground-truth rows and a hand-written predictions.jsonl)."""
    samples = [
        # (sample_id, GT instances, ignore, prediction)           I  U   IoU
        ("a", [_mask((0, ALL)), _mask((1, ALL))], None, _mask((0, ALL))),       # 4  8   1/2 (GT = union of two)
        ("b", [_mask((ALL, slice(0, 2)))], None, _mask((ALL, slice(1, 3)))),    # 4  12  1/3
        ("c", [], None, _mask()),                                               # 0  0   1 (empty union, rejected)
        ("d", [], None, _mask((0, slice(0, 2)))),                               # 0  2   0 (no target, predicted)
        ("e", [_mask((3, ALL))], _mask((2, ALL)), _mask((slice(2, 4), ALL))),  # 4  4   1 (row 2 ignored)
    ]
    gt = datasets.Dataset.from_list([
        {"sample_id": sid, "masks": [encode_rle(m) for m in masks],
         "ignore_mask": None if ign is None else encode_rle(ign), "no_target": not masks,
         "height": 4, "width": 4, "source": "grefcoco", "split": "val"}
        for sid, masks, ign, _ in samples
    ])
    out = tmp_path / "crafted"
    out.mkdir()
    with open(out / PREDICTIONS_FILE, "w") as handle:
        for sid, _, _, pred in reversed(samples):  # order does not matter
            handle.write(json.dumps({"sample_id": sid, "mask": encode_rle(pred), "malformed": sid == "d"}) + "\n")
    return gt, out


def test_rescore_hand_computed(tmp_path):
    gt, out = crafted(tmp_path)
    report = rescore(out, gt)
    metrics = report["metrics"]
    assert metrics["ciou"] == pytest.approx((4 + 4 + 0 + 0 + 4) / (8 + 12 + 0 + 2 + 4))
    assert metrics["giou"] == pytest.approx((1 / 2 + 1 / 3 + 1 + 0 + 1) / 5)
    assert metrics["pr@0.5"] == pytest.approx(2 / 3)  # targets a, b, e: IoU 1/2, 1/3, 1
    assert metrics["n_acc"] == pytest.approx(1 / 2) and metrics["t_acc"] == 1.0
    assert report["num_samples"] == 5 and report["num_no_target"] == 2 and report["num_malformed"] == 1
    assert report["table_row"]["table"] == "gRefCOCO"  # from the rows' source
    assert report["table_row"]["gIoU"] == pytest.approx(100 * metrics["giou"])
    assert json.loads((out / REPORT_FILE).read_text()) == report

    zero = rescore(out, gt, empty_policy="zero", write=False)
    assert zero["metrics"]["giou"] == pytest.approx((1 / 2 + 1 / 3 + 0 + 0 + 1) / 5)
    assert zero["metrics"]["ciou"] == pytest.approx(metrics["ciou"])


def test_rescore_rethreshold_and_missing(tmp_path):
    gt, out = crafted(tmp_path)
    records = load_predictions(out)
    # sample "a" re-written with two slots: the kept one (0.9) equals the stored mask, the other (0.3) covers row 1
    slot0, slot1 = _mask((0, ALL)), _mask((1, ALL))
    records["a"].update(scores=[0.9, 0.3], threshold=0.5, kept_slots=[0], height=4, width=4,
                        slot_masks=[encode_rle(slot0), encode_rle(slot1)])
    for record in records.values():
        if "slot_masks" not in record:
            mask = decode_rle(record["mask"])
            record.update(scores=[0.9], threshold=0.5, kept_slots=[0], height=4, width=4,
                          slot_masks=[encode_rle(mask)])
    (out / PREDICTIONS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records.values()))
    assert rescore(out, gt, write=False)["metrics"]["pr@0.5"] == pytest.approx(2 / 3)
    low = rescore(out, gt, threshold=0.2, write=False)  # "a" now predicts both rows: IoU 1
    assert low["metrics"]["ciou"] == pytest.approx((8 + 4 + 0 + 0 + 4) / (8 + 12 + 0 + 2 + 4))
    # a record made with duplicate_iou re-thresholds with the same rule: slot 1 now copies slot 0 and is dropped
    records["a"].update(duplicate_iou=0.5, slot_masks=[encode_rle(slot0), encode_rle(slot0 | slot1)])
    (out / PREDICTIONS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records.values()))
    deduplicated = rescore(out, gt, threshold=0.2, write=False)  # "a" predicts row 0 only again: IoU 1/2
    assert deduplicated["metrics"]["ciou"] == pytest.approx((4 + 4 + 0 + 0 + 4) / (8 + 12 + 0 + 2 + 4))
    # a record made with an instance limit (its answer named one object) keeps the limit when re-thresholded
    records["a"].update(duplicate_iou=None, max_instances=1, slot_masks=[encode_rle(slot0), encode_rle(slot1)])
    (out / PREDICTIONS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records.values()))
    limited = rescore(out, gt, threshold=0.2, write=False)  # slot 1 passes 0.2 but the answer named one object
    assert limited["metrics"]["ciou"] == pytest.approx(deduplicated["metrics"]["ciou"])

    kept = [r for r in records.values() if r["sample_id"] != "b"]
    (out / PREDICTIONS_FILE).write_text("".join(json.dumps(r) + "\n" for r in kept))
    with pytest.raises(ValueError, match="1 of 5 samples have no prediction"):
        rescore(out, gt)


def test_ablations_change_the_model_only_inside_the_block(checkpoint):
    import torch

    from PIL import Image
    from transformers import AutoProcessor

    from segcompass.interpret.ablations import ablate

    model = SegCompassForReasoningSegmentation.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    images = [Image.fromarray(np.full((32, 40, 3), c, dtype=np.uint8)) for c in (40, 200)]
    enc = processor(images, ["the red shape", "every blue circle"], completions=["<think>a</think><REF_POS>"] * 2,
                    append_slots=True)
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "sam_pixel_values", "pixel_values", "image_grid_thw",
                                  "mm_token_type_ids") if k in enc}
    sae_before = {k: v.clone() for k, v in model.sae.state_dict().items()}
    with torch.no_grad():
        full = model(**inputs).heatmap_logits  # (B, K, m, m)
        with ablate(model, "no_concepts"):
            zeroed = model(**inputs).heatmap_logits
            for param in model.sae.parameters():  # with r_k zeroed, the SAE cannot matter
                param.add_(torch.randn_like(param))
            zeroed_other_sae = model(**inputs).heatmap_logits
        model.sae.load_state_dict(sae_before)
        torch.testing.assert_close(model(**inputs).heatmap_logits, full)  # the hook is gone
        with ablate(model, "random_sae"):
            assert any(not torch.equal(v, sae_before[k]) for k, v in model.sae.state_dict().items())
            random_sae = model(**inputs).heatmap_logits
        with pytest.raises(RuntimeError, match="body failed"), ablate(model, "random_sae"):
            raise RuntimeError("body failed")
    assert not torch.allclose(zeroed, full)
    torch.testing.assert_close(zeroed_other_sae, zeroed)
    assert not torch.allclose(random_sae, full)
    for key, value in model.sae.state_dict().items():  # restored, also after the failing block
        torch.testing.assert_close(value, sae_before[key])
    with pytest.raises(ValueError, match="no_concept"):
        ablate(model, "no_concept")


def test_evaluate_with_ablation_is_recorded_and_guards_resume(checkpoint, tmp_path):
    out = tmp_path / "ablated"
    report = evaluate_model(checkpoint, "synthetic", "test", output_dir=out, num_samples=2, batch_size=2,
                            max_new_tokens=4, ablation="no_concepts")
    assert report["ablation"] == "no_concepts"
    assert json.loads((out / RUN_FILE).read_text())["ablation"] == "no_concepts"
    assert rescore(out)["ablation"] == "no_concepts"
    with pytest.raises(ValueError, match="ablation"):  # resuming under another ablation would mix predictions
        evaluate_model(checkpoint, "synthetic", "test", output_dir=out, num_samples=2, batch_size=2,
                       max_new_tokens=4)
    with pytest.raises(ValueError, match="random_SAE"):
        evaluate_model(checkpoint, "synthetic", "test", output_dir=tmp_path / "bad", ablation="random_SAE")
