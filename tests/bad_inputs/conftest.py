"""The bad-input corpus reuses the loader-test helpers that write each benchmark's real on-disk format."""

import sys
from pathlib import Path

_DATA_TESTS = str(Path(__file__).resolve().parents[1] / "data")
if _DATA_TESTS not in sys.path:
    sys.path.insert(0, _DATA_TESTS)
