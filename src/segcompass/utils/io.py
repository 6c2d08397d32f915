"""Files the package writes are written atomically: a temporary file beside the target, then ``os.replace``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "save_pretrained_atomic", "write_json_atomic", "write_text_atomic"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path`` (``os.replace``), when it
    fails it is removed. Any writer (text, JSON, PNG, safetensors, a matplotlib figure) becomes atomic::

        with atomic_path("out.png") as tmp:
            image.save(tmp, format="PNG")
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the whole new one, never a part."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, payload) -> None:
    """``payload`` as indented JSON, written atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(payload, indent=2))


def save_pretrained_atomic(obj, directory: str | os.PathLike) -> None:
    """``obj.save_pretrained`` (a model, processor, tokenizer, PEFT adapter ...) into a temporary directory inside
    ``directory``, then each file (or sub-directory) moved into place with ``os.replace``: a reader sees whole files,
    never a partly written one, and a failed save leaves the previous files untouched."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".save-") as tmp:
        obj.save_pretrained(tmp)
        for item in Path(tmp).iterdir():
            target = directory / item.name
            if item.is_dir() and target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
