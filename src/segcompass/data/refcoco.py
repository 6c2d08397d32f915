"""RefCOCO / RefCOCO+ / RefCOCOg from the refer toolkit's files.

On-disk layout (refer ``data/README.md``)::

    <data_dir>/<dataset>/refs(<split_by>).p     # pickle (Python 2, protocol 2): list of refs
    <data_dir>/<dataset>/instances.json         # COCO-style images / annotations / categories
    <data_dir>/images/mscoco/images/train2014/  # or <data_dir>/images/train2014 or <data_dir>/train2014
        COCO_train2014_000000581857.jpg         # (``file_name`` of instances.json)

A ref is ``{ref_id, ann_id, image_id, category_id, split, sent_ids, sentences: [{sent_id, raw, sent, tokens}],
file_name}``; ``ann_id`` points at one annotation of ``instances.json``. The refs pickle is read with
:mod:`segcompass.data.safe_pickle` (no code can run).

Splits are matched exactly (``"testA"`` does not also select a ``"testAB"``), so a split not in the file raises
a ValueError listing the splits that are. Standard ones: refcoco ``unc`` (train / val / testA / testB) and
``google`` (train / val); refcoco+ ``unc`` (train / val / testA / testB); refcocog ``umd`` (train / val / test)
and ``google`` (train / val).
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Literal, Mapping

import datasets

from ..utils.logging import get_logger
from ._annotations import checked_box, rle_box, segmentation_to_rle
from ._common import LoadReport, dataset_from_rows, make_row
from ._files import PathLike, data_file_not_found, progress, read_json
from ._images import check_image_size, image_by_path, image_size
from .safe_pickle import safe_load_pickle
from .schema import SEGMENTATION_FEATURES

logger = get_logger(__name__)

REFER_DATASETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "refcoco": ("unc", ("unc", "google")),
    "refcoco+": ("unc", ("unc",)),
    "refcocog": ("umd", ("umd", "google")),
}
"""dataset -> (default split_by, standard split_by values)."""

IMAGE_DIR_CANDIDATES = ("images/mscoco/images/train2014", "images/train2014", "train2014")
"""Where the COCO train2014 images are looked for under ``data_dir`` when ``image_dir`` is not given."""

NO_SEGMENTATION = "annotation has no usable segmentation"
EMPTY_EXPRESSION = "empty expression"
NO_SENTENCES = "ref has no sentences"
DUPLICATE_REF = "duplicate ref (listed twice in the refs file)"


def as_id(value: Any, name: str, where: str) -> int:
    """An integer id (an int, or a string of digits as some json releases write them); anything else (None, a
    fraction, NaN, a word) raises a ValueError naming ``where`` and the value."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"{where}: {name} {value!r} is not an integer id; the file is corrupted: download it again.")


def _index(items: Any, kind: str, path: Path) -> dict[int, dict[str, Any]]:
    """``instances.json``'s ``images`` / ``annotations`` by id. Two entries with one id and different content raise
    (one would silently replace the other's mask); an entry listed twice verbatim is kept once."""
    if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
        raise ValueError(
            f"{path}: '{kind}s' must be a list of objects, got {type(items).__name__}"
            + ("" if not isinstance(items, list) else " with non-object entries")
            + "; this is not a COCO instances file: download it again."
        )
    index: dict[int, dict[str, Any]] = {}
    for position, item in enumerate(items):
        if "id" not in item:
            raise ValueError(f"{path}: {kind} {position} lacks 'id'; the file is corrupted: download it again.")
        item_id = as_id(item["id"], "id", f"{path} {kind} {position}")
        if item_id in index and index[item_id] != item:
            raise ValueError(
                f"{path}: {kind} id {item_id} occurs twice with different content; one would silently replace the "
                "other. Remove the wrong entry or download the file again."
            )
        index[item_id] = item
    return index


def resolve_image_dir(data_dir: Path, image_dir: PathLike | None) -> Path:
    """``image_dir`` if given, else the first of :data:`IMAGE_DIR_CANDIDATES` under ``data_dir`` that exists."""
    if image_dir is not None:
        path = Path(image_dir)
        if not path.is_dir():
            raise data_file_not_found(path, "image_dir is not a directory; pass the folder holding COCO train2014")
        return path
    for candidate in IMAGE_DIR_CANDIDATES:
        if (data_dir / candidate).is_dir():
            return data_dir / candidate
    tried = ", ".join(str(data_dir / c) for c in IMAGE_DIR_CANDIDATES)
    raise data_file_not_found(
        data_dir / IMAGE_DIR_CANDIDATES[1],
        f"no COCO train2014 image folder found (tried {tried}); pass image_dir=<folder with COCO_train2014_*.jpg>",
    )


