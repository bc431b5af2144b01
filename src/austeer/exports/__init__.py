"""Exports: checkpoints, GGUF (steered model, LoRA), llama.cpp control vectors, LoRA adapters and vLLM."""
