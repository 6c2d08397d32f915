"""Shared pieces of the benchmark loaders: the load report and the two ways of building a :class:`datasets.Dataset`.
File reading (:mod:`._files`), image references (:mod:`._images`) and COCO-RLE / polygon / box helpers
(:mod:`._annotations`) live in sibling modules and are re-exported here.

Load report
-----------
A loader never drops rows silently. Rows it cannot convert (an annotation without segmentation, a bbox-only mirror
row, ...) are counted per reason, logged as one warning, and recorded in the returned dataset's
``dataset.info.description`` as ``segcompass-load-report: {json}``. :func:`get_load_report` parses it back into a
:class:`LoadReport`. ``DatasetInfo`` travels with ``select`` / ``filter`` / ``save_to_disk``, so the report does too.

Building
--------
* :func:`dataset_from_rows` (``Dataset.from_list``, in memory): for loaders whose images live on disk. Rows store
  the image *by path* (``{"path": abs_path, "bytes": None}``), so loading never reads pixels and ``Image()``
  decodes lazily on access (checked with datasets 5.2). Such a dataset refers to the image files; in datasets 5.2
  ``save_to_disk`` and ``push_to_hub`` embed the image bytes, ``to_parquet`` keeps only the paths. Loading
  a RefCOCO-train-sized split (120k rows) this way took about 6 s on 2 CPU cores, mostly in ``Dataset.from_list``.
* :func:`dataset_from_generator` (``Dataset.from_generator``, arrow cache under ``HF_HOME`` or ``cache_dir``): for
  sources that carry image bytes (parquet mirrors, corpora), so memory stays bounded. The cache key includes each
  input file's :func:`file_stamp` (size, mtime, ctime and a content digest, so a file rewritten with the same size
  and mtime is converted again) and the loader's conversion version. Skipped rows are emitted as placeholder rows
  with a non-empty ``_skip_reason`` column, which is counted and removed afterwards, so the report is right on a
  cache hit too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import datasets
import numpy as np
import pyarrow.compute as pc

from ..utils.logging import get_logger
from ._annotations import (  # noqa: F401 (re-exported: the loaders' shared helpers)
    box_values,
    checked_box,
    checked_xyxy_box,
    polygon_coordinates,
    polygons_to_rle,
    rle_area,
    rle_box,
    rle_to_schema,
    rles_overlap,
    segmentation_to_rle,
    union_rle,
    valid_polygons,
    xyxy_to_xywh,
)
from ._files import (  # noqa: F401 (re-exported)
    DIGEST_FULL_BYTES,
    DataFileNotFoundError,
    PathLike,
    content_digest,
    data_file_not_found,
    decode_text,
    file_stamp,
    progress,
    read_json,
    require_file,
)
from ._images import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, check_image_size, image_by_path, image_size  # noqa: F401

logger = get_logger(__name__)

REPORT_PREFIX = "segcompass-load-report: "
SKIP_COLUMN = "_skip_reason"
MAX_EXAMPLES_PER_REASON = 5


# ----------------------------------------------------------------------------------------------------------------
# Load report
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What a loader kept and skipped. ``skipped`` maps a reason to a row count, ``examples`` the reason to up to
    five ids of skipped rows; ``notes`` carries caveats about the source (e.g. ignore regions merged into masks)."""

    source: str
    split: str
    num_rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        """Total rows skipped over all reasons."""
        return sum(self.skipped.values())

    def skip(self, reason: str, sample_id: str, count: int = 1) -> None:
        """Record ``count`` skipped rows for ``reason`` (``sample_id`` kept as an example)."""
        self.skipped[reason] = self.skipped.get(reason, 0) + count
        examples = self.examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES_PER_REASON:
            examples.append(sample_id)

    def to_json(self) -> str:
        """JSON text of the report."""
        return json.dumps(asdict(self), sort_keys=True)

    def summary(self) -> str:
        """One line per reason, for the warning."""
        return "; ".join(
            f"{count} x {reason} (e.g. {', '.join(self.examples.get(reason, []))})"
            for reason, count in self.skipped.items()
        )


