#!/usr/bin/env bash
# Set up, then lint (ruff), type-check (mypy) and run the test suite (pytest) on the real embedded model and,
# for the engine tests, the real vLLM (its CPU build, in its own cached environment: scripts/setup_vllm.sh) and
# llama.cpp (a prebuilt CPU build, installed by setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
AUSTEER_VLLM_PYTHON=$(bash scripts/setup_vllm.sh)
export AUSTEER_VLLM_PYTHON
export AUSTEER_LLAMACPP=1  # setup.sh installed llama.cpp: its tests fail rather than skip without it
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -m "" "$@"  # every test, the slow ones too (plain pytest leaves them out)
