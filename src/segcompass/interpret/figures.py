"""Figures of the interpretability analyses (paper Figs. 4, 5, 8 and 9), drawn with matplotlib into PNG files.

Each function takes the JSON-ready result of one analysis and writes one PNG (atomically: a temporary file in the same
directory, then ``os.replace``), and returns the numbers it drew. Figures are ``matplotlib.figure.Figure`` objects
rendered by the Agg canvas: nothing touches ``pyplot`` or its global state. Sizes are fixed (no tight bounding box),
so every PNG has the pixel size its function's docstring promises.

matplotlib is an optional dependency (``pip install 'segcompass[interpret]'``); :func:`require_matplotlib` raises an
``ImportError`` naming that fix.

Dimension glossary: ``P`` thresholds or fractions, ``B`` samples, ``K`` slots, ``(H, W)`` image size,
``(g_h, g_w)`` the merged image-token grid, ``N`` concepts listed per slot.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.io import atomic_path
from .agreement import pearson_and_fit

__all__ = [
    "MATPLOTLIB_MISSING",
    "plot_activation_patterns",
    "plot_agreement",
    "plot_instance_coverage",
    "plot_sample_panel",
    "require_matplotlib",
]

MATPLOTLIB_MISSING = ("the interpretability figures need matplotlib, which is not installed; install it with "
                      "pip install 'segcompass[interpret]' (or pip install 'matplotlib>=3.8').")
DPI = 100
TYPE_STYLE = {  # token type -> (colour, line style, legend label)
    "instance": ("#2ca02c", "-", "instance (image)"),
    "cot": ("#ff7f0e", "-", "CoT (reasoning)"),
    "question": ("#1f77b4", "-", "question"),
    "background": ("#8c564b", "-", "background (image)"),
    "other": ("#9e9e9e", "--", "other (template, special)"),
}
OUTCOME_COLOURS = {"hit (pred ∩ GT)": "#1b9e77", "false positive": "#d95f02", "missed GT": "#7570b3"}


def require_matplotlib() -> None:
    """Raise an ``ImportError`` naming the fix when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError as err:
        raise ImportError(MATPLOTLIB_MISSING) from err


def _figure(width_px: int, height_px: int, constrained: bool = True):
    """A new ``Figure`` of ``width_px × height_px`` pixels on an Agg canvas (no pyplot); ``constrained`` fits the
    axes to their labels (``False``: the caller places every axes itself)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout="constrained" if constrained else None)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | os.PathLike) -> Path:
    """Write ``figure`` to ``path`` as PNG, atomically (:func:`segcompass.utils.io.atomic_path`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)
    return path


def _fit_line(axes, x: Sequence[float], y: Sequence[float], colour: str) -> dict:
    """Draw the OLS line of ``y`` on ``x`` with its 95 % confidence band for the mean; return the fit
    (:func:`pearson_and_fit`) and ``n``."""
    fit = {**pearson_and_fit(x, y), "n": len(x)}
    if fit["ols_slope"] is None:
        return fit
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    grid = np.linspace(xs.min(), xs.max(), 100)
    line = fit["ols_intercept"] + fit["ols_slope"] * grid
    sign = "−" if fit["ols_intercept"] < 0 else "+"
    axes.plot(grid, line, color=colour, linewidth=2,
              label=f"OLS fit: y = {fit['ols_slope']:.3g}·x {sign} {abs(fit['ols_intercept']):.3g}")
    if (n := len(xs)) > 2:
        from scipy.stats import t as student_t

        residual = ys - (fit["ols_intercept"] + fit["ols_slope"] * xs)
        scale = math.sqrt(float(residual @ residual) / (n - 2))
        spread = float(((xs - xs.mean()) ** 2).sum())
        half = student_t.ppf(0.975, n - 2) * scale * np.sqrt(1 / n + (grid - xs.mean()) ** 2 / spread)
        axes.fill_between(grid, line - half, line + half, color=colour, alpha=0.15, linewidth=0,
                          label="95 % confidence band of the mean")
    return fit


def _r_text(fit: Mapping[str, Any]) -> str:
    return "r n/a" if fit.get("pearson_r") is None else f"Pearson r = {fit['pearson_r']:.2f}"


