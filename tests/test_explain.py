"""``segcompass explain``: the interpretability analyses with their figures (segcompass.interpret.explain / figures /
reconstruction / panels) on the tiny random Qwen2.5-VL checkpoint and on small hand-made inputs."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from segcompass.data.synthetic import generate_sample, sample_seed
from segcompass.interpret import (
    activation_patterns,
    explain,
    heatmap_mask_agreement,
    instance_coverage,
    reconstruction_mask_loss,
)
from segcompass.interpret.figures import (
    MATPLOTLIB_MISSING,
    _concept_name,
    plot_activation_patterns,
    plot_agreement,
    plot_instance_coverage,
    plot_sample_panel,
    require_matplotlib,
)

KEYS = {"model", "num_samples", "sample_ids", "completions", "confidence_threshold", "heatmap_threshold",
        "activation_patterns", "instance_coverage", "heatmap_mask_agreement", "reconstruction_mask_loss", "panels",
        "figures", "metadata"}
FIGURE_SIZES = {"fig4_activation_patterns.png": (800, 500), "fig5_instance_coverage.png": (800, 500),
                "fig8_agreement.png": (1300, 560)}


@pytest.fixture(scope="module")
def samples():
    # test-split samples 0 (two squares), 4 (two shapes) and 6 (no target), as in tests/test_interpret.py
    rows = [generate_sample(sample_seed("test", i)) for i in (0, 4, 6)]
    assert [bool(r["masks"]) for r in rows] == [True, True, False]
    return rows


@pytest.fixture
def no_matplotlib(monkeypatch):
    """matplotlib (and every submodule already imported) made unimportable for this test."""
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)


# ------------------------------------------------------------------------------------------------ explain()
def test_explain_writes_every_file_with_numbers_in_range(tiny_model, tiny_processor, samples, tmp_path):
    pytest.importorskip("matplotlib")
    model, processor = tiny_model, tiny_processor
    out = tmp_path / "explain"
    result = explain(model, processor, samples, out, num_samples=3, num_panels=2, seed=1,
                     metadata={"dataset": "hand-made"})

    panel_files = [f"panels/sample_{s['sample_id']}.png" for s in samples[:2]]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        ["explain.json", *FIGURE_SIZES, *panel_files])
    assert json.loads((out / "explain.json").read_text()) == result
    assert set(result) == KEYS and result["num_samples"] == 3 and result["metadata"] == {"dataset": "hand-made"}
    assert result["sample_ids"] == [s["sample_id"] for s in samples]
    assert result["figures"] == {"fig4": "fig4_activation_patterns.png", "fig5": "fig5_instance_coverage.png",
                                 "fig8": "fig8_agreement.png", "panels": panel_files}
    for name, size in FIGURE_SIZES.items():
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size == size, name
    for name in panel_files:  # 3 slots: four columns
        with Image.open(out / name) as image:
            assert image.size == (30 + 380 * 4, 1060)

    # Fig. 4: pooled per sample = the analysis over all samples at once
    patterns, direct = result["activation_patterns"], activation_patterns(model, processor, samples)
    assert patterns["token_counts"] == direct["token_counts"] and patterns["num_samples"] == 3
    for name, means in direct["mean_active_features"].items():
        assert patterns["mean_active_features"][name] == pytest.approx(means), name
        assert all(0 <= m <= model.config.sae_config.d_sae for m in means)

    # Fig. 5: the top-K coverage does not depend on the seed; the random baseline is a fraction too
    coverage = result["instance_coverage"]
    direct = instance_coverage(model, processor, samples, fractions=coverage["fractions"])
    assert coverage["per_instance_top_k"] == direct["per_instance_top_k"]
    assert coverage["instance_sample_index"] == direct["instance_sample_index"]
    assert coverage["num_skipped_samples"] == 1 and coverage["num_instances"] == direct["num_instances"] > 0
    random_rows = np.asarray(coverage["per_instance_random"])
    assert random_rows.shape == (coverage["num_instances"], len(coverage["fractions"]))
    assert ((random_rows >= 0) & (random_rows <= 1)).all()
    assert coverage["random_coverage"] == pytest.approx(random_rows.mean(0).tolist())

    # Fig. 8 right: the same numbers as heatmap_mask_agreement, plus which samples have a target
    agreement, direct = result["heatmap_mask_agreement"], heatmap_mask_agreement(model, processor, samples)
    for key in direct:
        assert agreement[key] == (pytest.approx(direct[key]) if isinstance(direct[key], float) else direct[key]), key
    assert agreement["has_target"] == [True, True, False]
    assert agreement["targets_only"]["num_points"] == 2
    assert all(0 <= v <= 1 for v in agreement["heatmap_iou"] + agreement["mask_iou"])

    # Fig. 8 left: the same numbers as reconstruction_mask_loss; no dice loss without a target
    reconstruction, direct = result["reconstruction_mask_loss"], reconstruction_mask_loss(model, processor, samples)
    assert reconstruction["sae_mse"] == pytest.approx(direct["sae_mse"])
    assert reconstruction["mask_dice_loss"][2] is None and reconstruction["num_points"] == 2
    assert all(0 <= d <= 1 for d in reconstruction["mask_dice_loss"][:2])

    # panels: the first two samples, one concept list per slot, kept slots pass the threshold
    assert [p["sample_id"] for p in result["panels"]] == result["sample_ids"][:2]
    for panel in result["panels"]:
        assert np.asarray(panel["token_activation"]).shape == tuple(panel["token_grid"])
        assert min(np.asarray(panel["token_activation"]).ravel()) >= 0
        assert len(panel["concepts"]) == len(panel["confidences"]) == model.config.num_slots
        assert panel["kept"] == [k for k, c in enumerate(panel["confidences"]) if c >= panel["threshold"]]
        for concepts in panel["concepts"]:
            assert 0 < len(concepts) <= 5
            weights = [c["weight"] for c in concepts]
            assert weights == sorted(weights, reverse=True)
            assert all(0 <= c["feature"] < model.config.sae_config.d_sae and c["label"] is None for c in concepts)


def test_explain_checks_its_arguments(tiny_model, tiny_processor, samples, tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="num_samples"):
        explain(tiny_model, tiny_processor, samples, tmp_path, num_samples=0)
    with pytest.raises(ValueError, match="fractions"):
        explain(tiny_model, tiny_processor, samples, tmp_path, fractions=(0.0, 0.5))
    with pytest.raises(ValueError, match="num_panels"):
        explain(tiny_model, tiny_processor, samples, tmp_path, num_panels=-1)
    assert list(tmp_path.iterdir()) == []  # nothing written before the checks pass


def test_reconstruction_mask_loss_matches_the_sae(tiny_model, tiny_processor, samples):
    model, processor = tiny_model, tiny_processor
    result = reconstruction_mask_loss(model, processor, samples)
    assert result["num_samples"] == 3 and result["num_points"] == 2
    with torch.no_grad():
        for sample, mse, fvu in zip(samples, result["sae_mse"], result["sae_fvu"]):
            completion = f"<think>{sample['reasoning']}</think>{processor.ref_token}"
            batch = processor(sample["image"], sample["instruction"], completions=completion, append_slots=True)
            names = processor.backbone_processor.model_input_names
            hidden = model.get_hook_states(**{k: batch[k] for k in names if k in batch})[0]  # (T, D)
            error = (model.sae.decode(model.sae.encode(hidden)) - hidden).pow(2).sum(-1)  # (T,)
            assert mse == pytest.approx(float(error.mean()), rel=1e-5)
            assert fvu == pytest.approx(float(error.sum() / (hidden - hidden.mean(0)).pow(2).sum()), rel=1e-5)


# ------------------------------------------------------------------------------------------------ figures
def test_fig8_fits_of_hand_made_points(tmp_path):
    pytest.importorskip("matplotlib")
    reconstruction = {"sae_mse": [1.0, 2.0, 3.0, 4.0], "mask_dice_loss": [0.15, 0.25, 0.35, None]}
    agreement = {"heatmap_iou": [0.0, 0.25, 0.5, 1.0], "mask_iou": [0.0, 0.25, 0.5, 1.0],
                 "has_target": [True, True, True, False]}
    fits = plot_agreement(reconstruction, agreement, tmp_path / "fig8.png")
    assert fits["right"]["ols_slope"] == pytest.approx(1.0) and fits["right"]["ols_intercept"] == pytest.approx(0.0)
    assert fits["right"]["pearson_r"] == pytest.approx(1.0) and fits["right"]["n"] == 4
    assert fits["right_targets_only"]["n"] == 3 and fits["right_targets_only"]["ols_slope"] == pytest.approx(1.0)
    assert fits["left"]["n"] == 3  # the no-target sample has no dice loss
    assert fits["left"]["ols_slope"] == pytest.approx(0.1) and fits["left"]["ols_intercept"] == pytest.approx(0.05)
    assert [p.name for p in tmp_path.iterdir()] == ["fig8.png"]  # written atomically, no temporary file left
    with Image.open(tmp_path / "fig8.png") as image:
        assert image.size == (1300, 560)

    anti = plot_agreement({"sae_mse": [1.0, 2.0], "mask_dice_loss": [0.5, None]},
                          {"heatmap_iou": [0.2, 0.8], "mask_iou": [0.8, 0.2]}, tmp_path / "two.png")
    assert anti["right"]["pearson_r"] == pytest.approx(-1.0) and anti["left"]["pearson_r"] is None


def test_fig4_and_fig5_draw_what_they_are_given(tmp_path):
    pytest.importorskip("matplotlib")
    patterns = {"thresholds": [0.0, 0.1], "mean_active_features": {"question": [5.0, 2.0], "cot": None,
                                                                   "instance": [9.0, 7.0]},
                "token_counts": {"question": 10, "cot": 0, "instance": 4}, "num_samples": 2, "hook_layer": 1,
                "d_sae": 128}
    assert plot_activation_patterns(patterns, tmp_path / "fig4.png") == {"instance": [9.0, 7.0],
                                                                         "question": [5.0, 2.0]}
    coverage = {"fractions": [0.1, 0.5], "top_k_coverage": [0.4, 0.9], "random_coverage": [0.1, 0.5],
                "num_instances": 3, "num_samples": 2, "num_skipped_samples": 0}
    drawn = plot_instance_coverage(coverage, tmp_path / "fig5.png")
    assert drawn["k_percent"] == [10.0, 50.0] and drawn["gap"] == pytest.approx([0.3, 0.4])
    empty = plot_instance_coverage({**coverage, "top_k_coverage": None, "random_coverage": None,
                                    "num_instances": 0}, tmp_path / "empty.png")
    assert empty["top_k"] == [] and (tmp_path / "empty.png").is_file()
    for name in ("fig4.png", "fig5.png"):
        with Image.open(tmp_path / name) as image:
            assert image.size == (800, 500)


def test_sample_panel_figure(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    truth = np.zeros((12, 16), dtype=bool)
    truth[2:6, 3:9] = True
    concepts = [{"feature": 3, "label": "red", "activation": 1.5, "weight": 0.6},
                {"feature": 7, "label": None, "activation": 0.5, "weight": 0.4}]
    panel = {"sample_id": "s/1", "instruction": "the red shape", "reasoning": "red : one . target : red square .",
             "image": rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), "token_activation": [[0.0, 2.0], [1.0, 0.5]],
             "heatmaps": rng.random((5, 12, 16)), "confidences": [0.9, 0.1, 0.6, 0.2, 0.3], "kept": [0, 2],
             "threshold": 0.5, "prediction": np.roll(truth, 1, axis=1), "ground_truth": truth, "mask_iou": 0.7,
             "concepts": [concepts] * 5}
    assert plot_sample_panel(panel, tmp_path / "panel.png") == {"size": (30 + 380 * 5, 1060), "slots": 5}
    with Image.open(tmp_path / "panel.png") as image:
        assert image.size == (1930, 1060)
    assert _concept_name(concepts[0]) == "f3 (red)" and _concept_name(concepts[1]) == "f7"
    assert _concept_name({"feature": 1, "label": "word " * 20}).startswith("f1 (word") and \
        len(_concept_name({"feature": 1, "label": "word " * 20})) <= 35
    with pytest.raises(ValueError, match="same"):
        plot_sample_panel({**panel, "heatmaps": np.zeros((5, 4, 4))}, tmp_path / "bad.png")


# ------------------------------------------------------------------------------------------------ the command
def test_explain_command_parses_and_runs(tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from segcompass.commands import main
    from segcompass.commands.explain import explain_command

    (defaults,) = explain_command.parse([])
    assert (defaults.model, defaults.dataset, defaults.split, defaults.num_samples, defaults.output_dir) == (
        None, "synthetic", "test", 32, "explain")
    dashed = explain_command.parse(["--num-samples", "2", "--num-panels", "1", "--output-dir", "o", "--data-dir", "d"])
    underscored = explain_command.parse(["--num_samples", "2", "--num_panels", "1", "--output_dir", "o",
                                         "--data_dir", "d"])
    assert dashed == underscored

    out = tmp_path / "out"
    assert main(["explain", "--model", str(tiny_checkpoint), "--num-samples", "2", "--num-panels", "1",
                 "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"2 samples of synthetic/test -> {out}/" in printed and "Fig. 8 right" in printed
    result = json.loads((out / "explain.json").read_text())
    assert result["metadata"]["loader_kwargs"] == {"image_size": 64}  # the tiny model's SAM input size
    assert result["num_samples"] == 2 and len(result["panels"]) == 1
    assert (out / result["panels"][0]["file"]).is_file() and (out / "fig8_agreement.png").is_file()


# ------------------------------------------------------------------------------------------------ no matplotlib
def test_a_clear_error_without_matplotlib(no_matplotlib, tiny_model, tiny_processor, samples, tmp_path, capsys):
    from segcompass.commands import main

    with pytest.raises(ImportError, match=r"segcompass\[interpret\]") as raised:
        require_matplotlib()
    assert str(raised.value) == MATPLOTLIB_MISSING
    with pytest.raises(ImportError, match="matplotlib"):
        explain(tiny_model, tiny_processor, samples, tmp_path / "lib")
    with pytest.raises(SystemExit) as exited:
        main(["explain", "--output-dir", str(tmp_path / "cli")])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: ") and "pip install 'segcompass[interpret]'" in err
    assert not (tmp_path / "lib").exists() and not (tmp_path / "cli").exists()
