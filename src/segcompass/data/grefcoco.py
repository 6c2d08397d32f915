"""gRefCOCO (GRES): generalised referring expressions with multi-target and no-target refs.

On-disk layout (``henghuiding/gRefCOCO``)::

    <data_dir>/grefcoco/grefs(unc).json   # list of refs (``grefs(unc).p`` is read, safely, when the json is absent)
    <data_dir>/grefcoco/instances.json    # COCO-style images / annotations
    <data_dir>/images/train2014/          # or <data_dir>/train2014, <data_dir>/images/mscoco/images/train2014

A ref is ``{ref_id, image_id, ann_id: [ids], category_id: [ids], split, sentences: [{sent_id, raw, sent, tokens}],
sent_ids, no_target}``. No-target refs have ``ann_id == [-1]`` (and ``no_target: true`` in the json release);
either marker makes a row ``no_target=True`` with ``masks=[]``, ``boxes=[]``, ``instance_ids=[]``. If both are
present and disagree, the file is inconsistent and loading fails. Multi-target refs give one mask per ``ann_id``.
Splits: train / val / testA / testB (exact match). Note the 2023-08-29 release renumbered some val/test ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import datasets

from ..utils.logging import get_logger
from ._common import LoadReport, dataset_from_rows
from ._files import PathLike, data_file_not_found, progress, read_json
from .refcoco import (
    NO_SENTENCES,
    CocoIndex,
    as_id,
    check_refs,
    drop_duplicate_refs,
    resolve_image_dir,
    select_split,
    sentence_rows,
)
from .safe_pickle import safe_load_pickle
from .schema import SEGMENTATION_FEATURES

logger = get_logger(__name__)

SOURCE = "grefcoco"
NO_SEGMENTATION = "a target annotation has no usable segmentation"


def _read_grefs(folder: Path) -> tuple[list[dict[str, Any]], Path]:
    json_path, pickle_path = folder / "grefs(unc).json", folder / "grefs(unc).p"
    if json_path.is_file():
        refs, path = read_json(json_path, "gRefCOCO refs file"), json_path
    elif pickle_path.is_file():
        refs, path = safe_load_pickle(pickle_path), pickle_path
    else:
        raise data_file_not_found(
            json_path, "gRefCOCO refs file not found (nor grefs(unc).p); download gRefCOCO into <data_dir>/grefcoco"
        )
    return check_refs(refs, path, multi_target=True), path


def target_ann_ids(ref: dict[str, Any], where: str) -> list[int]:
    """The ref's annotation ids; ``[]`` for a no-target ref (``ann_id == [-1]`` and/or ``no_target``).

    An id listed twice (it would give two identical target masks), a non-integer id or a ``no_target`` that is not a
    boolean raise a ValueError naming ``where``.
    """
    raw = ref["ann_id"]
    ann_ids = [as_id(a, "ann_id", where) for a in (raw if isinstance(raw, (list, tuple)) else [raw])]
    marker_empty = ann_ids == [-1] or not ann_ids
    if -1 in ann_ids and not marker_empty:
        raise ValueError(f"{where}: ann_id {ann_ids} mixes -1 (no target) with real annotation ids.")
    repeated = sorted({a for a in ann_ids if ann_ids.count(a) > 1})
    if repeated:
        raise ValueError(
            f"{where}: ann_id {ann_ids} lists annotation {repeated[0]} twice; a target would count as two instances. "
            "Fix the refs file or download it again."
        )
    if "no_target" in ref and not (isinstance(ref["no_target"], bool) or ref["no_target"] in (0, 1)):
        raise ValueError(
            f"{where}: no_target={ref['no_target']!r} must be true or false; the refs file is corrupted, download it "
            "again."
        )
    if "no_target" in ref and bool(ref["no_target"]) != marker_empty:
        raise ValueError(
            f"{where}: no_target={ref['no_target']} disagrees with ann_id={ann_ids}; the refs file is inconsistent, "
            "download it again."
        )
    return [] if marker_empty else ann_ids


def load_grefcoco(
    data_dir: PathLike,
    split: str,
    *,
    image_dir: PathLike | None = None,
    sentence_field: Literal["sent", "raw"] = "sent",
    verify_image_sizes: bool = True,
) -> datasets.Dataset:
    """Load one gRefCOCO split as :data:`~segcompass.data.schema.SEGMENTATION_FEATURES`, one row per sentence.

    Args:
        data_dir: folder holding ``grefcoco/`` (and the images, see the module docstring).
        split: ``"train"``, ``"val"``, ``"testA"`` or ``"testB"`` (as present in the file).
        image_dir: COCO train2014 folder (default: found under ``data_dir``, as for :func:`load_refcoco`).
        sentence_field: ``"sent"`` (default) or ``"raw"``.
        verify_image_sizes: check each used image's header against ``instances.json``.

    ``sample_id`` is ``"ref{ref_id}_sent{sent_id}"``; masks are one COCO RLE per target annotation (all targets are
    kept, however many). A multi-target ref with an annotation lacking segmentation is skipped as a whole (a partial
    target set would be a wrong label) and counted in :func:`~segcompass.data.get_load_report`.
    """
    if sentence_field not in ("sent", "raw"):
        raise ValueError(f"sentence_field={sentence_field!r} must be 'sent' or 'raw'.")
    data_dir = Path(data_dir)
    refs, refs_path = _read_grefs(data_dir / SOURCE)
    refs = select_split(refs, split, refs_path)
    coco = CocoIndex(
        data_dir / SOURCE / "instances.json",
        resolve_image_dir(data_dir, image_dir),
        verify_image_sizes=verify_image_sizes,
    )
    report = LoadReport(source=SOURCE, split=split)
    refs = drop_duplicate_refs(refs, report)
    rows = []
    for ref in progress(refs, desc=f"grefcoco {split}", unit="ref"):
        ref_id, image_id = ref["ref_id"], int(ref["image_id"])  # checked by check_refs
        where = f"{refs_path} ref {ref_id}"
        ann_ids = target_ann_ids(ref, where)
        image, height, width = coco.image(image_id, where)
        instances = [coco.instance(ann_id, image_id, where) for ann_id in ann_ids]
        sentences = list(ref["sentences"])
        if not sentences:
            report.skip(NO_SENTENCES, f"ref{ref_id}")
            continue
        if any(instance is None for instance in instances):
            report.skip(NO_SEGMENTATION, f"ref{ref_id}", count=max(len(sentences), 1))
            continue
        masks = [rle for rle, _ in instances]
        boxes = [box for _, box in instances]
        rows += sentence_rows(
            sentences, sentence_field, report, lambda sentence: f"ref{ref_id}_sent{sentence.get('sent_id', '?')}",
            image=image, masks=masks, boxes=boxes, height=height, width=width, image_id=str(image_id),
            instance_ids=[str(a) for a in ann_ids], split=split, source=SOURCE, no_target=not ann_ids,
        )
    logger.info("grefcoco %s: %d rows from %d refs", split, len(rows), len(refs))
    return dataset_from_rows(rows, SEGMENTATION_FEATURES, report)
