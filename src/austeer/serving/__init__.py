"""Serving: per-row batched steering, the HTTP server and its OpenAI-compatible API."""
