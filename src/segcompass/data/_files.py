"""File access of the benchmark loaders: the missing-file error, reading text and JSON with useful errors, the
content stamp that keys the arrow cache, and the progress bar."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import datasets

from ..utils.logging import get_logger

logger = get_logger(__name__)

DIGEST_FULL_BYTES = 64 << 20
"""Files up to this size are hashed whole for :func:`file_stamp`; larger ones by a sample of blocks."""

PathLike = str | os.PathLike


class DataFileNotFoundError(FileNotFoundError, ValueError):
    """A file a loader needs (annotation file, image, split folder) does not exist.

    Subclasses both :class:`FileNotFoundError` and :class:`ValueError` so callers can catch either. ``filename``
    is the missing path; the message starts with it.
    """

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def data_file_not_found(path: PathLike, message: str) -> DataFileNotFoundError:
    """Build a :class:`DataFileNotFoundError` whose text names ``path`` and says how to fix it."""
    return DataFileNotFoundError(2, message, str(path))


def require_file(path: PathLike, what: str, hint: str = "") -> Path:
    """Return ``Path(path)`` if it is a file, else raise :class:`DataFileNotFoundError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise data_file_not_found(path, f"{what} not found{'; ' + hint if hint else ''}")
    return path


def decode_text(raw: bytes, path: PathLike) -> str:
    """UTF-8 text, falling back to cp1252 (some ReasonSeg jsons were written on Windows) and then latin-1."""
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    logger.debug("%s is neither UTF-8 nor cp1252; decoding as latin-1", path)
    return raw.decode("latin-1")


def read_json(path: PathLike, what: str = "annotation file") -> Any:
    """Parse a JSON file; a missing file or invalid / truncated JSON raises an error naming the file."""
    path = require_file(path, what)
    text = decode_text(path.read_bytes(), path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{what} {path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); the file "
            "is probably truncated or corrupted: download it again."
        ) from None


def content_digest(path: PathLike, size: int | None = None) -> str:
    """BLAKE2b digest of a file's content: all of it up to :data:`DIGEST_FULL_BYTES`, else the first and last 4 MiB
    plus 64 evenly spaced 64 KiB blocks (a parquet file's footer, which describes every row group, is in the last
    part)."""
    size = os.path.getsize(path) if size is None else size
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        if size <= DIGEST_FULL_BYTES:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        else:
            edge, block, count = 4 << 20, 64 << 10, 64
            offsets = [0, size - edge] + [edge + i * (size - 2 * edge - block) // (count - 1) for i in range(count)]
            for offset in offsets:
                handle.seek(offset)
                digest.update(handle.read(edge if offset in (0, size - edge) else block))
    return digest.hexdigest()


def file_stamp(path: PathLike) -> tuple[str, int, int, int, str]:
    """``(absolute path, size, mtime_ns, ctime_ns, content digest)``: part of cache keys, so an edited input file is
    never served stale, even when it was rewritten with the same size and its mtime restored (``os.utime`` cannot
    set the ctime, and the digest covers the content)."""
    stat = os.stat(path)
    return os.path.abspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, content_digest(path, stat.st_size)


def progress(iterable: Iterable, *, desc: str, total: int | None = None, unit: str = "it") -> Iterator:
    """A tqdm progress bar honouring ``datasets.disable_progress_bars()``."""
    return iter(datasets.utils.tqdm(iterable, desc=desc, total=total, unit=unit, leave=False))
