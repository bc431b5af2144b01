#!/usr/bin/env bash
# The main job on the embedded SmolLM2-135M-Instruct, offline on a CPU:
#   1. fit: score every head AU on the shipped sentiment pairs, keep the top 32 (alpha 5)
#   2. show steered vs unsteered answers (hooks), and the folded model's answer (same function, no hooks)
#   3. evaluate on held-out openings of the sentiment task: share of positive continuations + perplexity,
#      unsteered vs steered
#   4. report: a self-contained HTML report of what the selected AUs do
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
A=.venv/bin/austeer
OUT=${OUT:-runs/demo}
LIMIT=${LIMIT:-40}
mkdir -p "$OUT"
$A fit --pairs src/austeer/data/pairs/sentiment.jsonl --site head --k 32 --alpha 5 --out "$OUT/spec"
printf '%s\n' "Tell me about your week." "What do you think of rainy days?" "Describe your neighbourhood." > "$OUT/prompts.txt"
$A generate --steer "$OUT/spec" --compare --max-new-tokens 48 \
  "Tell me about your week." "What do you think of rainy days?" "Describe your neighbourhood."
echo "### folded weights (no hooks), first prompt:"
$A generate --steer "$OUT/spec" --mode fold --max-new-tokens 48 "Tell me about your week."
$A eval --task sentiment --split val --limit "$LIMIT" --out "$OUT/eval_unsteered.json"
$A eval --task sentiment --split val --limit "$LIMIT" --steer "$OUT/spec" --mode fold --out "$OUT/eval_steered.json"
$A inspect --steer "$OUT/spec" --prompts "$OUT/prompts.txt" --out "$OUT/report.html"
echo "done: spec in $OUT/spec, evaluations in $OUT/eval_*.json, report in $OUT/report.html"
