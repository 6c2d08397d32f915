"""The app's logic and wiring without a browser: segcompass.app.analyse, build_app, and ``segcompass app``.

The browser test (real Chromium) is tests/test_app_browser.py.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from transformers import pipeline

from segcompass.app import INSTALL_HINT, AppResult, _concepts_markdown, analyse, default_examples, import_gradio
from segcompass.cli import main

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


@pytest.fixture(scope="module")
def tiny_pipe(tiny_checkpoint_factory):
    return pipeline("reasoning-segmentation", model=str(tiny_checkpoint_factory()))


def picture(seed=0):
    return Image.fromarray((np.random.default_rng(seed).random((40, 56, 3)) * 255).astype("uint8"))


def test_bad_upload_and_empty_instruction_are_messages_not_tracebacks(tiny_pipe, tmp_path):
    corrupt = tmp_path / "holiday.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for upload in (str(corrupt), str(text)):
        result = analyse(tiny_pipe, upload, "the red circle")
        assert result.error and result.overlay is None
        name = os.path.basename(upload)
        assert f"'{name}'" in result.status and "Upload a PNG or JPEG" in result.status
        assert str(tmp_path) not in result.status  # names the person's file, not the server's copy
    missing = analyse(tiny_pipe, None, "the red circle")
    assert missing.error and "upload one" in missing.status
    for empty in ("", "   ", None):
        result = analyse(tiny_pipe, picture(), empty)
        assert result.error and "instruction is empty" in result.status


def test_no_target_state(tiny_pipe):
    result = analyse(tiny_pipe, picture(), "the red circle", threshold=1.0, max_new_tokens=4)
    assert not result.error and result.status.startswith("**No target**") and "1.00" in result.status
    assert result.overlay.width >= 384  # the readable overlay, with its banner and legend
    assert len(result.heatmaps) == 3 and all("dropped" in caption for _, caption in result.heatmaps)
    assert "| dropped |" in result.concepts and "| kept |" not in result.concepts


def test_found_state_lists_every_slot(tiny_pipe):
    result = analyse(tiny_pipe, picture(), "the red circle", threshold=0.0, max_new_tokens=4)
    assert "Found 3 instances" in result.status and result.reasoning
    assert [caption.split(" · ")[0] for _, caption in result.heatmaps] == ["slot 0", "slot 1", "slot 2"]
    assert all(img.width >= 384 for img, _ in result.heatmaps)


def test_concept_labels_are_shown_when_present():
    instances = [{"slot": 1, "score": 0.9, "kept": True,
                  "concepts": [{"feature": 7, "weight": 0.5, "activation": 2.0, "label": "purple | diamond"},
                               {"feature": 9, "weight": 0.25, "activation": 1.0}]},
                 {"slot": 0, "score": 0.1, "kept": False, "concepts": []}]
    table = _concepts_markdown(instances)
    assert "| f7 | purple \\| diamond | 0.500 |" in table and "| f9 | - | 0.250 |" in table
    assert table.index("| 1 | kept |") < table.index("| 0 | dropped |")


def test_default_examples_exist():
    examples = default_examples()
    assert examples and all(os.path.isfile(path) and text for path, text in examples)


def test_import_segcompass_does_not_import_gradio():
    code = "import sys, segcompass, segcompass.app, segcompass.commands.app; sys.exit('gradio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=300, check=False).returncode == 0


def test_missing_gradio_is_one_line_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    with pytest.raises(ImportError, match=r'pip install "segcompass\[app\]"'):
        import_gradio()
    with pytest.raises(SystemExit) as exited:
        main(["app"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error:") and INSTALL_HINT in err


def test_app_command_options(capsys):
    from segcompass.commands.app import app_command

    (args,) = app_command.parse([])
    assert (args.host, args.port, args.share, args.model) == ("127.0.0.1", 7860, False, None)
    (args,) = app_command.parse(["--port", "8080", "--share", "--model", "ckpt"])
    assert (args.port, args.share, args.model) == (8080, True, "ckpt")
    with pytest.raises(SystemExit):
        main(["app", "--port", "70000"])
    assert "--port 70000" in capsys.readouterr().err


def test_build_app_wiring(tiny_pipe, tmp_path):
    pytest.importorskip("gradio", reason='gradio is not installed (pip install "segcompass[app]")')
    from gradio.data_classes import FileData

    from segcompass.app import build_app

    demo = build_app(tiny_pipe, examples=default_examples(), max_new_tokens=4)
    blocks = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    assert {"image", "instruction", "threshold", "segment", "status", "reasoning", "overlay", "heatmaps",
            "concepts", "examples"} <= set(blocks)
    assert demo.analytics_enabled is False
    config = demo.get_config_file()
    segment = [d for d in config["dependencies"] if d.get("api_name") == "segment"]
    assert len(segment) == 1
    assert segment[0]["inputs"] == [blocks[k]._id for k in ("image", "instruction", "threshold")]
    assert segment[0]["outputs"] == [blocks[k]._id for k in ("status", "reasoning", "overlay", "heatmaps", "concepts")]

    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    passed = blocks["image"].preprocess(FileData(path=str(corrupt), orig_name="broken.png"))
    assert passed == str(corrupt)  # gradio could not decode it: the path goes on so analyse() can say why
    fn = next(f.fn for f in demo.fns.values() if getattr(f, "api_name", None) == "segment")
    with pytest.warns(UserWarning, match="broken.png"):  # gr.Warning: a toast in the browser
        status, _, overlay, heatmaps, _ = fn(passed, "the red circle", 0.5)
    assert "'broken.png'" in status and overlay is None and heatmaps == []
    status, reasoning, overlay, heatmaps, concepts = fn(picture(), "the red circle", 0.0)
    assert "Found" in status and reasoning and overlay.width >= 384 and len(heatmaps) == 3
    assert "SAE concepts" in concepts and "| kept |" in concepts


def test_app_result_defaults():
    result = AppResult(status="x")
    assert (result.overlay, result.heatmaps, result.error) == (None, [], False)