# ------------------------------------------------------------------------------------------------ Figure 4
def plot_activation_patterns(result: Mapping[str, Any], path: str | os.PathLike) -> dict:
    """Fig. 4: mean active SAE features per token vs threshold τ, one line per token type. 800 × 500 px.

    Args:
        result: :func:`~segcompass.interpret.activation_patterns`'s result (``thresholds`` (P,),
            ``mean_active_features`` {type: (P,) or None}, ``token_counts``, ``num_samples``, ``hook_layer``,
            ``d_sae``).

    Returns:
        ``{type: [P] means}`` of the lines drawn (types without tokens are left out).
    """
    figure = _figure(800, 500)
    axes = figure.add_subplot()
    thresholds = [float(t) for t in result["thresholds"]]
    drawn = {}
    for name, (colour, style, label) in TYPE_STYLE.items():
        means = result["mean_active_features"].get(name)
        if means is None:
            continue
        drawn[name] = [float(m) for m in means]
        count = result["token_counts"].get(name, 0)
        axes.plot(thresholds, drawn[name], style, color=colour, marker="o", linewidth=2,
                  label=f"{label}: {count} tokens")
    axes.set_xticks(thresholds)
    axes.set_xlabel("activation threshold τ (feature active when h ≥ τ)")
    axes.set_ylabel("mean active SAE features per token")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(title="token type", fontsize=9)
    axes.set_title(f"Fig. 4: active SAE features per token type vs threshold\n{result['num_samples']} samples, "
                   f"SAE on hidden_states[{result['hook_layer']}], d_sae = {result['d_sae']}", fontsize=11)
    _save(figure, path)
    return drawn


# ------------------------------------------------------------------------------------------------ Figure 5
def plot_instance_coverage(result: Mapping[str, Any], path: str | os.PathLike) -> dict:
    """Fig. 5: instance coverage of the top-K % activated image tokens vs K, against random K %, gap shaded.
    800 × 500 px.

    Args:
        result: :func:`~segcompass.interpret.instance_coverage`'s result (``fractions`` (P,), ``top_k_coverage``
            and ``random_coverage`` (P,) or None, ``num_instances``, ``num_samples``).

    Returns:
        ``{"k_percent": [P], "top_k": [P], "random": [P], "gap": [P]}`` (empty lists without instances).
    """
    figure = _figure(800, 500)
    axes = figure.add_subplot()
    k = [100 * float(f) for f in result["fractions"]]
    top, rand = result.get("top_k_coverage"), result.get("random_coverage")
    if top is None or rand is None:
        axes.text(0.5, 0.5, "no ground-truth instance in these samples", ha="center", va="center",
                  transform=axes.transAxes)
        top, rand, k_drawn = [], [], []
    else:
        k_drawn = k
        axes.fill_between(k, rand, top, color="#2ca02c", alpha=0.15, linewidth=0, label="gap (top-K − random)")
        axes.plot(k, top, "-o", color="#2ca02c", linewidth=2, label="top-K % most activated image tokens")
        axes.plot(k, rand, "--s", color="#7f7f7f", linewidth=2, label="random K % of image tokens (baseline)")
    axes.set_xticks(k)
    axes.set_xlim(0, max(k) * 1.05)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("K: % of the image tokens kept")
    axes.set_ylabel("instance coverage (fraction of instance pixels\nin a kept token's cell), mean")
    axes.grid(alpha=0.3)
    if k_drawn:
        axes.legend(loc="upper left", fontsize=9)
    axes.set_title(f"Fig. 5: instance coverage vs K\n{result['num_instances']} ground-truth instances in "
                   f"{result['num_samples'] - result.get('num_skipped_samples', 0)} samples with a target "
                   "(tokens ranked by total SAE activation)", fontsize=11)
    _save(figure, path)
    return {"k_percent": k_drawn, "top_k": list(top), "random": list(rand),
            "gap": [a - b for a, b in zip(top, rand)]}