class CocoIndex:
    """An ``instances.json`` indexed by image and annotation id, with checked image paths and cached masks.

    Args:
        path: the ``instances.json`` file.
        image_dir: folder holding the images named by ``images[*].file_name``.
        verify_image_sizes: read each used image's header once and compare its size with ``instances.json``.
    """

    def __init__(self, path: Path, image_dir: Path, *, verify_image_sizes: bool = True) -> None:
        data = read_json(path, "instances.json")
        if not isinstance(data, Mapping) or "images" not in data or "annotations" not in data:
            raise ValueError(
                f"{path} is not a COCO instances file (needs 'images' and 'annotations'); download it again."
            )
        self.path = path
        self.image_dir = image_dir
        self.verify_image_sizes = verify_image_sizes
        self.images = _index(data["images"], "image", path)
        self.annotations = _index(data["annotations"], "annotation", path)
        self._checked: dict[int, tuple[dict[str, Any], int, int]] = {}
        self._instances: dict[int, tuple[dict[str, Any], list[float]] | None] = {}

    def image(self, image_id: int, where: str) -> tuple[dict[str, Any], int, int]:
        """``(image storage, height, width)`` for ``image_id``; a missing entry or file raises naming both."""
        if image_id in self._checked:
            return self._checked[image_id]
        info = self.images.get(image_id)
        if info is None:
            raise ValueError(f"{where}: image id {image_id} is not in {self.path}; the two files do not match.")
        file_name = info.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise ValueError(
                f"{self.path}: image {image_id} lacks 'file_name' (got {file_name!r}); the file is corrupted: "
                "download it again."
            )
        path = self.image_dir / file_name
        if not path.is_file():
            raise data_file_not_found(
                path, f"{where}: image {image_id} not found; put COCO train2014 there or pass image_dir="
            )
        height, width = info.get("height"), info.get("width")
        if height is not None or width is not None:
            check_image_size(
                height, width, f"{where}: image {image_id} ({path}) in {self.path}",
                "fix instances.json, or pass verify_image_sizes=True to compare it with the image",
            )
        if self.verify_image_sizes or height is None or width is None:
            actual = image_size(path, f"image {image_id} ({path})")
            if height is not None and width is not None and actual != (int(height), int(width)):
                raise ValueError(
                    f"{where}: image {image_id} ({path}) is {actual[0]}x{actual[1]} (HxW) but {self.path} says "
                    f"{height}x{width}; use the original COCO image."
                )
            height, width = actual
        entry = (image_by_path(path), int(height), int(width))
        self._checked[image_id] = entry
        return entry

    def instance(self, ann_id: int, image_id: int, where: str) -> tuple[dict[str, Any], list[float]] | None:
        """``(RLE, [x, y, w, h])`` of annotation ``ann_id`` (cached), ``None`` when it has no usable segmentation.

        The annotation must exist and belong to ``image_id``; its RLE is computed at that image's size.
        """
        if ann_id in self._instances:
            return self._instances[ann_id]
        ann = self.annotations.get(ann_id)
        if ann is None:
            raise ValueError(f"{where}: annotation id {ann_id} is not in {self.path}; the two files do not match.")
        if "image_id" not in ann:
            raise ValueError(
                f"{self.path}: annotation {ann_id} lacks 'image_id'; the file is corrupted: download it again."
            )
        if as_id(ann["image_id"], "image_id", f"{self.path} annotation {ann_id}") != image_id:
            raise ValueError(
                f"{where}: annotation {ann_id} belongs to image {ann['image_id']}, not {image_id}; the files do not "
                "match."
            )
        _, height, width = self.image(image_id, where)
        ann_where = f"{self.path} annotation {ann_id}"
        rle = segmentation_to_rle(ann.get("segmentation"), height, width, ann_where)
        if rle is None:
            result = None
        else:
            bbox = ann.get("bbox")
            missing = bbox is None or (isinstance(bbox, list) and not bbox)
            box = rle_box(rle) if missing else checked_box(bbox, ann_where)
            result = (rle, box)
        self._instances[ann_id] = result
        return result


def _refs_path(data_dir: Path, dataset: str, split_by: str) -> Path:
    folder = data_dir / dataset
    path = folder / f"refs({split_by}).p"
    if not path.is_file():
        present = sorted(p.name for p in folder.glob("refs(*).p")) if folder.is_dir() else []
        raise data_file_not_found(
            path,
            f"refs file not found (present in {folder}: {present or 'none'}); download the refer annotations for "
            f"{dataset} or pick split_by= from the files present",
        )
    return path


