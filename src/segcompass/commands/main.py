"""The ``segcompass`` dispatcher: ``segcompass <command> [options]``, ``segcompass --help``, ``--version``.

Each command lives in its own module of :mod:`segcompass.commands` (argument dataclasses + a thin function that
calls library code and prints results); the dispatcher imports only the one it runs, and ``--help`` /
``--version`` import no command module at all.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from ._args import fail
from .registry import COMMANDS

__all__ = ["COMMANDS", "main"]

def version() -> str:
    """The installed distribution's version (``segcompass.__version__`` when it is not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version("segcompass")
    except PackageNotFoundError:
        from .. import __version__

        return __version__


def entry_point(name: str):
    """The entry function ``(argv) -> int`` of command ``name``."""
    module, function, _ = COMMANDS[name]
    return getattr(importlib.import_module(f"{__package__}.{module}"), function)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``segcompass ARGV...`` and return its exit status (0). A failure is one ``error: ...`` line on stderr
    and ``SystemExit`` with status 2 (:class:`~segcompass.commands._args.CommandExit`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv[: argv.index("--") if "--" in argv else len(argv)]:  # one global option, anywhere
        from . import _args

        argv.remove("--debug")
        previous, _args.DEBUG = _args.DEBUG, True
        try:
            return main(argv)
        finally:
            _args.DEBUG = previous
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: segcompass <command> [options]   (segcompass <command> --help for its options)\n")
        width = max(map(len, COMMANDS)) + 2
        for name, (_, _, summary) in COMMANDS.items():
            print(f"  {name:<{width}} {summary}")
        print(f"\n  {'--version':<{width}} Print the installed version.")
        print(f"  {'--debug':<{width}} Show the full traceback of an error (default: one 'error:' line).")
        return 0
    if argv[0] == "--version":
        print(f"segcompass {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        raise fail(f"unknown command {name!r}; choose one of {sorted(COMMANDS)}.")
    return entry_point(name)(rest)
