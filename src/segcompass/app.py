"""A browser app over ``pipeline("reasoning-segmentation")`` (Gradio Blocks), started by ``segcompass app``.

Pick an example or upload an image, type an instruction and press *Segment*: the app shows the model's reasoning,
the readable overlay (:func:`segcompass.visualize.render_overlay`), every slot's heatmap over the image with its
confidence and kept / dropped state (:func:`segcompass.visualize.render_heatmap`), and the SAE concepts that fed
each slot (feature id, attention weight, activation, and the feature's label when the pipeline gives one).

:func:`analyse` is the app's whole logic and needs no gradio (tests call it directly); :func:`build_app` wires it
into a ``gr.Blocks``; :func:`launch_app` serves it (loopback by default, no share link, no analytics). gradio is
imported only by those two (``pip install "segcompass[app]"``), so ``import segcompass`` never imports it.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

from .image_utils import load_image
from .utils.logging import get_logger
from .visualize import render_heatmap, render_overlay

logger = get_logger(__name__)

__all__ = ["INSTALL_HINT", "AppResult", "analyse", "build_app", "default_examples", "import_gradio", "launch_app"]

INSTALL_HINT = 'pip install "segcompass[app]"'
#: (image file name in examples/images, instruction): cases the embedded model gets right (checked with the
#: pipeline: the reasoning names the right shapes and the kept masks cover them, or it rightly finds no target).
EXAMPLES = [
    ("scene.png", "the shape with the same kind as the green shape"),
    ("scene.png", "the shape closest to the top edge"),
    ("shapes.png", "every red shape"),
    ("shapes.png", "every green shape"),
]
_EXAMPLE_DIRS = (Path(__file__).resolve().parents[2] / "examples" / "images", Path.cwd() / "examples" / "images")


@dataclass
class AppResult:
    """What one press of *Segment* shows. ``error`` is set (and ``status`` says what to fix) on bad input."""

    status: str
    reasoning: str = ""
    overlay: object = None  # PIL.Image.Image
    heatmaps: list = field(default_factory=list)  # [(PIL.Image.Image, caption)], one per slot
    concepts: str = ""  # markdown
    error: bool = False


def default_examples() -> list[list[str]]:
    """``[[image path, instruction], ...]`` for :data:`EXAMPLES` whose images exist (a source checkout has them)."""
    for directory in _EXAMPLE_DIRS:
        found = [[str(directory / name), text] for name, text in EXAMPLES if (directory / name).is_file()]
        if found:
            return found
    return []


def _slot_state(instance: dict) -> str:
    return "kept" if instance.get("kept", True) else "dropped"


def _concepts_markdown(instances: list[dict]) -> str:
    """A table of the concepts behind each slot, kept slots first."""
    rows = ["### SAE concepts that fed each slot", "",
            "| slot | state | score | feature | label | weight | activation |", "|---|---|---|---|---|---|---|"]
    for inst in sorted(instances, key=lambda i: (not i.get("kept", True), -i["score"])):
        head = f"| {inst['slot']} | {_slot_state(inst)} | {inst['score']:.2f} "
        if not inst["concepts"]:
            rows.append(head + "| - | (no active concepts) | | |")
        for concept in inst["concepts"]:
            label = concept.get("label")
            label = html.escape(str(label)).replace("|", "\\|") if label else "-"
            rows.append(head + f"| f{concept['feature']} | {label} | {concept['weight']:.3f} "
                               f"| {concept['activation']:.3f} |")
            head = "| | | "
    return "\n".join(rows)


def _read_upload(image) -> tuple[object, str | None]:
    """(an RGB PIL image, None) or (None, a message saying what is wrong with the upload and what to do)."""
    if image is None:
        return None, "No image yet: upload one (PNG or JPEG) or pick an example below."
    try:
        return load_image(image), None
    except (ValueError, TypeError, OSError) as err:
        text = str(err)
        if isinstance(image, (str, os.PathLike)):  # name the file the person chose, not the server's temp copy
            text = text.replace(os.fspath(image), Path(image).name)
        return None, f"That upload is not an image the app can read: {text} Upload a PNG or JPEG image."


def analyse(pipe, image, instruction: str | None, threshold: float | None = None,
            max_new_tokens: int = 256) -> AppResult:
    """Run ``pipe`` (a reasoning-segmentation pipeline) on ``image`` (path, PIL image or None) and ``instruction``
    and build everything the app shows. Bad input gives an :class:`AppResult` with ``error`` set, never raises."""
    picture, problem = _read_upload(image)
    if problem:
        return AppResult(status=problem, error=True)
    instruction = (instruction or "").strip()
    if not instruction:
        return AppResult(status="The instruction is empty: type what to segment, e.g. \"every red shape\".",
                         error=True)
    threshold = pipe.model.config.confidence_threshold if threshold is None else float(threshold)
    result = pipe(picture, instruction, threshold=threshold, max_new_tokens=max_new_tokens, return_all_slots=True)
    instances = result["instances"]
    kept = [inst for inst in instances if inst.get("kept", True)]
    no_target = f"no target: no slot reached the confidence threshold {threshold:.2f}"
    overlay = render_overlay(picture, instances, instruction, no_target_note=no_target)
    heatmaps = []
    for inst in sorted(instances, key=lambda i: i["slot"]):
        if "heatmap" in inst:
            caption = f"slot {inst['slot']} · {inst['score']:.2f} · {_slot_state(inst)}"
            heatmaps.append((render_heatmap(picture, inst["heatmap"], caption), caption))
    if kept:
        plural = "s" if len(kept) > 1 else ""
        status = (f"**Found {len(kept)} instance{plural}** (slot{plural} {', '.join(str(i['slot']) for i in kept)}; "
                  f"confidence threshold {threshold:.2f}).")
    else:
        status = f"**No target**: no slot reached the confidence threshold {threshold:.2f}."
    notes = list(result.get("warnings", []))
    if notes:
        status += "\n\n" + "\n".join(f"- warning: {note}" for note in notes)
    return AppResult(status=status, reasoning=result["reasoning"] or "(the model gave no reasoning)",
                     overlay=overlay, heatmaps=heatmaps, concepts=_concepts_markdown(instances))


def import_gradio():
    """``gradio`` with analytics off; ``ImportError`` with the install command when it is missing."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio reads it: nothing may phone home
    try:
        import gradio
    except ImportError as err:
        raise ImportError(f"the app needs gradio, which is not installed: {INSTALL_HINT}") from err
    return gradio