def attach_report(dataset: datasets.Dataset, report: LoadReport) -> datasets.Dataset:
    """Store ``report`` in ``dataset.info.description`` and warn when rows were skipped."""
    report.num_rows = len(dataset)
    dataset.info.description = REPORT_PREFIX + report.to_json()
    if report.num_skipped:
        logger.warning(
            "%s %s: skipped %d row(s), kept %d: %s. The counts are in get_load_report(dataset).skipped.",
            report.source,
            report.split,
            report.num_skipped,
            report.num_rows,
            report.summary(),
        )
    for note in report.notes:
        logger.warning("%s %s: %s", report.source, report.split, note)
    return dataset


def get_load_report(dataset: datasets.Dataset) -> LoadReport | None:
    """The :class:`LoadReport` a SegCompass loader stored in ``dataset.info.description`` (``None`` if absent)."""
    description = dataset.info.description or ""
    if not description.startswith(REPORT_PREFIX):
        return None
    return LoadReport(**json.loads(description[len(REPORT_PREFIX) :]))


# ----------------------------------------------------------------------------------------------------------------
# Building datasets
# ----------------------------------------------------------------------------------------------------------------


def empty_dataset(features: datasets.Features) -> datasets.Dataset:
    """A 0-row dataset with ``features`` (``from_list([])`` cannot carry features)."""
    return datasets.Dataset.from_dict({name: [] for name in features}, features=features)


def check_unique_sample_ids(sample_ids: Sequence[str], report: LoadReport) -> None:
    """Raise a ValueError naming the first ``sample_id`` that occurs more than once (two rows with one id would be
    scored, cached and matched as the same sample)."""
    seen: dict[str, int] = {}
    for sample_id in sample_ids:
        seen[sample_id] = seen.get(sample_id, 0) + 1
    duplicated = {sample_id: count for sample_id, count in seen.items() if count > 1}
    if duplicated:
        first, count = next(iter(duplicated.items()))
        raise ValueError(
            f"{report.source} {report.split}: sample_id {first!r} occurs {count} times ({len(duplicated)} duplicated "
            "id(s) in all); the source lists the same ref / sentence / row twice under one id. Remove the duplicate "
            "or download the file again."
        )


def dataset_from_rows(rows: list[dict[str, Any]], features: datasets.Features, report: LoadReport) -> datasets.Dataset:
    """In-memory dataset of ``rows`` (images by path) with ``report`` attached; duplicate ``sample_id`` values
    raise (:func:`check_unique_sample_ids`)."""
    if "sample_id" in features:
        check_unique_sample_ids([row["sample_id"] for row in rows], report)
    dataset = datasets.Dataset.from_list(rows, features=features) if rows else empty_dataset(features)
    return attach_report(dataset, report)


@dataclass(frozen=True)
class Skip:
    """Yielded by a :func:`dataset_from_generator` generator instead of a row it cannot convert."""

    reason: str
    sample_id: str


SKIP_ID_COLUMN = "_skip_id"
EMPTY_SOURCE = "\x00empty source"
"""Reason of the one placeholder row a generator with no rows at all yields (``datasets`` cannot build zero rows);
removed without being counted."""


def _placeholder(features: datasets.Features) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name, feature in features.items():
        if isinstance(feature, datasets.Value):
            row[name] = "" if feature.dtype in ("string", "large_string") else False if feature.dtype == "bool" else 0
        elif isinstance(feature, datasets.List):
            row[name] = []
        else:
            row[name] = None
    return row


