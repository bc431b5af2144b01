"""What a model's forward pass says about texts: the next-token logits after each text, and the
log-likelihood of continuations given their prefixes (batched, padding-aware).

The task scorers (:mod:`austeer.tasks`) and the perplexity side effect (:mod:`austeer.evaluation.evaluate`) read
models through these two functions.

Example:
    >>> from austeer.run.likelihood import continuation_nll, next_token_logits
    >>> next_token_logits(model, tok, ["Hello", "The cat sat on the"]).shape[0]
    2
    >>> nll, n = continuation_nll(model, tok, ["The cat sat on the"], [" mat."])
    >>> n, nll > 0
    (2, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from austeer.core.collect import encode, model_device, token_limit


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.inference_mode()
def next_token_logits(model: nn.Module, tok: Any, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """``[len(texts), vocab]`` float32 logits of the token after each text (left padding, batched)."""
    device = model_device(model)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[torch.Tensor] = [torch.empty(0)] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = encode(tok, [texts[i] for i in idx], token_limit(model, None), padding_side="left")
        mask = enc["attention_mask"].to(device)
        logits = model(  # type: ignore[operator]
            input_ids=enc["input_ids"].to(device),
            attention_mask=mask,
            position_ids=_positions(mask),
            logits_to_keep=1,
            use_cache=False,
        ).logits[:, -1]
        for j, i in enumerate(idx):
            out[i] = logits[j].float().cpu()
    return torch.stack(out) if out else torch.empty(0)


@torch.inference_mode()
def continuation_nll(
    model: nn.Module, tok: Any, prefixes: Sequence[str], continuations: Sequence[str], batch_size: int = 8
) -> tuple[float, int]:
    """Summed negative log-likelihood of ``continuations`` given ``prefixes`` (as text), and the token count."""
    device = model_device(model)
    rows = []
    for prefix, cont in zip(prefixes, continuations):
        p = tok(prefix, add_special_tokens=False).input_ids if prefix else []
        c = tok(cont, add_special_tokens=False).input_ids
        if not prefix:
            p, c = c[:1], c[1:]
        if c:
            rows.append((p, c))
    total, count = 0.0, 0
    rows.sort(key=lambda r: len(r[0]) + len(r[1]))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(p) + len(c) for p, c in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        target = torch.zeros((len(chunk), width), dtype=torch.bool)
        for r, (p, c) in enumerate(chunk):
            n = len(p) + len(c)
            ids[r, :n] = torch.tensor(p + c)
            mask[r, :n] = 1
            target[r, len(p) : n] = True
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits  # type: ignore[operator]
        logp = torch.log_softmax(logits[:, :-1].float(), -1).cpu()
        tgt = ids[:, 1:]
        picked = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        sel = target[:, 1:]
        total += float(-picked[sel].sum())
        count += int(sel.sum())
    return total, count
