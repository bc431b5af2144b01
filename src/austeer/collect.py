"""Batched, padding-aware capture of site activations at the last real token of each text.

Texts are tokenized with truncation on the *left* (the answer, whose last token is the one read,
is never cut), padded on either side, and run through the model's backbone (no LM head) under
``torch.inference_mode``. Hooks keep only the last real token of each row, in float32.

Example:
    >>> from austeer.models import load_model
    >>> from austeer.collect import last_token_activations
    >>> model, tok = load_model()
    >>> acts = last_token_activations(model, tok, ["Hello there", "Hi"], ["head"])
    >>> tuple(acts["head"].shape)   # [texts, layers, width]
    (2, 30, 576)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from austeer.pairs import has_chat_template
from austeer.sites import decoder_layers, site_def, site_module, site_width


def encode(
    tokenizer: Any, texts: Sequence[str], max_length: int | None = None, padding_side: str = "left"
) -> dict[str, torch.Tensor]:
    """Tokenize a batch: special tokens only when there is no chat template (the template has its own)."""
    old_side, old_trunc = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = padding_side, "left"
    try:
        enc = tokenizer(
            list(texts),
            return_tensors="pt",
            padding=True,
            truncation=max_length is not None,
            max_length=max_length,
            add_special_tokens=not has_chat_template(tokenizer),
        )
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = old_side, old_trunc
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, for left or right padding alike."""
    width = attention_mask.shape[1]
    return width - 1 - attention_mask.flip(1).to(torch.int64).argmax(1)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def capture(
    model: nn.Module, sites: Sequence[str], rows: dict[str, torch.Tensor]
) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Hooks that store ``x[rows, last]`` (float32, CPU) of every layer of ``sites``; always removed.

    ``rows`` is filled by the caller before each forward with ``{"last": positions}``.
    """
    n_layers = len(decoder_layers(model))
    store: dict[str, list[torch.Tensor]] = {s: [torch.empty(0)] * n_layers for s in sites}
    handles = []

    def make(site: str, layer: int, io: str) -> Any:
        def grab(x: torch.Tensor) -> None:
            last = rows["last"].to(x.device)
            picked = x[torch.arange(x.shape[0], device=x.device), last]
            store[site][layer] = picked.detach().to("cpu", torch.float32)

        if io == "input":
            return lambda _m, args: grab(args[0])
        return lambda _m, _a, out: grab(out[0] if isinstance(out, tuple) else out)

    try:
        for site in sites:
            io = site_def(model, site).io
            for layer in range(n_layers):
                mod = site_module(model, site, layer)
                hook = make(site, layer, io)
                handles.append(
                    mod.register_forward_pre_hook(hook) if io == "input" else mod.register_forward_hook(hook)
                )
        yield store
    finally:
        for h in handles:
            h.remove()


def backbone(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (saves the vocabulary projection when only reading sites)."""
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) and base is not model else model


def last_token_activations(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    sites: Sequence[str],
    max_length: int | None = None,
    padding_side: str = "left",
) -> dict[str, torch.Tensor]:
    """One batch: ``{site: [len(texts), n_layers, width]}`` float32 activations at the last token."""
    enc = encode(tokenizer, texts, max_length, padding_side)
    device = model_device(model)
    rows = {"last": last_positions(enc["attention_mask"])}
    with capture(model, sites, rows) as store, torch.inference_mode():
        backbone(model)(
            input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device), use_cache=False
        )
    out = {}
    for site in sites:
        out[site] = torch.stack(store[site], dim=1)
        expected = (len(texts), len(store[site]), site_width(model, site))
        if tuple(out[site].shape) != expected:
            raise RuntimeError(f"site {site!r}: captured shape {tuple(out[site].shape)}, expected {expected}")
    return out
