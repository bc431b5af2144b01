#!/usr/bin/env bash
# The main job on the embedded SmolLM2-135M-Instruct: fit AUs on the shipped sentiment pairs,
# show steered vs unsteered answers (hooks and folded weights).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-runs/demo}
mkdir -p "$OUT"
PAIRS=src/austeer/data/pairs/sentiment.jsonl
.venv/bin/austeer fit --pairs "$PAIRS" --site head --k 32 --alpha 5 --out "$OUT/spec"
.venv/bin/austeer generate --steer "$OUT/spec" --compare --max-new-tokens 48 \
  "Tell me about your week." "What do you think of rainy days?" "Describe your neighbourhood."
.venv/bin/austeer generate --steer "$OUT/spec" --mode fold --max-new-tokens 48 "Tell me about your week."
