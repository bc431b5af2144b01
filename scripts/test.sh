#!/usr/bin/env bash
# Set up, then lint (ruff), type-check (mypy) and run the test suite (pytest) on the real embedded model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
