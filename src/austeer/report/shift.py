"""Steering you can watch: unsteered vs steered generations and the next-token distribution shift.

The shift is measured at the first generated position (the last token of the chat-formatted prompt):
``p_unsteered`` and ``p_steered`` over the whole vocabulary, and the tokens whose probability rises
or falls the most.

Example:
    >>> from austeer.report.shift import read_prompts
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "p.txt"
    >>> _ = f.write_text("How was the film?\\n\\nTell me about your day.\\n")
    >>> read_prompts(f)
    ['How was the film?', 'Tell me about your day.']
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from austeer.core.pairs import format_prompt
from austeer.core.spec import SteerSpec
from austeer.errors import UserError
from austeer.run.generate import Mode, generate, steered
from austeer.run.likelihood import next_token_logits


@dataclass(frozen=True)
class TokenShift:
    """One token's probability at the first generated position, without and with steering."""

    id: int
    text: str
    p_before: float
    p_after: float


@dataclass(frozen=True)
class PromptShift:
    """Generations and next-token shift for one prompt."""

    prompt: str
    unsteered: str
    steered: str
    rises: list[TokenShift]
    falls: list[TokenShift]
    kl: float  # KL(steered || unsteered) of the next-token distributions, in nats


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line, blank lines skipped) or JSONL with a ``"prompt"`` field."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    prompts: list[str] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if path.suffix == ".jsonl" or line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                raise UserError(f"{path}:{n}: expected an object with a string field 'prompt'")
            prompts.append(obj["prompt"])
        else:
            prompts.append(line)
    if not prompts:
        raise UserError(f"{path}: no prompts (expected one per line, or JSONL with 'prompt')")
    return prompts


def next_token_probs(model: nn.Module, tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
    """``[len(prompts), vocab]`` float32 probabilities of the first generated token (chat-formatted prompts)."""
    texts = [format_prompt(tokenizer, p) for p in prompts]
    return torch.softmax(next_token_logits(model, tokenizer, texts), dim=-1)


def top_shifts(tokenizer: Any, before: torch.Tensor, after: torch.Tensor, n: int = 8) -> tuple[list[TokenShift], ...]:
    """The ``n`` tokens whose probability rises most and the ``n`` that fall most (1-D distributions).

    Example:
        >>> import torch
        >>> up, down = top_shifts(tok, torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.1, 0.3, 0.6]), n=1)
        >>> (up[0].id, down[0].id)
        (2, 0)
    """
    delta = after - before

    def rows(ids: torch.Tensor) -> list[TokenShift]:
        return [
            TokenShift(int(i), tokenizer.decode([int(i)]), round(float(before[i]), 5), round(float(after[i]), 5))
            for i in ids
        ]

    k = min(n, delta.numel())
    return rows(torch.topk(delta, k).indices), rows(torch.topk(-delta, k).indices)


def prompt_shifts(
    model: nn.Module,
    tokenizer: Any,
    spec: SteerSpec,
    prompts: Sequence[str],
    mode: Mode = "hook",
    max_new_tokens: int = 48,
    n_tokens: int = 8,
    progress: bool = True,
) -> list[PromptShift]:
    """Greedy generations with and without ``spec`` and the next-token shift, for every prompt."""
    bar = tqdm(total=4, desc="steered vs unsteered", unit="step", disable=not progress)
    try:
        base = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
        bar.update(1)
        p0 = next_token_probs(model, tokenizer, prompts)
        bar.update(1)
        with steered(model, spec, mode):
            out = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
            bar.update(1)
            p1 = next_token_probs(model, tokenizer, prompts)
            bar.update(1)
    finally:
        bar.close()
    result = []
    for i, prompt in enumerate(prompts):
        rises, falls = top_shifts(tokenizer, p0[i], p1[i], n_tokens)
        kl = float((p1[i] * (p1[i].clamp_min(1e-12).log() - p0[i].clamp_min(1e-12).log())).sum())
        result.append(PromptShift(prompt, base[i].strip(), out[i].strip(), rises, falls, round(kl, 4)))
    return result
