"""Image-text corpora for SAE training (a different, two-column schema).

:data:`CORPUS_FEATURES` = ``{"image": Image(), "text": string}``: one row per image with the text it is paired with.

Input formats (``format="auto"`` picks by the first record's keys):

``obelics``
    Interleaved documents as in OBELICS: ``{"texts": [str | None, ...], "images": [img | None, ...], ...}`` where
    position ``i`` holds either a text or an image. Each image becomes a row. ``text_context="adjacent"``
    (default) pairs it with the first non-empty text after it, else the last one before it;
    ``text_context="document"`` with all texts of the document joined by blank lines.
``pairs``
    Image + caption records: ``{"image": img, "text": str}`` (``caption`` is accepted for ``text``).

Files: JSON Lines (``.jsonl``), a JSON list (``.json``), CSV (``.csv``, pairs) or parquet (``.parquet``); ``path``
may be one file or a directory (all such files, recursively, sorted). An image (``img``) is a path (relative to
``image_root``, default the file's folder), a ``{"bytes", "path"}`` dict or raw bytes. Remote ``http(s)://`` images
(as in the raw OBELICS release) cannot be fetched offline: those rows are skipped and counted in the load report, as
are documents without images and pairs without an image. A local image that does not exist or cannot be read (its
header is checked), ``texts`` / ``images`` that are not lists, and a text that is not a string raise a ValueError
naming the record. Empty files give an empty dataset.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Iterator, Literal

import datasets
import pyarrow.parquet as pq

from ..utils.logging import get_logger
from ._common import LoadReport, Skip, dataset_from_generator
from ._files import PathLike, data_file_not_found, decode_text, file_stamp
from ._images import image_by_path, image_size

logger = get_logger(__name__)

CORPUS_FEATURES = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
"""Schema of :func:`load_image_text_corpus`: an image and its paired text."""

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
CONVERSION_VERSION = "2"
"""Part of the cache key: bump it whenever the conversion of a record changes."""
REMOTE_IMAGE = "remote image URL (download the images and point the records at local files)"
NO_IMAGE_DOCUMENT = "document without images"
NO_IMAGE_PAIR = "pair without an image"


def corpus_files(path: PathLike) -> list[Path]:
    """The corpus files: ``path`` itself or every supported file under a directory."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise data_file_not_found(path, f"no corpus file ({', '.join(SUFFIXES)}) in this directory")
        return files
    if not path.is_file():
        raise data_file_not_found(path, "corpus file not found")
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{path}: unsupported corpus file type; use one of {SUFFIXES}.")
    return [path]


