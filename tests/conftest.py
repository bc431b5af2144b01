"""Helpers shared by the test modules (the session fixture ``smol`` is in the root ``conftest.py``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as tf

from austeer.core.pairs import Pair, read_pairs
from austeer.core.spec import SteerSpec

DATA = Path(__file__).resolve().parents[1] / "src" / "austeer" / "data"

#: tiny random configurations of every supported family (no download)
SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=128)
GQA = dict(SMALL, num_key_value_heads=2)

CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**GQA),
    "mistral": lambda: tf.MistralConfig(**GQA),
    "qwen2": lambda: tf.Qwen2Config(**GQA),
    "qwen3": lambda: tf.Qwen3Config(**GQA, head_dim=16),
    "gemma2": lambda: tf.Gemma2Config(**GQA, head_dim=16),
    "gemma3_text": lambda: tf.Gemma3TextConfig(**GQA, head_dim=24),  # head_dim * heads != hidden
    "phi3": lambda: tf.Phi3Config(**GQA, pad_token_id=0),
    "olmo": lambda: tf.OlmoConfig(**GQA, pad_token_id=0),
    "olmo2": lambda: tf.Olmo2Config(**GQA, pad_token_id=0),
    "gpt2": lambda: tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_inner=96),
    "gpt_neox": lambda: tf.GPTNeoXConfig(**SMALL),
}


class ByteTok:
    """Just enough tokenizer for the tiny random models (no download): byte-level ids, no chat template.

    austeer pads and truncates the ids itself, so only ``__call__`` (ids) and ``pad_token_id`` are needed.
    """

    chat_template = None
    pad_token_id = 0

    def __call__(self, texts: list[str], add_special_tokens: bool = True, **_: object) -> dict[str, list[list[int]]]:
        return {"input_ids": [[1 + b % 127 for b in t.encode()] for t in texts]}


def tiny_model(name: str) -> torch.nn.Module:
    """A tiny random model of family ``name`` (seeded: the same weights every call)."""
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(CONFIGS[name]()).eval()


@pytest.fixture(scope="session")
def sentiment_pairs() -> list[Pair]:
    return read_pairs(DATA / "pairs" / "sentiment.jsonl")


#: the sites whose sign counts :func:`sentiment_fit` reads once per session
FIT_SITES = ("head", "ffn", "neuron")


@pytest.fixture(scope="session")
def sentiment_fit(smol: tuple[Any, Any], sentiment_pairs: list[Pair]) -> Callable[..., SteerSpec]:
    """``sentiment_fit(site, k, alpha, positions)``: the spec ``austeer.fit`` makes from the first 8 shipped
    sentiment pairs (``tests/test_core.py`` checks the equality), the sign counts read once per test session
    instead of once per module."""
    from austeer.core.fit import score, spec_from_counts

    model, tok = smol
    counts = score(model, tok, sentiment_pairs[:8], list(FIT_SITES), progress=False)

    def make(site: str | Sequence[str] = "head", k: int = 32, alpha: float = 5.0, positions: str = "all") -> SteerSpec:
        sites = [site] if isinstance(site, str) else list(site)
        return spec_from_counts(model, {s: counts[s] for s in sites}, k, alpha, 8, positions=positions)

    return make


# -- llama.cpp (tests/test_gguf.py, tests/test_gguf_write.py, tests/test_gguf_lora.py; the binding: tests/llamacpp.py)

GGUF_PROMPTS = ["The movie was", "<|im_start|>user\nHow was your weekend?<|im_end|>\n<|im_start|>assistant\n"]


def hf_next(model: Any, ids: list[int], text: list[int]) -> list[int]:
    """The HF model's greedy pick after ``ids`` and each prefix of ``text``, in one teacher-forced forward: equal
    to ``text`` exactly when ``text`` is the model's greedy continuation of ``ids`` (ties aside), at the cost of
    one forward instead of ``generate``'s one per token."""
    with torch.no_grad():
        logits = model(torch.tensor([ids + text])).logits[0, len(ids) - 1 : -1]
    return [int(t) for t in logits.argmax(-1)]


def direct_last_token(
    model: torch.nn.Module, tok: Any, pairs: Sequence[Pair], module_of: Callable[[int], torch.nn.Module], read: str
) -> torch.Tensor:
    """The tests' one reference collector: every layer's ``module_of(layer)`` ``read`` (``"input"`` or
    ``"output"``) at the last token of each text of each pair, one text at a time with plain hooks (no batching,
    no padding, nothing of austeer's collector): float32 ``[N, 2 (positive, negative), L, W]``."""
    from austeer.core.pairs import pair_texts
    from austeer.core.sites import decoder_layers

    layers = len(decoder_layers(model))
    out = []
    for pair in pairs:
        both = []
        for text in pair_texts(tok, pair):
            got: list[Any] = [None] * layers

            def keep(i: int, value: Any, got: list[Any] = got) -> None:
                got[i] = (value[0] if isinstance(value, tuple) else value)[0, -1].float().clone()

            handles = [
                module_of(i).register_forward_pre_hook(lambda m, a, i=i, keep=keep: keep(i, a))
                if read == "input"
                else module_of(i).register_forward_hook(lambda m, a, o, i=i, keep=keep: keep(i, o))
                for i in range(layers)
            ]
            try:
                with torch.no_grad():
                    model(tok(text, return_tensors="pt", add_special_tokens=False).input_ids)
            finally:
                for h in handles:
                    h.remove()
            both.append(torch.stack(got))
        out.append(torch.stack(both))
    return torch.stack(out)


def hook_count(model: torch.nn.Module) -> int:
    """Forward hooks and pre-hooks on every module of ``model`` (0 once every steer has been removed)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
