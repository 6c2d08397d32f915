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