# ------------------------------------------------------------------------------------------------ Figure 8
def plot_agreement(reconstruction: Mapping[str, Any], agreement: Mapping[str, Any], path: str | os.PathLike
                   ) -> dict:
    """Fig. 8: left, SAE reconstruction MSE vs mask dice loss per sample; right, heatmap IoU vs mask IoU per
    sample; OLS lines with 95 % confidence bands and Pearson r. 1300 × 560 px.

    Args:
        reconstruction: :func:`~segcompass.interpret.reconstruction.reconstruction_mask_loss`'s result
            (``sae_mse`` (B,), ``mask_dice_loss`` (B,), None for samples without a target).
        agreement: :func:`~segcompass.interpret.heatmap_mask_agreement`'s result (``heatmap_iou``, ``mask_iou``
            (B,)), optionally with ``has_target`` (B,) bool: no-target samples are drawn hollow.

    Returns:
        ``{"left": fit, "right": fit, "right_targets_only": fit}``, each ``{"pearson_r", "ols_slope",
        "ols_intercept", "n"}``.
    """
    figure = _figure(1300, 560)
    left, right = figure.subplots(1, 2)
    points = [(x, y) for x, y in zip(reconstruction["sae_mse"], reconstruction["mask_dice_loss"]) if y is not None]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    left.scatter(xs, ys, s=30, color="#1f77b4", alpha=0.8, label="one sample with a target")
    fits = {"left": _fit_line(left, xs, ys, "#1f77b4")}
    left.set_xlabel("SAE reconstruction MSE on the hook-layer states\n(Σ over hidden dims, mean over tokens)")
    left.set_ylabel("mask dice loss (training loss, matched slots)")
    left.set_title(f"SAE reconstruction vs mask loss: {_r_text(fits['left'])}\n{len(points)} samples with a "
                   f"target (of {len(reconstruction['sae_mse'])})", fontsize=11)

    heat, mask = list(agreement["heatmap_iou"]), list(agreement["mask_iou"])
    target = list(agreement.get("has_target") or [True] * len(heat))
    with_t = [i for i, t in enumerate(target) if t]
    without = [i for i, t in enumerate(target) if not t]
    right.scatter([heat[i] for i in with_t], [mask[i] for i in with_t], s=30, color="#2ca02c", alpha=0.8,
                  label="sample with a target")
    if without:
        right.scatter([heat[i] for i in without], [mask[i] for i in without], s=60, facecolors="none",
                      edgecolors="#d62728", linewidths=1.5, label="no-target sample (IoU 1 = correctly empty)")
    fits["right"] = _fit_line(right, heat, mask, "#2ca02c")
    fits["right_targets_only"] = {**pearson_and_fit([heat[i] for i in with_t], [mask[i] for i in with_t]),
                                  "n": len(with_t)}
    right.plot([0, 1], [0, 1], ":", color="#7f7f7f", linewidth=1, label="y = x")
    right.set_xlim(-0.03, 1.03)
    right.set_ylim(-0.03, 1.03)
    right.set_aspect("equal")
    right.set_xlabel(f"heatmap IoU with the ground truth (σ(H_k) > {agreement.get('heatmap_threshold', 0.5):g}, "
                     "kept slots)")
    right.set_ylabel("mask IoU with the ground truth (kept slots)")
    subtitle = f"{len(heat)} samples"
    if without:
        subtitle += f"; {_r_text(fits['right_targets_only'])} without the {len(without)} no-target"
    right.set_title(f"Heatmap vs mask: {_r_text(fits['right'])}\n{subtitle}", fontsize=11)
    for axes in (left, right):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="best")
    figure.suptitle("Fig. 8: correlation analyses (one point per sample, teacher-forced reference reasoning)",
                    fontsize=12)
    _save(figure, path)
    return fits


# ------------------------------------------------------------------------------------------------ Figure 9
def _concept_name(concept: Mapping[str, Any], width: int = 28) -> str:
    """``f123 (label)`` (the label shortened to fit ``width`` characters) or ``f123``."""
    label = concept.get("label")
    return f"f{concept['feature']} ({textwrap.shorten(str(label), width, placeholder='…')})" if label else \
        f"f{concept['feature']}"


def _show_image(axes, image: np.ndarray, title: str, gray: bool = False) -> None:
    """``image`` (H, W, 3) uint8 with equal aspect and nearest upsampling; ``gray``: desaturated and lightened, so
    that colours drawn over it belong to the overlay only, with the colour edges drawn black (shapes of equal
    brightness stay apart)."""
    if gray:
        pixels = image.astype(np.float32)  # (H, W, 3)
        luminance = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (H, W)
        edges = np.zeros(luminance.shape, dtype=bool)
        edges[1:] |= np.abs(np.diff(pixels, axis=0)).sum(-1) > 60
        edges[:, 1:] |= np.abs(np.diff(pixels, axis=1)).sum(-1) > 60
        luminance[edges] = -80.0
        axes.imshow(luminance, cmap="gray", vmin=-80, vmax=255, interpolation="nearest")
    else:
        axes.imshow(image, interpolation="nearest")
    axes.set_title(title, fontsize=10)
    axes.set_xticks([])
    axes.set_yticks([])


PANEL_IMAGE = 300
"""Side of every image box of a panel, in pixels (the panel layout is fixed in pixels, not fitted to the labels)."""
_PITCH, _LEFT, _TOP = PANEL_IMAGE + 80, 30, 60  # column pitch (image + gap for a colour bar), margins
_ROWS = (_TOP + 25, _TOP + 25 + PANEL_IMAGE + 75, _TOP + 25 + 2 * PANEL_IMAGE + 140)  # top of rows 1, 2, 3
_BARS = 180  # height of a concept bar chart