def _marked_rows(
    _generator: Callable[..., Iterator[dict[str, Any] | Skip]],
    _features: datasets.Features,
    _version: str,
    **gen_kwargs: Any,
) -> Iterator[dict[str, Any]]:
    del _version  # only part of the cache key
    placeholder = _placeholder(_features)
    empty = True
    for item in _generator(**gen_kwargs):
        empty = False
        if isinstance(item, Skip):
            yield {**placeholder, SKIP_COLUMN: item.reason, SKIP_ID_COLUMN: item.sample_id}
        else:
            yield {**item, SKIP_COLUMN: "", SKIP_ID_COLUMN: ""}
    if empty:
        yield {**placeholder, SKIP_COLUMN: EMPTY_SOURCE, SKIP_ID_COLUMN: ""}


def dataset_from_generator(
    generator: Callable[..., Iterator[dict[str, Any] | Skip]],
    gen_kwargs: dict[str, Any],
    features: datasets.Features,
    report: LoadReport,
    *,
    version: str,
    cache_dir: PathLike | None = None,
) -> datasets.Dataset:
    """Arrow-cached dataset from ``generator(**gen_kwargs)``, which yields rows of ``features`` or :class:`Skip`.

    Skips are stored as placeholder rows with a reason column, counted into ``report`` and removed, so the report
    is right on a cache hit too. The cache key is ``gen_kwargs`` plus ``version``: put :func:`file_stamp` of every
    input into ``gen_kwargs``, and bump ``version`` whenever the conversion changes (datasets hashes an importable
    generator by its name, not its code, so an edited generator would otherwise be served from the old cache).
    A ValueError raised by the generator reaches the caller unwrapped (datasets would wrap it in
    ``DatasetGenerationError``). Sources without any row give a 0-row dataset, and duplicate ``sample_id`` values
    raise (:func:`check_unique_sample_ids`).
    """
    full_features = datasets.Features(
        {**features, SKIP_COLUMN: datasets.Value("string"), SKIP_ID_COLUMN: datasets.Value("string")}
    )
    try:
        dataset = datasets.Dataset.from_generator(
            _marked_rows,
            features=full_features,
            gen_kwargs={"_generator": generator, "_features": features, "_version": version, **gen_kwargs},
            cache_dir=None if cache_dir is None else str(cache_dir),
        )
    except datasets.exceptions.DatasetGenerationError as error:
        cause = error.__cause__ or error.__context__
        if isinstance(cause, ValueError):
            raise cause from None
        raise
    reasons = dataset.data.column(SKIP_COLUMN)
    skipped = pc.not_equal(reasons, "").to_numpy(zero_copy_only=False)
    if skipped.any():
        skipped_idx = np.flatnonzero(skipped)
        skipped_ids = dataset.data.column(SKIP_ID_COLUMN).take(skipped_idx).to_pylist()
        for reason, sample_id in zip(reasons.take(skipped_idx).to_pylist(), skipped_ids):
            if reason != EMPTY_SOURCE:
                report.skip(reason, sample_id)
        dataset = dataset.select(np.flatnonzero(~skipped))
    dataset = dataset.remove_columns([SKIP_COLUMN, SKIP_ID_COLUMN])
    if "sample_id" in features:
        check_unique_sample_ids(list(dataset["sample_id"]), report)  # (``.data`` ignores the selection)
    return attach_report(dataset, report)


def make_row(
    *,
    image: dict[str, Any],
    instruction: str,
    masks: list[dict[str, Any]],
    boxes: list[list[float]],
    height: int,
    width: int,
    image_id: str,
    sample_id: str,
    instance_ids: list[str],
    split: str,
    source: str,
    no_target: bool = False,
    ignore_mask: dict[str, Any] | None = None,
    reasoning: str = "",
) -> dict[str, Any]:
    """One row of :data:`~segcompass.data.schema.SEGMENTATION_FEATURES` (keyword-only so no field is swapped)."""
    return {
        "image": image,
        "instruction": instruction,
        "masks": masks,
        "ignore_mask": ignore_mask,
        "no_target": no_target,
        "boxes": boxes,
        "height": height,
        "width": width,
        "reasoning": reasoning,
        "image_id": image_id,
        "sample_id": sample_id,
        "instance_ids": instance_ids,
        "split": split,
        "source": source,
    }