def check_refs(refs: Any, path: Path, *, multi_target: bool = False) -> list[dict[str, Any]]:
    """The refs of a refer / gRefCOCO file, checked: a list of dicts with ``ref_id``, ``ann_id``, ``image_id``,
    ``split`` and ``sentences`` (a list of sentence objects whose ``sent`` / ``raw`` are strings). ``ann_id`` is one
    integer id, or a list of them for gRefCOCO (``multi_target``). A missing field or a wrong type raises a
    ValueError naming the file, the ref and the value."""
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        raise ValueError(f"{path} does not hold a list of refs (dicts); download it again.")
    required = {"ref_id", "ann_id", "image_id", "split", "sentences"}
    for ref in refs:
        missing = required - set(ref)
        if missing:
            raise ValueError(
                f"{path}: ref {ref.get('ref_id', '?')} lacks {sorted(missing)}; this is not a "
                f"{'gRefCOCO' if multi_target else 'refer refs'} file."
            )
        where = f"{path} ref {ref['ref_id']}"
        as_id(ref["ref_id"], "ref_id", where)
        as_id(ref["image_id"], "image_id", where)
        ann_ids = ref["ann_id"] if multi_target and isinstance(ref["ann_id"], (list, tuple)) else [ref["ann_id"]]
        for ann_id in ann_ids:
            as_id(ann_id, "ann_id", where)
        sentences = ref["sentences"]
        if not isinstance(sentences, list) or not all(isinstance(s, Mapping) for s in sentences):
            raise ValueError(
                f"{where}: 'sentences' must be a list of sentence objects, got {type(sentences).__name__}"
                + (" with non-object entries" if isinstance(sentences, list) else "")
                + "; the file is corrupted: download it again."
            )
        for sentence in sentences:
            for field in ("sent", "raw"):
                if sentence.get(field) is not None and not isinstance(sentence[field], str):
                    raise ValueError(
                        f"{where} sentence {sentence.get('sent_id', '?')}: {field!r} must be a string, got "
                        f"{type(sentence[field]).__name__}; the file is corrupted: download it again."
                    )
    return refs


def drop_duplicate_refs(refs: list[dict[str, Any]], report: LoadReport) -> list[dict[str, Any]]:
    """The refs without verbatim repeats (same ``ref_id`` and content), each repeat counted in ``report`` per
    sentence. Two different refs sharing a ``ref_id`` stay and fail the sample-id uniqueness check if their ids
    collide."""
    seen: dict[Any, list[dict[str, Any]]] = {}
    kept = []
    for ref in refs:
        earlier = seen.setdefault(ref["ref_id"], [])
        if any(ref == other for other in earlier):
            report.skip(DUPLICATE_REF, f"ref{ref['ref_id']}", count=max(len(ref["sentences"]), 1))
            continue
        earlier.append(ref)
        kept.append(ref)
    return kept


def select_split(refs: list[dict[str, Any]], split: str, path: Path) -> list[dict[str, Any]]:
    """Refs whose ``split`` equals ``split`` exactly; an absent split raises listing the present ones."""
    present = sorted({str(ref["split"]) for ref in refs})
    if split not in present:
        raise ValueError(f"split={split!r} is not in {path}; its splits are {present}.")
    return [ref for ref in refs if ref["split"] == split]


def sentence_text(sentence: Mapping[str, Any], field: str) -> str:
    """The sentence's ``field`` (``"sent"`` or ``"raw"``), falling back to the other one, stripped."""
    other = "raw" if field == "sent" else "sent"
    return str(sentence.get(field) or sentence.get(other) or "").strip()


def sentence_rows(sentences, field: str, report: LoadReport, sample_id_of, **row_fields: Any) -> list[dict[str, Any]]:
    """One :func:`make_row` per sentence with non-empty text (``field`` as in :func:`sentence_text`); ``sample_id_of
    (sentence)`` names each row, and a sentence without text is counted in ``report`` as an empty expression.
    ``row_fields``: the other :func:`make_row` fields, shared by every sentence of the ref."""
    rows = []
    for sentence in sentences:
        sample_id = sample_id_of(sentence)
        text = sentence_text(sentence, field)
        if not text:
            report.skip(EMPTY_EXPRESSION, sample_id)
            continue
        rows.append(make_row(instruction=text, sample_id=sample_id, **row_fields))
    return rows


