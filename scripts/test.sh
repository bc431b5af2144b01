#!/usr/bin/env bash
# Set up, then lint (ruff), type-check (mypy) and run the test suite (pytest) on the real embedded model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export AUSTEER_LLAMACPP=1  # setup.sh installed llama.cpp: its tests fail rather than skip without it
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