def _box(figure, x: float, y: float, width: float, height: float):
    """Axes at pixel box ``(x, y, width, height)`` measured from the figure's top-left corner."""
    fig_w, fig_h = figure.get_size_inches() * figure.dpi
    return figure.add_axes((x / fig_w, 1 - (y + height) / fig_h, width / fig_w, height / fig_h))


def _concept_bars(axes, concepts: Sequence[Mapping[str, Any]], slot: int) -> None:
    """Horizontal bars of the slot-attention weights, the concept names written inside the axes (top = highest)."""
    from matplotlib.ticker import MaxNLocator

    weights = [float(c["weight"]) for c in concepts]
    rows = range(len(concepts))[::-1]  # first concept on top
    axes.barh(list(rows), weights, color="#1b7a1b", alpha=0.35, height=0.8)
    top = max(weights) if max(weights) > 0 else 1.0
    axes.set_xlim(0, top * 1.02)
    axes.set_ylim(-0.6, len(concepts) - 0.4)
    for row, concept in zip(rows, concepts):
        axes.text(top * 0.01, row, _concept_name(concept), va="center", ha="left", fontsize=8)
        axes.text(top * 1.0, row, f"h={float(concept['activation']):.2f}", va="center", ha="right", fontsize=7,
                  color="#444444")
    axes.set_yticks([])
    axes.set_xlabel("slot attention weight (bar); h = SAE activation", fontsize=8)
    axes.tick_params(axis="x", labelsize=7)
    axes.xaxis.set_major_locator(MaxNLocator(4))
    axes.set_title(f"slot {slot}: top {len(concepts)} concepts", fontsize=9)


