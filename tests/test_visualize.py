"""segcompass.visualize: the readable overlay and the heatmap rendering (no model needed)."""

import numpy as np
import pytest
from PIL import Image

from segcompass.visualize import MIN_SIDE, render_heatmap, render_overlay, save_image_atomic, slot_colour, upscale


def scene(h=48, w=80):
    return Image.new("RGB", (w, h), (200, 200, 200))


def instance(slot, score, rows, cols, kept=True, shape=(48, 80)):
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return {"mask": mask, "score": score, "slot": slot, "kept": kept, "box": [0, 0, 0, 0], "concepts": []}


def test_upscale_keeps_the_aspect_ratio_with_whole_pixels():
    big, factor = upscale(scene(48, 80))
    assert factor == 8 and big.size == (640, 384)  # short side 48 -> 384, width scaled by the same factor
    pixels = np.asarray(big)
    assert (pixels[::factor, ::factor] == np.asarray(scene(48, 80))).all()  # nearest: no blur
    large, factor = upscale(scene(400, 500))
    assert factor == 1 and large.size == (500, 400)


def test_overlay_draws_kept_instances_with_caption_legend_and_labels():
    kept = instance(2, 0.84, slice(10, 30), slice(10, 40))
    dropped = instance(1, 0.2, slice(30, 40), slice(50, 70), kept=False)
    out = render_overlay(scene(), [kept, dropped], "the red circle")
    caption = out.height - render_overlay(scene(), [kept, dropped]).height  # the instruction's band on top
    assert out.width == 640 and caption > 0 and out.height > caption + 384  # + the legend below the image
    pixels = np.asarray(out).astype(int)
    centre = pixels[caption + 20 * 8, 25 * 8]  # inside the kept mask: tinted towards the slot's colour
    assert abs(centre - np.array(slot_colour(2))).sum() < abs(np.array([200, 200, 200]) - slot_colour(2)).sum()
    assert (pixels[caption + 35 * 8, 60 * 8] == 200).all()  # a dropped slot is not drawn
    assert (pixels == slot_colour(2)).all(axis=-1).sum() > 200  # outline, label box and legend swatch


def test_no_target_overlay_has_a_banner():
    nothing = [instance(0, 0.1, slice(0, 5), slice(0, 5), kept=False)]
    out = np.asarray(render_overlay(scene(), nothing))
    picture = out[:384]  # no caption: the picture is on top
    dark_rows = (picture < 100).all(axis=-1).mean(axis=1) > 0.5
    assert 20 < dark_rows.sum() < 200 and dark_rows[192]  # a dark strip across the middle


def test_overlay_rejects_a_mask_of_the_wrong_size():
    wrong = instance(0, 0.9, slice(0, 5), slice(0, 5), shape=(10, 10))
    with pytest.raises(ValueError, match=r"shape \(10, 10\).*48x80"):
        render_overlay(scene(), [wrong])


def test_heatmap_is_laid_over_the_image():
    heat = np.zeros((12, 20), dtype=np.float32)
    heat[3:6, 5:10] = 1.0  # any size: resized to the image
    out = render_heatmap(scene(), heat, "slot 0 · 0.90 · kept")
    assert out.width == 640 and out.height > 384
    pixels = np.asarray(out).astype(int)
    colours = pixels.std(axis=-1)  # grey where the heat is 0, coloured where it is high
    assert colours.max() > 60 and np.median(colours) < 5
    with pytest.raises(ValueError, match="2-D"):
        render_heatmap(scene(), np.zeros((2, 3, 4)))


def test_save_image_atomic(tmp_path):
    path = save_image_atomic(scene(), tmp_path / "out.png")
    assert Image.open(path).size == (80, 48) and [p.name for p in tmp_path.iterdir()] == ["out.png"]
    with pytest.raises(ValueError, match=r"\.png or \.jpg"):
        save_image_atomic(scene(), tmp_path / "out.unknown")


def test_min_side_is_readable():
    assert MIN_SIDE >= 384