def load_refcoco(
    data_dir: PathLike,
    split: str,
    *,
    dataset: Literal["refcoco", "refcoco+", "refcocog"] = "refcoco",
    split_by: str | None = None,
    per: Literal["expression", "object"] = "expression",
    image_dir: PathLike | None = None,
    sentence_field: Literal["sent", "raw"] = "sent",
    verify_image_sizes: bool = True,
) -> datasets.Dataset:
    """Load one split of RefCOCO / RefCOCO+ / RefCOCOg as :data:`~segcompass.data.schema.SEGMENTATION_FEATURES`.

    Args:
        data_dir: the refer ``data`` folder (holding ``<dataset>/refs(<split_by>).p`` and ``instances.json``).
        split: a split present in the refs file (``"val"``, ``"testA"``, ``"testB"``, ``"test"``, ``"train"``).
        dataset: ``"refcoco"``, ``"refcoco+"`` or ``"refcocog"``.
        split_by: refs partition; default ``"unc"`` (refcoco, refcoco+) or ``"umd"`` (refcocog); ``"google"``
            is allowed for refcoco and refcocog.
        per: ``"expression"`` (default, the standard RES unit): one row per sentence, ``sample_id``
            ``"ref{ref_id}_sent{sent_id}"``. ``"object"``: one row per ref with its *first* sentence as the
            instruction (the unit of the Seg-Zero HF mirrors), ``sample_id`` ``"ref{ref_id}"``.
        image_dir: folder of COCO train2014 images; default the first existing of
            ``<data_dir>/images/mscoco/images/train2014``, ``<data_dir>/images/train2014``, ``<data_dir>/train2014``.
        sentence_field: ``"sent"`` (default: lower-cased, cleaned text, what LISA-family code evaluates) or
            ``"raw"`` (as typed by the annotator).
        verify_image_sizes: open each used image's header once and check its size against ``instances.json``.

    Each row has one mask (the ref's annotation, COCO RLE at the original size), its ``instances.json`` bbox, and
    ``instance_ids=[str(ann_id)]``. Images are stored by path. Refs whose annotation has no usable segmentation
    and empty sentences are skipped and counted in :func:`~segcompass.data.get_load_report`.

    Raises:
        ValueError: unknown ``dataset`` / ``split_by`` / ``per`` / split; invalid or truncated files; a ref whose
            image or annotation id is not in ``instances.json``; a missing image file; size disagreements.
    """
    if dataset not in REFER_DATASETS:
        raise ValueError(f"dataset={dataset!r} is not one of {sorted(REFER_DATASETS)}.")
    default_split_by, standard = REFER_DATASETS[dataset]
    split_by = split_by or default_split_by
    if split_by not in standard:
        raise ValueError(f"split_by={split_by!r} is not available for {dataset}; use one of {list(standard)}.")
    if per not in ("expression", "object"):
        raise ValueError(f"per={per!r} must be 'expression' or 'object'.")
    if sentence_field not in ("sent", "raw"):
        raise ValueError(f"sentence_field={sentence_field!r} must be 'sent' or 'raw'.")
    data_dir = Path(data_dir)
    refs_path = _refs_path(data_dir, dataset, split_by)
    refs = select_split(check_refs(safe_load_pickle(refs_path), refs_path), split, refs_path)
    coco = CocoIndex(
        data_dir / dataset / "instances.json",
        resolve_image_dir(data_dir, image_dir),
        verify_image_sizes=verify_image_sizes,
    )
    report = LoadReport(source=dataset, split=split)
    refs = drop_duplicate_refs(refs, report)
    rows = []
    for ref in progress(refs, desc=f"{dataset}({split_by}) {split}", unit="ref"):
        ref_id, image_id, ann_id = ref["ref_id"], int(ref["image_id"]), int(ref["ann_id"])  # checked by check_refs
        where = f"{refs_path} ref {ref_id}"
        sentences = list(ref["sentences"])
        if per == "object":
            sentences = sentences[:1]
        if not sentences:
            report.skip(NO_SENTENCES, f"ref{ref_id}")
            continue
        image, height, width = coco.image(image_id, where)
        instance = coco.instance(ann_id, image_id, where)
        if instance is None:
            report.skip(NO_SEGMENTATION, f"ref{ref_id}", count=len(sentences))
            continue
        rle, box = instance
        rows += sentence_rows(
            sentences, sentence_field, report,
            lambda sentence: f"ref{ref_id}" if per == "object" else f"ref{ref_id}_sent{sentence.get('sent_id', '?')}",
            image=image, masks=[rle], boxes=[box], height=height, width=width, image_id=str(image_id),
            instance_ids=[str(ann_id)], split=split, source=dataset,
        )
    logger.info("%s(%s) %s: %d rows from %d refs", dataset, split_by, split, len(rows), len(refs))
    return dataset_from_rows(rows, SEGMENTATION_FEATURES, report)
