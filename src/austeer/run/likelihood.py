"""What a model's forward pass says about texts: the next-token logits after each text
(:func:`next_token_logits`), and the log-probabilities of answer tokens given their prefixes
(:func:`answer_token_logprobs`: one batched, padding-aware pass), summed as a continuation's log-likelihood
(:func:`continuation_nll`) or averaged per answer (:func:`austeer.run.measure.answer_logprobs`).

The task scorers (:mod:`austeer.tasks`), the perplexity side effect (:mod:`austeer.evaluation.evaluate`), tune's
margins and the report's token shifts read models through these functions.

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
def next_token_logits(model: nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """``[len(texts), vocab]`` float32 logits of the token after each text (left padding, batched)."""
    device = model_device(model)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[torch.Tensor] = [torch.empty(0)] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = encode(tokenizer, [texts[i] for i in idx], token_limit(model, None), padding_side="left")
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
def answer_token_logprobs(
    model: nn.Module, rows: Sequence[tuple[list[int], list[int]]], pad: int, batch_size: int = 16
) -> list[torch.Tensor]:
    """Per ``(prefix ids, answer ids)`` row, the float64 log-probability of each answer token given everything
    before it: the one batched forward pass behind :func:`continuation_nll` and
    :func:`austeer.run.measure.answer_logprobs` (left padding, so every answer ends its row and only the answer
    positions' logits are kept; rows sorted by length)."""
    out: list[torch.Tensor] = [torch.empty(0, dtype=torch.float64)] * len(rows)
    device = model_device(model)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    for start in range(0, len(order), batch_size):
        idx = [i for i in order[start : start + batch_size] if rows[i][1]]
        if not idx:
            continue
        width = max(len(rows[i][0]) + len(rows[i][1]) for i in idx)
        keep = max(len(rows[i][1]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            seq = rows[i][0] + rows[i][1]
            ids[r, width - len(seq) :] = torch.tensor(seq)
            mask[r, width - len(seq) :] = 1
        logits = model(  # type: ignore[operator]
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=_positions(mask).to(device),
            logits_to_keep=keep + 1,
            use_cache=False,
        ).logits[:, -keep - 1 : -1]
        logp = torch.log_softmax(logits.float(), -1).cpu()
        picked = logp.gather(-1, ids[:, -keep:].unsqueeze(-1)).squeeze(-1).double()
        for r, i in enumerate(idx):
            out[i] = picked[r, keep - len(rows[i][1]) :]
    return out


def continuation_nll(
    model: nn.Module, tokenizer: Any, prefixes: Sequence[str], continuations: Sequence[str], batch_size: int = 8
) -> tuple[float, int]:
    """Summed negative log-likelihood of ``continuations`` given ``prefixes`` (as text), and the token count
    (an empty prefix: the continuation's first token is its context)."""
    rows = []
    for prefix, cont in zip(prefixes, continuations):
        p = tokenizer(prefix, add_special_tokens=False).input_ids if prefix else []
        c = tokenizer(cont, add_special_tokens=False).input_ids
        if not prefix:
            p, c = c[:1], c[1:]
        if c:
            rows.append((list(p), list(c)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lps = answer_token_logprobs(model, rows, pad, batch_size)
    return float(-sum(float(lp.sum()) for lp in lps)), sum(int(lp.numel()) for lp in lps)
