"""Compatibility shim: the command line lives in :mod:`segcompass.commands` (``segcompass = segcompass.cli:main``)."""

from .commands import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