def iter_records(path: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """``(record, "file:line-or-row")`` for every record of one corpus file."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for number, line in enumerate(decode_text(path.read_bytes(), path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}:{number} is not valid JSON ({error.msg}); the file is truncated or corrupted."
                ) from None
            yield record, f"{path.name}:{number}"
    elif suffix == ".json":
        try:
            records = json.loads(decode_text(path.read_bytes(), path))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error.msg}); the file is truncated or corrupted.") from None
        if not isinstance(records, list):
            raise ValueError(f"{path}: a .json corpus must hold a list of records.")
        for number, record in enumerate(records):
            yield record, f"{path.name}:{number}"
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(decode_text(path.read_bytes(), path), newline=""))
        for number, record in enumerate(reader, start=2):
            yield record, f"{path.name}:{number}"
    else:
        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            for record in batch.to_pylist():
                yield record, f"{path.name}:{number}"
                number += 1


def detect_format(record: Any, where: str) -> str:
    """``"obelics"`` for ``texts`` + ``images`` lists, ``"pairs"`` for ``image`` + ``text`` / ``caption``."""
    if isinstance(record, dict) and {"texts", "images"} <= set(record):
        return "obelics"
    if isinstance(record, dict) and "image" in record and ({"text", "caption"} & set(record)):
        return "pairs"
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise ValueError(
        f"{where}: record keys {keys} match no corpus format; expected 'texts' + 'images' (obelics) or "
        "'image' + 'text' (pairs)."
    )


def _image(value: Any, root: Path, where: str) -> dict[str, Any] | str:
    """Image storage (its header checked to be a readable image), or a skip reason string for a remote URL."""
    if isinstance(value, dict):
        if value.get("bytes") is not None and not isinstance(value["bytes"], (bytes, bytearray)):
            raise ValueError(
                f"{where}: image 'bytes' must be bytes, got {type(value['bytes']).__name__}; store the encoded image "
                "file's bytes, or a path."
            )
        if value.get("bytes"):
            value = bytes(value["bytes"])
        else:
            value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        image_size(bytes(value), where)
        return {"bytes": bytes(value), "path": None}
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: unsupported image value of type {type(value).__name__}.")
    if value.startswith(("http://", "https://")):
        return REMOTE_IMAGE
    path = Path(value) if os.path.isabs(value) else root / value
    if not path.is_file():
        raise data_file_not_found(path, f"{where}: image not found; set image_root= to the folder the paths are under")
    image_size(path, f"{where} ({path})")
    return image_by_path(path)


def _text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where}: 'text' must be a string, got {type(value).__name__}.")
    return value


def _adjacent_text(texts: list[Any], index: int) -> str:
    after = [t for t in texts[index + 1 :] if isinstance(t, str) and t.strip()]
    if after:
        return after[0].strip()
    before = [t for t in texts[:index] if isinstance(t, str) and t.strip()]
    return before[-1].strip() if before else ""


def _corpus_rows(
    files: list[str], stamps: list[Any], format: str, image_root: str | None, text_context: str
) -> Iterator[dict[str, Any] | Skip]:
    del stamps  # only part of the cache key
    for file in files:
        path = Path(file)
        root = Path(image_root) if image_root else path.parent
        for record, where in iter_records(path):
            kind = detect_format(record, where)
            if format != "auto" and kind != format:
                raise ValueError(f"{where}: format={format!r} but the record looks like {kind!r}; pass format='auto'.")
            if kind == "pairs":
                text = _text(record.get("text", record.get("caption")), where)
                if record.get("image") in (None, ""):
                    yield Skip(NO_IMAGE_PAIR, where)
                    continue
                image = _image(record["image"], root, where)
                if isinstance(image, str):
                    yield Skip(image, where)
                else:
                    yield {"image": image, "text": text}
                continue
            for column in ("texts", "images"):
                if record.get(column) is not None and not isinstance(record[column], list):
                    raise ValueError(f"{where}: {column!r} must be a list, got {type(record[column]).__name__}.")
            texts, images = list(record.get("texts") or []), list(record.get("images") or [])
            if len(texts) != len(images):
                raise ValueError(f"{where}: 'texts' ({len(texts)}) and 'images' ({len(images)}) differ in length.")
            positions = [i for i, value in enumerate(images) if value not in (None, "")]
            if not positions:
                yield Skip(NO_IMAGE_DOCUMENT, where)
                continue
            document = "\n\n".join(t.strip() for t in texts if isinstance(t, str) and t.strip())
            for i in positions:
                image = _image(images[i], root, f"{where} image {i}")
                if isinstance(image, str):
                    yield Skip(image, f"{where}#{i}")
                    continue
                yield {"image": image, "text": document if text_context == "document" else _adjacent_text(texts, i)}


def load_image_text_corpus(
    path: PathLike,
    *,
    format: Literal["auto", "obelics", "pairs"] = "auto",
    image_root: PathLike | None = None,
    text_context: Literal["adjacent", "document"] = "adjacent",
    cache_dir: PathLike | None = None,
) -> datasets.Dataset:
    """Load an image-text corpus as a :data:`CORPUS_FEATURES` dataset (see the module docstring).

    Args:
        path: a corpus file or a directory of them.
        format: ``"auto"``, ``"obelics"`` or ``"pairs"``.
        image_root: folder relative image paths are under (default: each file's folder).
        text_context: obelics only: ``"adjacent"`` or ``"document"``.
        cache_dir: datasets cache folder (default under ``HF_HOME``).

    Skipped rows (remote images, documents / pairs without an image) are counted in
    :func:`~segcompass.data.get_load_report`.
    """
    if format not in ("auto", "obelics", "pairs"):
        raise ValueError(f"format={format!r} must be 'auto', 'obelics' or 'pairs'.")
    if text_context not in ("adjacent", "document"):
        raise ValueError(f"text_context={text_context!r} must be 'adjacent' or 'document'.")
    if image_root is not None and not Path(image_root).is_dir():
        raise data_file_not_found(image_root, "image_root is not a directory")
    files = corpus_files(path)
    report = LoadReport(source="corpus", split="train")
    gen_kwargs = dict(
        files=[str(f) for f in files], stamps=[file_stamp(f) for f in files], format=format,
        image_root=None if image_root is None else os.path.abspath(image_root), text_context=text_context,
    )
    dataset = dataset_from_generator(
        _corpus_rows, gen_kwargs, CORPUS_FEATURES, report, version=CONVERSION_VERSION, cache_dir=cache_dir
    )
    logger.info("image-text corpus %s: %d rows", path, len(dataset))
    return dataset
