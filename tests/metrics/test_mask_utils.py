"""segcompass.utils.masks: binarisation rules, COCO RLE, boxes, unions, resizing."""

import re

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from segcompass.utils.masks import (
    decode_rle,
    encode_rle,
    label_map_to_masks,
    mask_to_box,
    normalize_rle,
    resize_mask_nearest,
    to_binary_mask,
    union_masks,
)


def _random_masks(seed: int, count: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        h, w = rng.integers(1, 40, size=2)
        density = rng.choice([0.0, 0.05, 0.5, 0.95, 1.0])
        yield rng.random((h, w)) < density


# ----------------------------------------------------------------------------------------------- to_binary_mask
def test_float_probabilities_use_strict_threshold():
    probs = np.array([[0.0, 0.5], [0.51, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(to_binary_mask(probs), [[False, False], [True, True]])
    np.testing.assert_array_equal(to_binary_mask(probs, threshold=0.0), [[False, True], [True, True]])


def test_integer_masks_use_nonzero():
    image = np.array([[0, 255], [1, 0]], np.uint8)
    np.testing.assert_array_equal(to_binary_mask(image), [[False, True], [True, False]])
    np.testing.assert_array_equal(to_binary_mask(np.array([[0, 3]], np.int64)), [[False, True]])


def test_float_values_outside_unit_interval_are_refused_with_range():
    logits = np.array([[-2.0, 3.5]])
    with pytest.raises(ValueError, match=r"\[-2, 3\.5\].*logits > 0"):
        to_binary_mask(logits)
    with pytest.raises(ValueError, match="NaN"):
        to_binary_mask(np.array([[np.nan, 0.2]]))


def test_negative_integers_are_refused():
    with pytest.raises(ValueError, match=r"min -1.*label_map_to_masks"):
        to_binary_mask(np.array([[0, -1], [1, 1]]))


@pytest.mark.parametrize("shape", [(3,), (1, 4, 4), (2, 4, 4), (4, 4, 3)])
def test_wrong_ndim_names_the_shape(shape):
    with pytest.raises(ValueError, match=r"2-D mask \(H, W\), got .*" + re.escape(str(shape))):
        to_binary_mask(np.zeros(shape, bool))


def test_torch_pil_and_numpy_agree():
    mask = np.zeros((5, 7), bool)
    mask[1:4, 2:6] = True
    forms = [
        mask,
        mask.astype(np.uint8) * 255,
        torch.from_numpy(mask),
        torch.from_numpy(mask).to(torch.bfloat16),
        torch.from_numpy(mask.astype(np.float32) * 0.9),
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L"),
        Image.fromarray(mask),  # mode "1"
        mask.tolist(),
        encode_rle(mask),
    ]
    for form in forms:
        result = to_binary_mask(form)
        assert result.dtype == bool and result.shape == (5, 7), type(form)
        np.testing.assert_array_equal(result, mask)


def test_multichannel_pil_is_refused():
    with pytest.raises(ValueError, match=r"mode 'RGB'.*convert\('L'\)"):
        to_binary_mask(Image.new("RGB", (4, 3)))


def test_result_does_not_alias_a_bool_input():
    mask = np.zeros((2, 2), bool)
    to_binary_mask(mask)[0, 0] = True
    assert not mask.any()


# ----------------------------------------------------------------------------------------------- RLE
def test_rle_round_trip_and_parity_with_pycocotools():
    for mask in _random_masks(0, 60):
        rle = encode_rle(mask)
        assert isinstance(rle["counts"], str) and rle["size"] == list(mask.shape)
        reference = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert rle["counts"] == reference["counts"].decode("ascii")
        np.testing.assert_array_equal(decode_rle(rle), mask)
        np.testing.assert_array_equal(decode_rle({"size": rle["size"], "counts": rle["counts"].encode()}), mask)


def test_uncompressed_rle_counts():
    # column-major runs over a 3x2 image: 1 zero, 2 ones, 3 zeros -> pixels (1,0) and (2,0) set
    mask = decode_rle({"size": [3, 2], "counts": [1, 2, 3]})
    np.testing.assert_array_equal(mask, [[False, False], [True, False], [True, False]])
    assert normalize_rle({"size": [3, 2], "counts": [1, 2, 3]}) == encode_rle(mask)


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ({"size": [4, 5], "counts": "6"}, r"cover 6 pixels but 'size' \[4, 5\] has 20"),
        ({"size": [2, 2], "counts": [1, 2, 3]}, r"cover 6 pixels but 'size' \[2, 2\] has 4"),
        ({"size": [2, 2], "counts": "04~"}, r"character '~' at position 2"),
        ({"size": [2, 2], "counts": "0R"}, "ends in the middle"),
        ({"size": [2], "counts": "4"}, r"'size' must be \[H, W\].*\[2\]"),
        ({"size": [2, -1], "counts": "4"}, r"'size' must be \[H, W\]"),
        ({"size": [2, 2], "counts": 4}, "got int"),
        ({"size": [2, 2], "counts": [5, -1]}, "negative run length"),
    ],
)
def test_malformed_rle_raises(rle, message):
    with pytest.raises(ValueError, match=message):
        decode_rle(rle)


def test_decode_rle_rejects_non_rle():
    with pytest.raises(ValueError, match=r"keys 'size' and 'counts'.*\['size'\]"):
        decode_rle({"size": [2, 2]})


# ----------------------------------------------------------------------------------------------- geometry
def test_mask_to_box():
    mask = np.zeros((6, 8), bool)
    mask[2:5, 1:4] = True
    mask[3, 6] = True
    assert mask_to_box(mask) == [1.0, 2.0, 6.0, 3.0]
    assert mask_to_box(np.zeros((3, 3), bool)) == [0.0, 0.0, 0.0, 0.0]
    for m in _random_masks(1, 20):
        if m.any():
            rle = encode_rle(m)
            assert mask_to_box(m) == coco_mask.toBbox({"size": rle["size"], "counts": rle["counts"].encode()}).tolist()


def test_union_masks_counts_overlap_once():
    a = np.zeros((4, 4), bool)
    a[0:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    union = union_masks([a, encode_rle(b)])
    assert union.sum() == 12
    np.testing.assert_array_equal(union_masks([], shape=(2, 3)), np.zeros((2, 3), bool))


def test_union_masks_errors():
    with pytest.raises(ValueError, match="pass shape"):
        union_masks([])
    with pytest.raises(ValueError, match=r"Instance mask 1 has shape \(3, 3\).*\(4, 4\)"):
        union_masks([np.zeros((4, 4), bool), np.zeros((3, 3), bool)])
    with pytest.raises(ValueError, match=r"list of instance masks, got ndarray of shape \(2, 4, 4\)"):
        union_masks(np.zeros((2, 4, 4), bool))


def test_resize_nearest_and_label_map():
    mask = np.array([[True, False], [False, False]])
    up = resize_mask_nearest(mask, (4, 4))
    assert up.sum() == 4 and up[:2, :2].all()
    np.testing.assert_array_equal(resize_mask_nearest(up, (2, 2)), mask)
    target, ignore = label_map_to_masks(np.array([[0, 1], [255, 2]]))
    np.testing.assert_array_equal(target, [[False, True], [False, True]])
    np.testing.assert_array_equal(ignore, [[False, False], [True, False]])