def _load_pipeline(model):
    if model is not None and not isinstance(model, (str, os.PathLike)):
        return model  # already a pipeline
    from transformers import pipeline

    from .pipelines import TASK
    from .presets import default_model_path

    path = model or default_model_path()
    if path is None:
        raise ValueError("No model given and this installation ships no embedded default; pass a checkpoint path.")
    return pipeline(TASK, model=str(path))


def _tolerant_upload(component) -> None:
    """Let ``component`` (a ``gr.Image`` with ``type="filepath"``) pass an upload gradio cannot decode through as
    its file path, so :func:`analyse` reports it in words instead of gradio failing with a generic error."""
    original = component.preprocess

    def preprocess(payload):
        try:
            return original(payload)
        except Exception:  # noqa: BLE001 - any decoding failure: analyse() names the file and the fix
            return getattr(payload, "path", None)

    component.preprocess = preprocess


def build_app(model=None, examples: list[list[str]] | None = None, threshold: float | None = None,
              max_new_tokens: int = 256):
    """The app as a ``gr.Blocks`` (not launched).

    Args:
        model: a checkpoint directory, a loaded reasoning-segmentation pipeline, or ``None`` for the embedded model.
        examples: ``[[image path, instruction], ...]`` to offer (default :func:`default_examples`; ``[]`` for none).
        threshold: the slider's start value (default: the model's confidence threshold).
    """
    gr = import_gradio()
    pipe = _load_pipeline(model)
    examples = default_examples() if examples is None else examples
    start = pipe.model.config.confidence_threshold if threshold is None else threshold
    source = getattr(pipe.model, "name_or_path", "") or "a loaded model"

    def segment(image, instruction, threshold_value):
        result = analyse(pipe, image, instruction, threshold_value, max_new_tokens)
        if result.error:
            gr.Warning(result.status)
        # the caption is drawn into each heatmap (a gallery caption would cover its colour bar)
        return result.status, result.reasoning, result.overlay, [h for h, _ in result.heatmaps], result.concepts

    with gr.Blocks(title="SegCompass", analytics_enabled=False) as demo:
        gr.Markdown("# SegCompass: reasoning segmentation you can inspect\n"
                    f"Model: `{Path(source).name or source}`. Pick an example or upload an image, type an "
                    "instruction, press **Segment**. The embedded default model knows only synthetic scenes of "
                    "coloured circles, squares, triangles, stars and diamonds.")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label="Image", type="filepath", image_mode=None, sources=["upload"], format="png",
                                 elem_id="image")
                _tolerant_upload(image)
                instruction = gr.Textbox(label="Instruction", placeholder="e.g. every purple shape", lines=1,
                                         elem_id="instruction")
                slider = gr.Slider(0.0, 1.0, value=start, step=0.01, label="Confidence threshold (keep a slot at or "
                                   "above it)", elem_id="threshold")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
                status = gr.Markdown("", elem_id="status")
                if examples:
                    gr.Examples(examples=examples, inputs=[image, instruction],
                                label="Examples (click one, then Segment; the embedded model gets these right)",
                                elem_id="examples")
            with gr.Column(scale=1):
                reasoning = gr.Textbox(label="Reasoning (the model's <think> text)", lines=4, interactive=False,
                                       elem_id="reasoning")
                overlay = gr.Image(label="Overlay: kept instances (slot · score)", show_label=False, type="pil",
                                   format="png", interactive=False, elem_id="overlay")  # it carries its own caption
        gr.Markdown("### Every slot's heatmap over the image\nEach title reads slot · confidence · kept or dropped; "
                    "colour and opacity grow with the heatmap's value (scale below each).")
        heatmaps = gr.Gallery(label="Slot heatmaps", show_label=False, columns=4, height=320, format="png",
                              object_fit="contain", interactive=False, elem_id="heatmaps")
        concepts = gr.Markdown(elem_id="concepts")
        outputs = [status, reasoning, overlay, heatmaps, concepts]
        button.click(segment, inputs=[image, instruction, slider], outputs=outputs, api_name="segment")
        instruction.submit(segment, inputs=[image, instruction, slider], outputs=outputs)
    return demo


def launch_app(demo, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False, **kwargs):
    """Serve ``demo`` on ``host:port`` (loopback by default); ``share`` asks gradio for a public link. Extra
    ``kwargs`` go to ``gr.Blocks.launch`` (e.g. ``prevent_thread_lock=True`` to return at once)."""
    import_gradio()
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("Serving the app on %s: anyone who can reach this address can use it.", host)
    return demo.launch(server_name=host, server_port=port, share=share, show_error=True, **kwargs)
