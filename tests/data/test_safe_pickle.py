"""The restricted unpickler: plain data loads (Python 2 and 3 pickles), anything that would run code is refused."""

from __future__ import annotations

import builtins
import os
import pickle
import struct
from pathlib import Path

import pytest

from segcompass.data import load_refcoco
from segcompass.data.safe_pickle import UnsafePickleError, safe_load_pickle, safe_loads_pickle


def _py2(obj) -> bytes:
    """Encode like Python 2 cPickle protocol 2: ``str`` as byte strings (SHORT_BINSTRING / BINSTRING)."""
    if isinstance(obj, bytes):
        return (b"U" + bytes([len(obj)]) if len(obj) < 256 else b"T" + struct.pack("<i", len(obj))) + obj
    if isinstance(obj, str):  # a Python 2 ``unicode`` object
        data = obj.encode("utf-8")
        return b"X" + struct.pack("<I", len(data)) + data
    if isinstance(obj, bool) or obj is None:
        return {True: b"\x88", False: b"\x89", None: b"N"}[obj]
    if isinstance(obj, int):
        return b"J" + struct.pack("<i", obj)
    if isinstance(obj, list):
        return b"]" + (b"(" + b"".join(_py2(v) for v in obj) + b"e" if obj else b"")
    if isinstance(obj, dict):
        return b"}" + (b"(" + b"".join(_py2(k) + _py2(v) for k, v in obj.items()) + b"u" if obj else b"")
    raise TypeError(type(obj))


def test_plain_protocol2_pickle_round_trips(tmp_path: Path):
    refs = [{"ref_id": 1, "sentences": [{"sent": "the man", "tokens": ["the", "man"]}], "score": 0.5, "x": None}]
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps(refs, protocol=2))
    assert safe_load_pickle(path) == refs


def test_python2_byte_strings_are_decoded_to_str():
    refs = [{b"ref_id": 7, b"split": b"testA", b"sentences": [{b"raw": "caf\u00e9".encode("utf-8"), b"sent": b"cafe"}],
             b"latin": b"na\xefve", b"uni": "\u00fcber", b"flag": True}]
    data = b"\x80\x02" + _py2(refs) + b"."
    # what a plain pickle.loads does with the default encoding (ASCII) on a Python 2 UTF-8 byte string
    with pytest.raises(UnicodeDecodeError, match="'ascii' codec can't decode byte 0xc3"):
        pickle.loads(data)
    loaded = safe_loads_pickle(data)
    assert loaded == [{"ref_id": 7, "split": "testA", "sentences": [{"raw": "caf\u00e9", "sent": "cafe"}],
                       "latin": "na\u00efve", "uni": "\u00fcber", "flag": True}]


class _SystemCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",))


@pytest.mark.parametrize("payload, forbidden", [(_SystemCall, "system"), (_EvalCall, r"(__builtin__|builtins)\.eval")])
def test_code_running_pickle_is_refused_and_not_executed(tmp_path: Path, payload, forbidden):
    marker = tmp_path / "pwned"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "evil": payload(marker)}], protocol=2))
    with pytest.raises(UnsafePickleError, match=forbidden) as info:
        safe_load_pickle(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, pickle.UnpicklingError)
    assert not marker.exists()


def test_refcoco_loader_refuses_malicious_refs(refer_root: Path, tmp_path: Path):
    marker = tmp_path / "pwned-by-refs"
    (refer_root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([_SystemCall(marker)], protocol=2))
    with pytest.raises(ValueError, match=r"refs\(unc\)\.p.*system"):
        load_refcoco(refer_root, "val")
    assert not marker.exists()


def test_protocol4_and_persistent_ids_are_refused():
    with pytest.raises(UnsafePickleError, match="collections.OrderedDict"):
        safe_loads_pickle(pickle.dumps(__import__("collections").OrderedDict(a=1), protocol=4))
    with pytest.raises(UnsafePickleError, match="persistent id"):
        safe_loads_pickle(b"\x80\x02P1\n.")


def test_truncated_pickle_names_the_file(tmp_path: Path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": i} for i in range(50)], protocol=2)[:-20])
    with pytest.raises(ValueError, match=r"refs\(unc\)\.p.*download it again"):
        safe_load_pickle(path)
