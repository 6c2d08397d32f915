"""Test-wide settings: no network, caches in a temporary directory, deterministic seeds.

The environment variables are set at import time, before any test module imports transformers / datasets /
evaluate, so their caches never touch the user's home and nothing reaches the Hub.
"""

import os
import tempfile

_HF_HOME = tempfile.mkdtemp(prefix="segcompass-hf-home-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


# Tiny models: one intra-op thread is as fast on an idle machine and 20-40x faster when the cores are busy.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# ------------------------------------------------------------------------------------------------ tiny checkpoints
def _fingerprint(directory):
    import hashlib
    from pathlib import Path

    return {path.relative_to(directory).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(Path(directory).rglob("*")) if path.is_file()}


@pytest.fixture(scope="session")
def tiny_checkpoint_factory(tmp_path_factory):
    """``build(backbone_type="qwen2_5_vl", **kwargs)``: the directory of a tiny random SegCompass checkpoint (model,
    processor, tokenizer) written by :func:`segcompass.testing.make_tiny_checkpoint` with these arguments, once per
    session and per distinct set of arguments (e.g. ``backbone_type="llava"``, ``num_slots=4``).

    Every test that asks for the same arguments shares the directory: read it (``from_pretrained``, a pipeline, a
    trainer given its path), never write into it, and save anything new under ``tmp_path``. At the end of the session
    the files must be byte-identical to what was written, else the session ends with an error naming the directory.
    """
    from segcompass.testing import make_tiny_checkpoint

    built = {}

    def build(backbone_type="qwen2_5_vl", **kwargs):
        key = (backbone_type, tuple(sorted(kwargs.items())))
        if key not in built:
            directory = tmp_path_factory.mktemp(f"tiny-segcompass-{backbone_type}")
            make_tiny_checkpoint(directory, backbone_type=backbone_type, **kwargs)
            built[key] = directory, _fingerprint(directory)
        return built[key][0]

    yield build
    changed = [str(directory) for directory, fingerprint in built.values() if _fingerprint(directory) != fingerprint]
    assert not changed, f"a test wrote into the shared tiny checkpoint(s) {changed}"


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_checkpoint_factory):
    """The session's tiny random Qwen2.5-VL SegCompass checkpoint (3 slots, seed 0): a directory to read, never to
    write into (checked at the end of the session, see :func:`tiny_checkpoint_factory`)."""
    return tiny_checkpoint_factory()


@pytest.fixture
def tiny_model(tiny_checkpoint):
    """A fresh copy (eval mode) of the model in :func:`tiny_checkpoint`, this test's own to change."""
    from segcompass import SegCompassForReasoningSegmentation

    return SegCompassForReasoningSegmentation.from_pretrained(tiny_checkpoint).eval()


@pytest.fixture
def tiny_processor(tiny_checkpoint):
    """A fresh copy of the processor in :func:`tiny_checkpoint`, this test's own to change."""
    from segcompass import SegCompassProcessor

    return SegCompassProcessor.from_pretrained(tiny_checkpoint)
