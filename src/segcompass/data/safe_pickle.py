"""Loading the refer toolkit's ``refs(<split_by>).p`` pickles without executing code.

A pickle can call any importable function while loading (``__reduce__`` -> ``GLOBAL os.system`` + ``REDUCE``), so
``pickle.load`` on a downloaded file is arbitrary code execution. The refs files are plain data (a list of dicts
of str / int / float / list), which a pickle encodes with container and literal opcodes only. Every way for a
pickle to reach a callable goes through :meth:`pickle.Unpickler.find_class` (``GLOBAL``, ``STACK_GLOBAL``,
``INST`` / ``OBJ``, and the ``EXT*`` extension-registry opcodes) or ``persistent_load``; both refuse here, so no
global at all is allowed. The allow-list is empty on purpose: even ``builtins.set`` or ``collections.OrderedDict``
never occur in refer files, and any global means the file is not what it claims to be.

Python 2 strings: the files were written by Python 2 ``cPickle`` (protocol 2), where ``str`` is a byte string.
They are read with ``encoding="bytes"`` and every ``bytes`` in the result (dict keys included) is then decoded as
UTF-8, falling back to latin-1 for the rare non-UTF-8 byte string. (``encoding="latin1"`` alone would turn UTF-8
sentences into mojibake; the default ``"ASCII"`` fails on them.) Python 2 ``unicode`` objects load as ``str``
directly. A side effect: a genuine ``bytes`` value in a Python 3 pickle also comes back as ``str``, which is what
the loaders want anyway.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["UnsafePickleError", "RestrictedUnpickler", "safe_load_pickle", "safe_loads_pickle"]


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a global (a function or class), i.e. it would run code while loading."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds plain containers and literals and refuses every global / persistent id.

    ``source`` names the file in error messages.
    """

    def __init__(self, file: BinaryIO, *, source: str = "<pickle>") -> None:
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - documented in the class
        raise UnsafePickleError(
            f"{self._source}: refusing to load the global {module}.{name}; a refs pickle holds only lists, dicts, "
            "strings and numbers, so this file would run code when loaded. Do not use it: download the file again "
            "from a trusted source."
        )

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102 - documented in the class
        raise UnsafePickleError(
            f"{self._source}: refusing a persistent id ({pid!r}); a refs pickle holds only plain data."
        )


def _decode_bytes(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _to_text(obj: Any) -> Any:
    """Decode every ``bytes`` in a tree of dicts / lists / tuples (dict keys included) to ``str``."""
    if isinstance(obj, (bytes, bytearray)):
        return _decode_bytes(bytes(obj))
    if isinstance(obj, dict):
        return {_to_text(key): _to_text(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_to_text(value) for value in obj]
    if isinstance(obj, tuple):
        return tuple(_to_text(value) for value in obj)
    return obj


def safe_loads_pickle(data: bytes, *, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` and decode Python-2 byte strings to ``str``.

    Raises:
        UnsafePickleError: the pickle references a global (it would execute code); nothing was executed.
        ValueError: the data is truncated or not a pickle (message names ``source``).
    """
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), source=source).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, IndexError, KeyError, TypeError, ValueError, AttributeError,
            OverflowError) as error:
        raise ValueError(
            f"{source} is not a readable pickle ({type(error).__name__}: {error}); the file is probably truncated "
            "or corrupted: download it again."
        ) from None
    try:
        return _to_text(obj)
    except RecursionError:
        raise ValueError(f"{source} nests containers too deeply to be a refs file.") from None


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """:func:`safe_loads_pickle` of the file at ``path`` (a missing file raises ``FileNotFoundError``)."""
    path = Path(path)
    return safe_loads_pickle(path.read_bytes(), source=str(path))