def plot_sample_panel(panel: Mapping[str, Any], path: str | os.PathLike) -> dict:
    """Fig. 9-style panel of one sample: ``30 + 380 · max(4, K)`` × 1060 px, every image in a 300 × 300 px box
    (equal aspect, nearest upsampling).

    Row 1: instruction and reasoning; the image; the activated image tokens (per-token SAE activation total over the
    ``(g_h, g_w)`` grid, over the image, ground truth outlined); prediction vs ground truth with the IoU. Row 2: each
    slot's heatmap σ(H_k) over the image with its confidence and kept / dropped state. Row 3: each kept slot's top
    concepts (slot-attention weight bars, named ``f123 (label)`` when the SAE has a label).

    Args:
        panel: ``sample_id``, ``instruction``, ``reasoning``, ``image`` (H, W, 3) uint8, ``token_activation``
            (g_h, g_w), ``heatmaps`` (K, H, W) in [0, 1], ``confidences`` (K,), ``kept`` (slot indices),
            ``threshold``, ``prediction`` and ``ground_truth`` (H, W) bool, ``mask_iou``, ``concepts`` (K lists of
            ``{"feature", "label", "activation", "weight"}``).

    Returns:
        ``{"size": (width, height) px, "slots": K}``.
    """
    image = np.asarray(panel["image"])
    heatmaps = np.asarray(panel["heatmaps"], dtype=np.float32)  # (K, H, W)
    if image.ndim != 3 or heatmaps.ndim != 3 or heatmaps.shape[1:] != image.shape[:2]:
        raise ValueError(f"panel image {image.shape} and heatmaps {heatmaps.shape} must be (H, W, 3) and (K, H, W) "
                         "at the same (H, W); build the panel with segcompass.interpret.panels.sample_panel.")
    num_slots, (height, width) = heatmaps.shape[0], image.shape[:2]
    columns = max(4, num_slots)
    size = (_LEFT + _PITCH * columns, 1060)
    figure = _figure(*size, constrained=False)
    kept = {int(k) for k in panel["kept"]}
    threshold = float(panel["threshold"])
    from matplotlib import colormaps
    from matplotlib.patches import Patch

    def image_box(column: int, row: int):
        return _box(figure, _LEFT + _PITCH * column, _ROWS[row], PANEL_IMAGE, PANEL_IMAGE)

    def colour_bar(mappable, column: int, row: int, label: str) -> None:
        bar_axes = _box(figure, _LEFT + _PITCH * column + PANEL_IMAGE + 8, _ROWS[row] + 15, 12, PANEL_IMAGE - 30)
        figure.colorbar(mappable, cax=bar_axes).set_label(label, fontsize=8)
        bar_axes.tick_params(labelsize=7)

    # row 1: text, image, activated tokens, prediction vs ground truth
    text_axes = image_box(0, 0)
    text_axes.axis("off")
    reasoning = textwrap.shorten(panel["reasoning"] or "(none)", 700, placeholder=" …")
    text = (f"instruction:\n{textwrap.fill(panel['instruction'], 40)}\n\nreasoning (reference, teacher-forced):\n"
            f"{textwrap.fill(reasoning, 40)}")
    text_axes.text(0.0, 1.0, text, va="top", ha="left", fontsize=9, transform=text_axes.transAxes)
    _show_image(image_box(1, 0), image, f"image ({width}×{height} px)")

    tokens = np.asarray(panel["token_activation"], dtype=np.float64)  # (g_h, g_w)
    token_axes = image_box(2, 0)
    _show_image(token_axes, image, f"activated image tokens ({tokens.shape[0]}×{tokens.shape[1]} grid)", gray=True)
    frame = (-0.5, width - 0.5, height - 0.5, -0.5)  # the image's pixel edges (imshow puts pixel centres at 0, 1, ..)
    shown = token_axes.imshow(tokens, extent=frame, cmap="inferno", alpha=0.65, interpolation="nearest", vmin=0,
                              vmax=max(float(tokens.max()), 1e-6))
    token_axes.hlines(np.arange(1, tokens.shape[0]) * height / tokens.shape[0] - 0.5, *frame[:2], "white",
                      linewidth=0.3)
    token_axes.vlines(np.arange(1, tokens.shape[1]) * width / tokens.shape[1] - 0.5, *frame[2:], "white",
                      linewidth=0.3)
    token_axes.set(xlim=frame[:2], ylim=frame[2:])
    ground_truth = np.asarray(panel["ground_truth"], dtype=bool)
    if ground_truth.any():
        token_axes.contour(ground_truth, levels=[0.5], colors="cyan", linewidths=1.2)
    colour_bar(shown, 2, 0, "Σ SAE activation of the token (cyan: GT)")

    prediction = np.asarray(panel["prediction"], dtype=bool)
    outcome = np.zeros((height, width, 4), dtype=np.float32)
    for (name, colour), where in zip(OUTCOME_COLOURS.items(), (prediction & ground_truth, prediction & ~ground_truth,
                                                               ~prediction & ground_truth)):
        outcome[where] = (*(int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)), 0.75)
    outcome_axes = image_box(3, 0)
    if ground_truth.any():
        verdict = f"prediction vs ground truth: IoU {panel['mask_iou']:.2f}"
    else:
        verdict = ("no target: prediction empty (correct)" if not prediction.any() else
                   f"no target, but {int(prediction.sum())} px predicted")
    _show_image(outcome_axes, image, verdict, gray=True)
    outcome_axes.imshow(outcome, interpolation="nearest")
    outcome_axes.legend(handles=[Patch(color=c, label=n) for n, c in OUTCOME_COLOURS.items()], fontsize=8,
                        loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=3, frameon=False, handlelength=1.2,
                        columnspacing=0.8)

    # row 2: the heatmap of every slot; row 3: the concepts of the kept slots
    cmap = colormaps["magma"]
    for slot in range(num_slots):
        axes = image_box(slot, 1)
        state = "kept" if slot in kept else "dropped"
        confidence = float(panel["confidences"][slot])
        _show_image(axes, image, f"slot {slot}: confidence {confidence:.2f} ({state})", gray=True)
        axes.title.set_color("#1b7a1b" if slot in kept else "#7f7f7f")
        heat = np.clip(heatmaps[slot], 0.0, 1.0)  # (H, W); opacity grows with the value, 0 leaves the image visible
        shown = axes.imshow(heat, cmap=cmap, vmin=0, vmax=1, alpha=0.15 + 0.8 * heat, interpolation="nearest")
        if slot == num_slots - 1:
            colour_bar(shown, slot, 1, "heatmap σ(H_k)")

        bars = _box(figure, _LEFT + _PITCH * slot, _ROWS[2], PANEL_IMAGE, _BARS)
        concepts = list(panel["concepts"][slot]) if slot in kept else []
        if concepts:
            _concept_bars(bars, concepts, slot)
            continue
        bars.axis("off")
        why = (f"slot {slot} dropped\n(confidence {confidence:.2f} < {threshold:.2f}):\nits concepts are not used"
               if slot not in kept else f"slot {slot}: no concept")
        bars.text(0.5, 0.5, why, ha="center", va="center", fontsize=9, color="#7f7f7f", transform=bars.transAxes)
    figure.suptitle(f"Sample {panel['sample_id']}: slots kept at confidence ≥ {threshold:.2f}: "
                    f"{sorted(kept) if kept else 'none (no target predicted)'}", fontsize=12, y=1 - 20 / size[1])
    _save(figure, path)
    return {"size": size, "slots": num_slots}
