"""Bad-input corpus for images, instructions, pipeline arguments, model directories and the CLI (issue 14).

Each row is ``(name, build, expect)``: ``build(tmp_path, ctx)`` returns a zero-argument call; ``expect`` is
``Raises(type, match)`` (a clear, typed error naming the value or the fix) or ``Returns(check)`` (the call works and
``check`` asserts on the result).
"""

from __future__ import annotations

import shutil
import traceback
from pathlib import Path

import numpy as np
import pytest
from bad_input_cases import PACKAGE_DIR, Case, Raises, Returns  # tests/bad_inputs is on sys.path
from PIL import Image

from segcompass.image_utils import load_image

INSTRUCTION = "the red circle"


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    from transformers import pipeline

    return pipeline("reasoning-segmentation", model=str(tiny_checkpoint))


# ------------------------------------------------------------------------------------------------------ images
def rgb(h=40, w=60, seed=0):
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype("uint8"))


def save(tmp_path, image, name, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return str(path)


def exif_rotated_jpeg(tmp_path):
    """A 60 x 40 (W x H) stored JPEG whose EXIF orientation 6 says: display rotated 90° -> 40 x 60."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(tmp_path, rgb(40, 60), "rotated.jpg", exif=exif)


def sixteen_bit_png(tmp_path):
    return save(tmp_path, Image.fromarray(np.full((20, 30), 65535, np.uint16)), "deep.png")


def cmyk_jpeg(tmp_path):
    return save(tmp_path, rgb().convert("CMYK"), "cmyk.jpg")


def palette_png(tmp_path):
    image = rgb().convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    return save(tmp_path, image, "palette.png", transparency=0)


def rgba_png(tmp_path):
    array = np.zeros((20, 30, 4), np.uint8)
    array[..., 0] = 255  # red, fully transparent: composited on white
    return save(tmp_path, Image.fromarray(array, "RGBA"), "rgba.png")


def truncated_png(tmp_path):
    path = Path(save(tmp_path, rgb(), "full.png"))
    data = path.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    return str(cut)


def bomb_png(tmp_path):
    path = save(tmp_path, Image.new("L", (12000, 12000)), "bomb.png")  # 144 M pixels > 2 x PIL's 89 M limit
    return path


def shape_is(size):
    def check(image):
        assert image.mode == "RGB" and image.size == size

    return check


def pixel_is(value):
    def check(image):
        assert image.mode == "RGB" and tuple(np.asarray(image)[0, 0]) == value

    return check


def result_mask_shape(shape):
    def check(out):
        assert out["mask"].shape == shape and out["mask"].dtype == bool
        assert all(instance["mask"].shape == shape for instance in out["instances"])

    return check


def load(path_builder, **kwargs):
    return lambda tmp, ctx: (lambda: load_image(path_builder(tmp), **kwargs))


def via_pipe(image_builder, instruction=INSTRUCTION, **kwargs):
    return lambda tmp, ctx: (lambda: ctx["pipe"](image_builder(tmp), instruction, max_new_tokens=4, threshold=0.0,
                                                 **kwargs))


IMAGE_CASES = [
    Case("image/16-bit-png", load(sixteen_bit_png), Returns(pixel_is((255, 255, 255)))),
    Case("image/cmyk-jpeg", load(cmyk_jpeg), Returns(shape_is((60, 40)))),
    Case("image/palette-png-transparency", load(palette_png), Returns(shape_is((60, 40)))),
    Case("image/rgba-on-white", load(rgba_png), Returns(pixel_is((255, 255, 255)))),
    Case("image/exif-rotated-jpeg-displayed-orientation", load(exif_rotated_jpeg, exif_transpose=True),
         Returns(shape_is((40, 60)))),
    Case("image/one-pixel", lambda tmp, ctx: (lambda: load_image(np.zeros((1, 1, 3), np.uint8))),
         Returns(shape_is((1, 1)))),
    Case("image/zero-pixel", lambda tmp, ctx: (lambda: load_image(np.zeros((0, 5, 3), np.uint8))),
         Raises(ValueError, "empty")),
    Case("image/truncated-file", load(truncated_png), Raises(ValueError, "truncated|cannot be decoded")),
    Case("image/not-an-image", lambda tmp, ctx: (lambda: load_image(_text_file(tmp))),
         Raises(ValueError, "cannot be decoded")),
    Case("image/missing-file", lambda tmp, ctx: (lambda: load_image(tmp / "nope.png")),
         Raises(FileNotFoundError, "does not exist")),
    Case("image/decompression-bomb", load(bomb_png), Raises(ValueError, "decompression-bomb|MAX_IMAGE_PIXELS")),
    Case("image/float-out-of-range", lambda tmp, ctx: (lambda: load_image(np.full((4, 4, 3), 200.0))),
         Raises(ValueError, "Divide by 255")),
    # through the pipeline: every kind still yields a mask in the displayed orientation
    Case("pipe/exif-rotated-jpeg-mask-in-displayed-orientation", via_pipe(exif_rotated_jpeg),
         Returns(result_mask_shape((60, 40)))),
    Case("pipe/16-bit-png", via_pipe(sixteen_bit_png), Returns(result_mask_shape((20, 30)))),
    Case("pipe/cmyk-jpeg", via_pipe(cmyk_jpeg), Returns(result_mask_shape((40, 60)))),
    Case("pipe/palette-png-transparency", via_pipe(palette_png), Returns(result_mask_shape((40, 60)))),
    Case("pipe/rgba", via_pipe(rgba_png), Returns(result_mask_shape((20, 30)))),
    Case("pipe/one-pixel", via_pipe(lambda tmp: np.zeros((1, 1, 3), np.uint8)), Returns(result_mask_shape((1, 1)))),
    Case("pipe/zero-pixel", via_pipe(lambda tmp: np.zeros((0, 4, 3), np.uint8)), Raises(ValueError, "empty")),
    Case("pipe/1x10000-extreme-aspect", via_pipe(lambda tmp: np.zeros((1, 10000, 3), np.uint8)),
         Raises(ValueError, "aspect ratio")),
]


def _text_file(tmp):
    path = tmp / "notes.png"
    path.write_text("not an image")
    return path


# ------------------------------------------------------------------------------------------------ instructions
INSTRUCTION_CASES = [
    Case("instruction/empty-string", via_pipe(lambda tmp: rgb(), instruction=""), Raises(ValueError, "empty")),
    Case("instruction/whitespace-only", via_pipe(lambda tmp: rgb(), instruction="   "), Raises(ValueError, "empty")),
    Case("instruction/not-a-string", via_pipe(lambda tmp: rgb(), instruction=42), Raises(ValueError, "int")),
    Case("instruction/empty-list", lambda tmp, ctx: (lambda: ctx["pipe"](rgb(), [])),
         Raises(ValueError, "at least one")),
    Case("instruction/15000-tokens", via_pipe(lambda tmp: rgb(), instruction=" ".join(["circle"] * 15000)),
         Raises(ValueError, "tokens")),
    Case("instruction/control-characters", via_pipe(lambda tmp: rgb(), instruction="the red\x00 circle\x07"),
         Raises(ValueError, "control")),
    Case("instruction/reserved-token", via_pipe(lambda tmp: rgb(), instruction="the <REF_POS> circle"),
         Raises(ValueError, "REF_POS")),
    Case("instruction/unknown-words-warned",
         via_pipe(lambda tmp: rgb(), instruction="the zyxwvut circle"),
         Returns(lambda out: (out["mask"].shape == (40, 60) and any("zyxwvut" in w for w in out["warnings"]))
                 or pytest.fail(f"no unknown-word warning: {out['warnings']}"))),
]


# ------------------------------------------------------------------------------------------- pipeline arguments
def call(**kwargs):
    max_new_tokens = kwargs.pop("max_new_tokens", 4)
    return lambda tmp, ctx: (lambda: ctx["pipe"](rgb(), INSTRUCTION, max_new_tokens=max_new_tokens, **kwargs))


def make_pipe(tiny_checkpoint_dir, **kwargs):
    from transformers import pipeline

    return pipeline("reasoning-segmentation", model=str(tiny_checkpoint_dir), **kwargs)


BAD_BATCH_SIZES = [("zero", 0, "0"), ("negative", -1, "-1"), ("float", 1.5, r"1\.5"), ("string", "2", "'2'"),
                   ("bool", True, "True")]


def construct_with_batch_size(value):
    return lambda tmp, ctx: (lambda: make_pipe(ctx["checkpoint"], batch_size=value))


def call_with_batch_size(value):
    return call(batch_size=value)


ARGUMENT_CASES = [
    Case("args/misspelt-keyword", call(treshold=0.99), Raises(ValueError, "treshold.*threshold")),
    Case("args/threshold-bool", call(threshold=True), Raises(ValueError, "threshold")),
    Case("args/threshold-string", call(threshold="0.5"), Raises(ValueError, "threshold")),
    Case("args/threshold-above-one", call(threshold=1.5), Raises(ValueError, r"\[0, 1\]")),
    Case("args/threshold-nan", call(threshold=float("nan")), Raises(ValueError, "threshold")),
    Case("args/max-new-tokens-zero", call(max_new_tokens=0), Raises(ValueError, "max_new_tokens")),
    Case("args/max-new-tokens-float", call(max_new_tokens=2.5), Raises(ValueError, "max_new_tokens")),
    Case("args/top-concepts-negative", call(top_concepts=-1), Raises(ValueError, "top_concepts")),
    Case("args/return-heatmaps-string", call(return_heatmaps="no"), Raises(ValueError, "return_heatmaps")),
    Case("args/num-threads-zero", call(num_threads=0), Raises(ValueError, "num_threads")),
    Case("args/mismatched-lists", lambda tmp, ctx: (lambda: ctx["pipe"]([rgb(), rgb()], ["a", "b", "c"])),
         Raises(ValueError, "2 images and 3 instructions")),
    Case("args/empty-image-list", lambda tmp, ctx: (lambda: ctx["pipe"]([], [])), Raises(ValueError, "at least one")),
    *[Case(f"args/batch-size-{label}-{where}", build(value),
           Raises(ValueError, rf"`batch_size` must be an int >= 1.*got {shown}\."))
      for label, value, shown in BAD_BATCH_SIZES
      for where, build in (("at-construction", construct_with_batch_size), ("per-call", call_with_batch_size))],
    Case("args/batch-size-2-at-construction-runs",
         lambda tmp, ctx: (lambda: make_pipe(ctx["checkpoint"], batch_size=2)([rgb(), rgb(seed=1), rgb(seed=2)],
                                                                             ["a", "b", "c"], max_new_tokens=4)),
         Returns(lambda outs: [o["mask"].shape for o in outs] == [(40, 60)] * 3 or pytest.fail(f"{outs!r}"))),
    Case("args/batch-size-2-per-call-runs",
         lambda tmp, ctx: (lambda: ctx["pipe"](rgb(), ["a", "b", "c"], batch_size=2, max_new_tokens=4)),
         Returns(lambda outs: len(outs) == 3 or pytest.fail(f"{len(outs)} outputs for 3 instructions"))),
    Case("args/return-all-slots-int", call(return_all_slots=1), Raises(ValueError, "return_all_slots")),
]


# ------------------------------------------------------------------------------------------- model directories
def copy_checkpoint(tmp, ctx):
    target = tmp / "ckpt"
    shutil.copytree(ctx["checkpoint"], target)
    return target


def truncated_weights(tmp, ctx):
    target = copy_checkpoint(tmp, ctx)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return target


def wrong_model_type(tmp, ctx):
    """A plain (tiny, random) Qwen2 language model saved with its config and weights."""
    from transformers import Qwen2Config, Qwen2Model

    target = tmp / "plain-lm"
    Qwen2Model(Qwen2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           num_key_value_heads=1, vocab_size=50)).save_pretrained(target)
    return target


def missing_processor(tmp, ctx):
    target = copy_checkpoint(tmp, ctx)
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"):
        (target / name).unlink(missing_ok=True)
    return target


def slot_mismatch(tmp, ctx):
    target = copy_checkpoint(tmp, ctx)
    four = ctx["factory"](num_slots=4)
    for path in Path(four).iterdir():
        if path.name not in ("config.json", "model.safetensors") and path.is_file():
            shutil.copy(path, target / path.name)
    return target


def missing_weights(tmp, ctx):
    target = copy_checkpoint(tmp, ctx)
    (target / "model.safetensors").unlink()
    return target


def model_dir(builder):
    return lambda tmp, ctx: (lambda: make_pipe(builder(tmp, ctx)))


def from_pretrained(builder):
    def build(tmp, ctx):
        from segcompass import SegCompassForReasoningSegmentation

        return lambda: SegCompassForReasoningSegmentation.from_pretrained(builder(tmp, ctx))

    return build


MODEL_DIR_CASES = [
    # through pipeline(): transformers' factory wraps the loader's error (ours, with the file named) in its own
    Case("model/truncated-safetensors-pipeline", model_dir(truncated_weights),
         Raises(ValueError, "model.safetensors.*(truncated|corrupt)", ours=False)),
    Case("model/truncated-safetensors-from-pretrained", from_pretrained(truncated_weights),
         Raises(ValueError, "model.safetensors.*(truncated|corrupt)")),
    Case("model/missing-weights", model_dir(missing_weights), Raises(ValueError, "no file named model.safetensors", ours=False)),
    Case("model/wrong-model-type", from_pretrained(wrong_model_type),
         Raises(ValueError, "'qwen2' model, not a SegCompass checkpoint")),
    Case("model/missing-processor-files", model_dir(missing_processor),
         Raises(OSError, "Can't load image processor", ours=False)),
    Case("model/slot-count-mismatch", model_dir(slot_mismatch), Raises(ValueError, "num_slots|slots")),
]


# ------------------------------------------------------------------------------------------------------- CLI
def cli(*argv_builders, debug=False):
    def build(tmp, ctx):
        argv = [b(tmp, ctx) if callable(b) else b for b in argv_builders]
        return lambda: _run_cli(["--debug"] if debug else [], argv, ctx)

    return build


def _run_cli(prefix, argv, ctx, command="segment"):
    from segcompass.commands.main import main

    capsys = ctx["capsys"]
    capsys.readouterr()
    try:
        status = main([*prefix, command, *argv])
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.err


def one_line_exit_2(match):
    def check(result):
        status, err = result
        lines = [line for line in err.replace("\r", "\n").splitlines()  # progress bars and warnings aside
                 if line.strip() and not line.startswith(("warning:", "Loading weights"))]
        assert status == 2, (status, err)
        assert len(lines) == 1 and lines[0].startswith("error:"), err
        assert "Traceback" not in err
        import re

        assert re.search(match, lines[0]), lines[0]

    return check


def shows_traceback(result):
    status, err = result
    assert status == 2 and "Traceback" in err, err


def ckpt(tmp, ctx):
    return str(ctx["checkpoint"])


def img(builder):
    return lambda tmp, ctx: builder(tmp)


def wrote(name, content):
    def builder(tmp):
        path = tmp / name
        path.write_bytes(content)
        return str(path)

    return builder


CLI_CASES = [
    Case("cli/missing-image", cli("nope.png", INSTRUCTION, "--model", ckpt), Returns(one_line_exit_2("does not exist"))),
    Case("cli/truncated-image", cli(img(truncated_png), INSTRUCTION, "--model", ckpt),
         Returns(one_line_exit_2("truncated|cannot be decoded"))),
    Case("cli/not-an-image", cli(img(wrote("x.png", b"hello")), INSTRUCTION, "--model", ckpt),
         Returns(one_line_exit_2("cannot be decoded"))),
    Case("cli/extreme-aspect", cli(img(lambda tmp: save(tmp, Image.new("RGB", (10000, 1)), "wide.png")), INSTRUCTION,
                                   "--model", ckpt), Returns(one_line_exit_2("aspect ratio"))),
    Case("cli/empty-instruction", cli(img(rgba_png), "", "--model", ckpt), Returns(one_line_exit_2("empty"))),
    Case("cli/long-instruction", cli(img(rgba_png), " ".join(["circle"] * 15000), "--model", ckpt),
         Returns(one_line_exit_2("tokens"))),
    Case("cli/threshold-out-of-range", cli(img(rgba_png), INSTRUCTION, "--model", ckpt, "--threshold", "2"),
         Returns(one_line_exit_2(r"\[0, 1\]"))),
    Case("cli/max-new-tokens-zero", cli(img(rgba_png), INSTRUCTION, "--model", ckpt, "--max_new_tokens", "0"),
         Returns(one_line_exit_2("max_new_tokens"))),
    Case("cli/truncated-weights", cli(img(rgba_png), INSTRUCTION, "--model",
                                      lambda tmp, ctx: str(truncated_weights(tmp, ctx))),
         Returns(one_line_exit_2("model.safetensors.*(truncated|corrupt)"))),
    Case("cli/wrong-model-type", cli(img(rgba_png), INSTRUCTION, "--model",
                                     lambda tmp, ctx: str(wrong_model_type(tmp, ctx))),
         Returns(one_line_exit_2("'qwen2' model, not a SegCompass checkpoint"))),
    Case("cli/slot-mismatch", cli(img(rgba_png), INSTRUCTION, "--model", lambda tmp, ctx: str(slot_mismatch(tmp, ctx))),
         Returns(one_line_exit_2("slots"))),
    Case("cli/missing-weights", cli(img(rgba_png), INSTRUCTION, "--model",
                                    lambda tmp, ctx: str(missing_weights(tmp, ctx))),
         Returns(one_line_exit_2("no file named model.safetensors"))),
    Case("cli/missing-processor-files", cli(img(rgba_png), INSTRUCTION, "--model",
                                            lambda tmp, ctx: str(missing_processor(tmp, ctx))),
         Returns(one_line_exit_2("processor"))),
    Case("cli/control-characters", cli(img(rgba_png), "the red\x1b circle", "--model", ckpt),
         Returns(one_line_exit_2("control character"))),
    Case("cli/exif-rotated-overlay-in-displayed-orientation",
         cli(img(exif_rotated_jpeg), INSTRUCTION, "--model", ckpt, "--output",
             lambda tmp, ctx: str(tmp / "overlay.png")),
         Returns(lambda result: (result[0] == 0 or pytest.fail(result[1])))),
    Case("cli/debug-shows-traceback", cli("nope.png", INSTRUCTION, "--model", ckpt, debug=True),
         Returns(shows_traceback)),
]

CLI_CASES += [
    Case("cli/debug-after-the-command-name",
         lambda tmp, ctx: (lambda: _run_cli([], ["nope.png", INSTRUCTION, "--debug", "--model", str(ctx["checkpoint"])],
                                            ctx)),
         Returns(shows_traceback)),
    Case("cli/demo-wrong-model-type",
         lambda tmp, ctx: (lambda: _run_cli([], ["--model", str(wrong_model_type(tmp, ctx)), "--output_dir",
                                                 str(tmp / "demo")], ctx, command="demo")),
         Returns(one_line_exit_2("'qwen2' model, not a SegCompass checkpoint"))),
]

CASES = IMAGE_CASES + INSTRUCTION_CASES + ARGUMENT_CASES + MODEL_DIR_CASES + CLI_CASES


def test_case_names_are_unique():
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)) and len(names) >= 35


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_inputs_corpus(case, tmp_path, pipe, tiny_checkpoint, tiny_checkpoint_factory, capsys):
    ctx = {"pipe": pipe, "checkpoint": tiny_checkpoint, "factory": tiny_checkpoint_factory, "capsys": capsys}
    run = case.build(tmp_path, ctx)
    if isinstance(case.expect, Raises):
        with pytest.raises(case.expect.type, match=case.expect.match) as info:
            run()
        raised_at = traceback.extract_tb(info.value.__traceback__)[-1].filename
        assert raised_at.startswith(PACKAGE_DIR) == case.expect.ours, (
            f"{type(info.value).__name__} raised at {raised_at}: {info.value}")
    else:
        case.expect.check(run())
