"""Rows of the bad-input corpus: ``Case(name, build, expect)``.

``build`` makes the input (given ``tmp_path`` where a case writes files) and returns a zero-argument callable that
feeds it to the library. ``expect`` is either :class:`Raises` (a typed error whose message names the value or the fix,
raised by SegCompass's own validation, never from deep inside numpy / pycocotools / pyarrow / datasets) or
:class:`Returns` (the call succeeds and ``check(result)`` asserts on the values).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PACKAGE_DIR = str(Path(__file__).resolve().parents[2] / "src" / "segcompass")


@dataclass(frozen=True)
class Raises:
    type: type[BaseException]
    match: str
    ours: bool = True  # raised by SegCompass's own validation (False: a library wraps our error, e.g. transformers)


@dataclass(frozen=True)
class Returns:
    check: Callable[[Any], None]


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[..., Callable[[], Any]]  # (tmp_path[, context]) -> the call
    expect: Raises | Returns

    def __str__(self) -> str:  # the pytest id
        return self.name


def ids(cases: list[Case]) -> list[str]:
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return names


def run_case(case: Case, tmp_path: Path) -> None:
    """Build the input, call the library, and check the expected outcome."""
    call = case.build(tmp_path)
    if isinstance(case.expect, Raises):
        with pytest.raises(case.expect.type, match=case.expect.match) as info:
            call()
        raised_at = traceback.extract_tb(info.value.__traceback__)[-1].filename
        assert raised_at.startswith(PACKAGE_DIR), (
            f"{type(info.value).__name__} was raised at {raised_at}, not by SegCompass's own validation: {info.value}"
        )
    else:
        case.expect.check(call())
