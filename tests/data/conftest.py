"""Fixtures of the loader tests (defined in :mod:`loader_fixtures`, which the tests also import helpers from)."""

from loader_fixtures import (  # noqa: F401 - re-exported pytest fixtures
    grefcoco_root,
    lmms_lab_file,
    obelics_file,
    pairs_dir,
    reasonseg_root,
    refer_root,
    seg_zero_file,
    visionreasoner_file,
)
