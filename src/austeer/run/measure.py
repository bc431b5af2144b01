"""What :func:`austeer.evaluation.tune.tune` measures, with forward passes only: the effect of steering on the pairs'
answer margins, and its damage on neutral text.

- :func:`margins`: per pair, the mean log-probability per token of the positive answer minus the negative
  one's (nats per token, so long answers do not outweigh short ones); :func:`effect_of` the mean change
  of these margins under steering, its standard error, z, and the pairs whose preference flipped;
- :func:`neutral_reference` and :func:`damage`: ``KL(unsteered || steered)`` of the next-token
  distributions on neutral texts, averaged over positions, and the perplexity ratio;
  :func:`read_neutral` reads a user's own neutral texts.

Example:
    >>> from austeer.core.pairs import Pair
    >>> ref = neutral_reference(model, tok, ["The cat sat on the mat and looked out of the window."])
    >>> damage(model, ref)  # the unsteered model against itself
    (0.0, 1.0)
    >>> bool(margins(model, tok, [Pair("What is the capital of France?", "Paris.", "Banana.")])[0] > 0)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from austeer.core.collect import model_device, token_limit
from austeer.core.pairs import Pair, format_prompt, has_chat_template
from austeer.errors import UserError
from austeer.io import iter_jsonl
from austeer.run.likelihood import answer_token_logprobs
from austeer.stats import discordant

#: at most this many neutral tokens are used (the unsteered distributions are kept in memory)
MAX_NEUTRAL_TOKENS = 2048


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


@torch.inference_mode()
def answer_logprobs(
    model: nn.Module, tokenizer: Any, prefixes: Sequence[str], answers: Sequence[str], batch_size: int = 16
) -> torch.Tensor:
    """Mean log-probability per token of each answer given its prefix (text), float64 ``[len(answers)]``.

    The prefix is tokenized like the fit's texts (special tokens only without a chat template), the answer
    on its own; a prefix too long for the context is cut on the left.

    Example:
        >>> lp = answer_logprobs(model, tok, ["The capital of France is"] * 2, [" Paris", " banana"])
        >>> bool(lp[0] > lp[1])
        True
    """
    special = not has_chat_template(tokenizer)
    limit = token_limit(model, None)
    rows = []
    for prefix, answer in zip(prefixes, answers):
        p, a = _ids(tokenizer, prefix, special), _ids(tokenizer, answer, False)
        if not p:
            p, a = a[:1], a[1:]
        if not a:
            raise UserError(f"answer {answer!r} has no token to score")
        if limit is not None and len(p) + len(a) > limit:
            p = p[max(0, len(p) + len(a) - limit) :]
        rows.append((p, a))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lps = answer_token_logprobs(model, rows, pad, batch_size)
    return torch.tensor([float(lp.mean()) for lp in lps], dtype=torch.float64)


def margins(model: nn.Module, tokenizer: Any, pairs: Sequence[Pair], batch_size: int = 16) -> torch.Tensor:
    """Per pair: mean log-prob per token of the positive answer minus the negative one's (float64 ``[n]``)."""
    heads = [format_prompt(tokenizer, p.prompt, p.system) for p in pairs]
    lp = answer_logprobs(
        model, tokenizer, heads + heads, [p.positive for p in pairs] + [p.negative for p in pairs], batch_size
    )
    return lp[: len(pairs)] - lp[len(pairs) :]


@dataclass
class Effect:
    """Held-out margin change of a steered model against the unsteered one (see the module docstring)."""

    effect: float
    se: float
    z: float
    share_up: float
    margin: float
    fixed: int = 0  # held-out pairs whose margin went from <= 0 (negative answer preferred) to > 0
    broken: int = 0  # and from > 0 to <= 0


def effect_of(steered: torch.Tensor, unsteered: torch.Tensor) -> Effect:
    """Mean change of per-pair margins, its standard error, z, share of pairs up, the mean steered margin,
    and the pairs whose preference flipped each way (``fixed``: to the positive answer; ``broken``: away).

    Example:
        >>> e = effect_of(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 0.0, 1.0]))
        >>> e.effect, round(e.se, 3), round(e.z, 2), e.share_up, (e.fixed, e.broken)
        (1.6666666666666667, 0.333, 5.0, 1.0, (2, 0))
    """
    d = (steered - unsteered).double()
    n = int(d.numel())
    mean = float(d.mean())
    se = float(d.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.inf
    z = mean / se if se > 0 else (math.copysign(math.inf, mean) if mean else 0.0)
    fixed, broken = discordant((unsteered > 0).tolist(), (steered > 0).tolist())  # preferring the positive answer
    return Effect(mean, se, z, float((d > 0).double().mean()), float(steered.double().mean()), fixed, broken)


@dataclass
class Neutral:
    """The unsteered next-token log-probabilities on the neutral texts, batch by batch, to measure damage."""

    batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]  # ids, mask, logp, target mask
    nll: float
    n_tokens: int


def _neutral_forward(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    device = model_device(model)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits  # type: ignore[operator]
    return torch.log_softmax(logits[:, :-1].float(), -1).cpu()


@torch.inference_mode()
def neutral_reference(model: nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int = 16) -> Neutral:
    """Run the unsteered model on ``texts`` (plain text, no special tokens, at most ``MAX_NEUTRAL_TOKENS``)."""
    rows: list[list[int]] = []
    total = 0
    for text in texts:
        seq = _ids(tokenizer, text, False)[:256]
        if len(seq) < 2 or total + len(seq) > MAX_NEUTRAL_TOKENS:
            continue
        rows.append(seq)
        total += len(seq)
    if not rows:
        raise UserError("no neutral text of at least two tokens to measure damage on")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    nll, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, seq in enumerate(chunk):
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        logp = _neutral_forward(model, ids, mask)
        target = mask[:, 1:].bool()
        nll -= float(logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)[target].double().sum())
        count += int(target.sum())
        batches.append((ids, mask, logp, target))
    return Neutral(batches, nll, count)


@torch.inference_mode()
def damage(model: nn.Module, ref: Neutral) -> tuple[float, float]:
    """``(kl, ppl_ratio)`` of the model as it is now against the unsteered ``ref`` (module docstring)."""
    kl, nll = 0.0, 0.0
    for ids, mask, logp_u, target in ref.batches:
        logp_s = _neutral_forward(model, ids, mask)
        per_pos = (logp_u.exp() * (logp_u - logp_s)).sum(-1)
        kl += float(per_pos[target].double().sum())
        nll -= float(logp_s.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)[target].double().sum())
    return kl / ref.n_tokens, math.exp(min(700.0, (nll - ref.nll) / ref.n_tokens))  # finite, for JSON


def read_neutral(path: str | Path) -> list[str]:
    """Neutral texts from a file: JSONL (a string or an object with ``"text"`` per line) or plain text lines.

    Example:
        >>> import tempfile
        >>> f = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
        >>> _ = f.write("One line.\\n\\nAnother line.\\n"); f.close()
        >>> read_neutral(f.name)
        ['One line.', 'Another line.']
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        out = []
        for lineno, obj in iter_jsonl(path, "neutral text"):
            text = obj.get("text") if isinstance(obj, dict) else obj
            if not isinstance(text, str):
                raise UserError(f'{path}:{lineno}: expected a string or an object with a string "text"')
            out.append(text)
    else:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: neutral text file does not exist")
        out = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not out:
        raise UserError(f"{path}: no neutral texts")
    return out
