"""``segcompass label-features``: its options, and a run on the tiny checkpoint."""

import json

import pytest

from segcompass.commands import COMMANDS, main
from segcompass.commands._args import CommandError
from segcompass.commands.label_features import label_features_command
from segcompass.sae.feature_dictionary import CROPS_NAME, DICTIONARY_NAME, FeatureDictionary


def test_registered_and_parses():
    assert COMMANDS["label-features"][:2] == ("label_features", "label_features_command")
    (args,) = label_features_command.parse([])
    assert (args.model, args.dataset, args.split, args.num_samples, args.output_dir) == (
        None, "synthetic", "train", 512, None)
    dashed = label_features_command.parse(["--model", "m", "--num-samples", "4", "--output-dir", "o", "--top-cells",
                                           "2", "--crop-size", "6", "--split", "validation"])
    underscored = label_features_command.parse(["--model", "m", "--num_samples", "4", "--output_dir", "o",
                                                "--top_cells", "2", "--crop_size", "6", "--split", "validation"])
    assert dashed == underscored
    assert (dashed[0].num_samples, dashed[0].output_dir, dashed[0].top_cells, dashed[0].crop_size) == (4, "o", 2, 6)
    with pytest.raises(CommandError, match="unrecognized arguments"):
        label_features_command.parse(["--no-such-option", "1"])


def test_run_on_the_tiny_checkpoint(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "dictionary"
    assert main(["label-features", "--model", str(tiny_checkpoint), "--num-samples", "4", "--batch-size", "2",
                 "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    dictionary = FeatureDictionary.load(out, d_sae=256, hook_layer=1)
    assert (dictionary.num_samples, dictionary.dataset, dictionary.split) == (4, "synthetic", "train")
    assert printed[0].startswith(f"{sum(e.label is not None for e in dictionary.features)} of 256 features fired "
                                 "over 4 synthetic/train samples")
    assert printed[0].endswith(str(out / DICTIONARY_NAME))
    top = dictionary.most_frequent(10)
    assert len(printed) == 1 + len(top) and len(top) > 0
    for line, j in zip(printed[1:], top):
        assert line.startswith(f"  f{j}: {dictionary.label(j)}  (fires on ")
    assert (out / CROPS_NAME).is_file()
    assert json.loads((out / DICTIONARY_NAME).read_text())["num_samples"] == 4
    assert not (tiny_checkpoint / DICTIONARY_NAME).exists()  # --output-dir: the checkpoint is left alone


def test_hub_model_needs_an_output_dir(capsys, monkeypatch, tmp_path):
    import segcompass.presets

    # a Hub model that resolves (here: to a fake cache folder): its dictionary must not be written into the cache
    monkeypatch.setattr(segcompass.presets, "resolve_checkpoint", lambda name: str(tmp_path / "hub-cache"))
    with pytest.raises(SystemExit):
        main(["label-features", "--model", "someone/segcompass-model"])
    assert "pass --output-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # unreachable (the real resolver, offline): fails at once, before any loading
        monkeypatch.undo()
        main(["label-features", "--model", "someone/segcompass-model"])
    assert "not a local directory" in capsys.readouterr().err
