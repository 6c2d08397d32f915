#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with segcompass and everything it needs, installed
# from this repository's own files. torch is pinned by constraints.txt to the CPU build on this machine,
# so no step pulls CUDA wheels; torchvision is never installed (it breaks transformers' Qwen2.5-VL here).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[train,test,interpret,app]"
# The browser test (tests/test_app_browser.py) drives Debian's Chromium through its chromedriver; install both when
# missing and this runs as root with apt-get. Never fatal: without them that test is skipped with the reason.
if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
      >/dev/null 2>&1 || echo "note: could not apt-get install chromium chromium-driver; the browser test will be skipped" >&2
  else
    echo "note: chromium / chromedriver missing (as root: apt-get install chromium chromium-driver); the browser test will be skipped" >&2
  fi
fi
if .venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('torchvision') is None)"; then
  echo "error: torchvision is installed in .venv; it breaks transformers' Qwen2.5-VL on CPU. Run: .venv/bin/pip uninstall -y torchvision" >&2
  exit 1
fi
