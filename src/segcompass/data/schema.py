"""The one schema every SegCompass dataset uses (benchmark loaders and the synthetic generator).

One row = one (image, instruction) sample:

| column         | type                                   | meaning                                                     |
|----------------|----------------------------------------|-------------------------------------------------------------|
| ``image``      | ``Image()``                            | the RGB image                                               |
| ``instruction``| ``string``                             | the referring expression / reasoning instruction            |
| ``masks``      | ``List({"size": [H, W], "counts": str})`` | one COCO-RLE (compressed) mask per target instance; ``[]`` when there is no target |
| ``ignore_mask``| ``{"size": [H, W], "counts": str}`` or ``None`` | pixels excluded from scoring (ReasonSeg ignore regions) |
| ``no_target``  | ``bool``                               | True when the instruction refers to nothing in the image    |
| ``boxes``      | ``List(List(float32))``                | per-instance ``[x, y, w, h]`` in pixels                     |
| ``height``/``width`` | ``int32``                        | original image size                                         |
| ``reasoning``  | ``string``                             | a reference chain of thought (``""`` when the source has none) |
| ``image_id``, ``sample_id`` | ``string``                | identifiers in the source dataset                           |
| ``instance_ids`` | ``List(string)``                     | source annotation ids of the instances                      |
| ``split``, ``source`` | ``string``                      | split name and dataset name (``"refcoco"``, ``"synthetic"``, …) |

Masks stay compressed until needed (:func:`decode_rle`).
"""

from __future__ import annotations

import datasets

RLE_FEATURE = {"size": datasets.List(datasets.Value("int32")), "counts": datasets.Value("string")}

SEGMENTATION_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "instruction": datasets.Value("string"),
        "masks": datasets.List(RLE_FEATURE),
        "ignore_mask": RLE_FEATURE,
        "no_target": datasets.Value("bool"),
        "boxes": datasets.List(datasets.List(datasets.Value("float32"))),
        "height": datasets.Value("int32"),
        "width": datasets.Value("int32"),
        "reasoning": datasets.Value("string"),
        "image_id": datasets.Value("string"),
        "sample_id": datasets.Value("string"),
        "instance_ids": datasets.List(datasets.Value("string")),
        "split": datasets.Value("string"),
        "source": datasets.Value("string"),
    }
)

COLUMNS = tuple(SEGMENTATION_FEATURES.keys())
