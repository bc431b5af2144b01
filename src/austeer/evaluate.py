"""Evaluate a (possibly steered) model on a task: the task's metrics plus the perplexity side effect.

:func:`evaluate` is steering-agnostic: wrap it in ``with austeer.apply(model, spec)`` or
``with austeer.folded(model, spec)`` to evaluate a steered model. Every result holds ``ppl``, the
perplexity of the model on a fixed neutral text set (:data:`austeer.tasks.base.NEUTRAL_TEXTS`), so a
configuration that gains on the task by breaking the language model shows up.

Per kind:

- ``mc``: one batched forward pass (left padding, position ids from the attention mask) of the
  chat-formatted prompt; at the next-token position ``accuracy`` is the paper's greedy one-token exact
  match (the greedy token, stripped and lower-cased, equals the gold answer's first token),
  ``choice_accuracy`` the argmax over the choices' first tokens only, and ``answer_rate`` the share of
  greedy tokens that are one of the choices;
- ``math``: greedy decoding (``model.generate`` with KV cache, left padding); ``accuracy`` compares the
  number after the last ``####`` (else the last number) to the gold answer as a float; ``answered`` is the
  share of outputs containing a number;
- ``behaviour``: greedy continuations judged by the task (``nontoxic_rate`` / ``positive_rate`` and the
  judge's mean score) and ``cont_ppl``, the perplexity of the continuations given their prompts under
  ``ref_model`` (pass the unsteered model) or, without one, under the evaluated model itself.

Example:
    >>> from austeer.evaluate import perplexity
    >>> from austeer.models import load_model
    >>> model, tok = load_model()
    >>> 5 < perplexity(model, tok, ["The cat sat on the mat."] * 2) < 500
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from austeer.collect import encode, model_device, token_limit
from austeer.generate import generate
from austeer.pairs import format_prompt
from austeer.tasks.base import NEUTRAL_TEXTS, Item, Task, extract_number, same_number


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


def perplexity(model: nn.Module, tok: Any, texts: Sequence[str] = NEUTRAL_TEXTS, batch_size: int = 16) -> float:
    """Perplexity of ``model`` on plain ``texts`` (default: the fixed neutral set)."""
    nll, n = continuation_nll(model, tok, [""] * len(texts), list(texts), batch_size)
    return math.exp(nll / max(1, n))


def _first_token(tok: Any, text: str) -> int:
    ids = tok(text, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"choice {text!r} has no tokens")
    return int(ids[0])


def score_mc(
    model: nn.Module,
    tok: Any,
    items: Sequence[Item],
    batch_size: int = 16,
    samples: list[dict[str, Any]] | None = None,
    system: str | None = None,
) -> dict[str, float]:
    """Greedy one-token exact match, restricted-choice accuracy and answer rate (see the module docstring)."""
    logits = next_token_logits(model, tok, [format_prompt(tok, it.prompt, system) for it in items], batch_size)
    exact = restricted = answered = 0
    for it, row in zip(items, logits):
        option_ids = [_first_token(tok, c) for c in it.choices]
        if len(set(option_ids)) != len(option_ids):
            raise ValueError(f"item {it.id}: choices {it.choices} do not start with distinct tokens")
        greedy = int(row.argmax())
        said = tok.decode([greedy]).strip().lower()
        gold = tok.decode([option_ids[it.label]]).strip().lower()
        pick = int(torch.stack([row[i] for i in option_ids]).argmax())
        exact += said == gold
        restricted += pick == it.label
        answered += greedy in option_ids
        if samples is not None:
            samples.append(
                {
                    "id": it.id,
                    "greedy": tok.decode([greedy]),
                    "choice": it.choices[pick],
                    "gold": it.gold,
                    "correct": said == gold,
                }
            )
    n = max(1, len(items))
    return {"accuracy": exact / n, "choice_accuracy": restricted / n, "answer_rate": answered / n}


def score_math(
    model: nn.Module,
    tok: Any,
    items: Sequence[Item],
    batch_size: int = 16,
    max_new_tokens: int = 64,
    samples: list[dict[str, Any]] | None = None,
    system: str | None = None,
) -> dict[str, float]:
    """Greedy decoding; the extracted number compared to the gold answer as a float."""
    prompts = [it.prompt for it in items]
    outs = generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, system=system)
    correct = answered = 0
    for it, text in zip(items, outs):
        pred = extract_number(text)
        ok = same_number(pred, float(it.answer or 0.0))
        correct += ok
        answered += pred is not None
        if samples is not None:
            samples.append({"id": it.id, "output": text, "pred": pred, "gold": it.answer, "correct": ok})
    n = max(1, len(items))
    return {"accuracy": correct / n, "answered": answered / n}


def score_behaviour(
    model: nn.Module,
    tok: Any,
    task: Any,
    items: Sequence[Item],
    batch_size: int = 16,
    max_new_tokens: int = 32,
    ref_model: nn.Module | None = None,
    samples: list[dict[str, Any]] | None = None,
    system: str | None = None,
) -> dict[str, float]:
    """Greedy continuations, judged by the task, with their perplexity under ``ref_model`` (or ``model``).

    ``cont_ppl`` conditions on the prompt without ``system``, so it compares the continuations of a prompted
    and an unprompted model on the same prefixes.
    """
    prompts = [it.prompt for it in items]
    gen = generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, system=system)
    outs = [o.strip() for o in gen]
    metrics = task.metrics(outs)
    judge = ref_model if ref_model is not None else model
    nll, n = continuation_nll(judge, tok, [format_prompt(tok, p) for p in prompts], outs, max(1, batch_size // 2))
    metrics["cont_ppl"] = math.exp(nll / n) if n else float("nan")
    metrics["empty_rate"] = sum(not o for o in outs) / max(1, len(outs))
    if samples is not None:
        scores = task.judge(outs)
        samples.extend({"id": it.id, "output": o, "score": s} for it, o, s in zip(items, outs, scores))
    return metrics


def evaluate(
    model: nn.Module,
    tok: Any,
    task: Task,
    split: str = "val",
    limit: int | None = None,
    batch_size: int = 16,
    ref_model: nn.Module | None = None,
    max_new_tokens: int | None = None,
    samples: list[dict[str, Any]] | None = None,
    system: str | None = None,
    ppl: float | None = None,
) -> dict[str, float]:
    """Metrics of ``model`` as it is now (steered or not) on ``split`` of ``task``, plus ``ppl`` and ``n_items``.

    ``samples``, when a list, receives one record per item (the model's output and the verdict).
    ``system``, when given, is the system turn of every item's prompt (a prompting baseline, see
    :mod:`austeer.baselines.prompt`); ``ppl`` is read on the plain neutral texts, so a prompt alone leaves it
    as it is.
    ``ppl``: the neutral-text perplexity when it is already known for the model as it is now (see
    :class:`Unsteered`); otherwise it is computed.
    """
    items = task.items(split, limit)
    if not items:
        raise ValueError(f"task {task.name!r} has no {split} items")
    budget = max_new_tokens or task.max_new_tokens
    if task.kind == "mc":
        metrics = score_mc(model, tok, items, batch_size, samples, system)
    elif task.kind == "math":
        metrics = score_math(model, tok, items, batch_size, budget, samples, system)
    elif task.kind == "behaviour":
        metrics = score_behaviour(model, tok, task, items, batch_size, budget, ref_model, samples, system)
    else:
        raise ValueError(f"task {task.name!r} has unknown kind {task.kind!r}")
    metrics["ppl"] = perplexity(model, tok) if ppl is None else ppl
    metrics["n_items"] = float(len(items))
    return metrics


class Unsteered:
    """The unsteered model's evaluations of one run, each computed once (and its neutral-text perplexity
    once for all of them): ``get`` returns the memo for the same task, split, limit and options.

    Call it only while ``model`` is unsteered; steered evaluations must not go through it.

    Example:
        >>> from austeer.models import load_model
        >>> from austeer.tasks import get_task
        >>> model, tok = load_model()
        >>> base = Unsteered(model, tok)
        >>> a = base.get(get_task("copa"), "val", limit=4)
        >>> base.get(get_task("copa"), "val", limit=4) == a, base.evaluations
        (True, 1)
    """

    def __init__(self, model: nn.Module, tok: Any) -> None:
        self.model, self.tok = model, tok
        self.ppl: float | None = None
        self.evaluations = 0
        self._memo: dict[tuple[Any, ...], tuple[dict[str, float], list[dict[str, Any]]]] = {}

    def get(
        self,
        task: Task,
        split: str = "val",
        limit: int | None = None,
        samples: list[dict[str, Any]] | None = None,
        **kw: Any,
    ) -> dict[str, float]:
        """:func:`evaluate` of the unsteered model (``kw``: its other options); ``samples`` receives the records."""
        key = (
            task.name,
            split,
            limit,
            tuple(sorted((k, id(v) if isinstance(v, nn.Module) else v) for k, v in kw.items())),
        )
        if key not in self._memo:
            records: list[dict[str, Any]] = []
            metrics = evaluate(self.model, self.tok, task, split, limit, samples=records, ppl=self.ppl, **kw)
            self.ppl = metrics["ppl"]
            self.evaluations += 1
            self._memo[key] = (metrics, records)
        metrics, records = self._memo[key]
        if samples is not None:
            samples.extend(records)
        return dict(metrics)
