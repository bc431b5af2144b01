"""Models: loading (hub names, local checkpoints, the embedded GGUF registry), dtype choice, checks of GGUF files."""
