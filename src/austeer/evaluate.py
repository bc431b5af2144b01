"""Evaluate a (possibly steered) model on a task: the task's metrics plus the perplexity side effect.

:func:`evaluate` is steering-agnostic: wrap it in ``with austeer.apply(model, spec)`` or
``with austeer.folded(model, spec)`` to evaluate a steered model. Each task kind scores itself
(:meth:`austeer.tasks.base.Task.score`: multiple choice in :mod:`austeer.tasks.mc`, math in
:mod:`austeer.tasks.math`, behaviour in :mod:`austeer.tasks.behaviour`); :func:`evaluate` adds what is
common to all: ``ppl``, the perplexity of the model on a fixed neutral text set
(:data:`austeer.tasks.base.NEUTRAL_TEXTS`), so a configuration that gains on the task by breaking the
language model shows up, and ``n_items``.

Example:
    >>> from austeer.evaluate import perplexity
    >>> 5 < perplexity(model, tok, ["The cat sat on the mat."] * 2) < 500
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from austeer.likelihood import continuation_nll, next_token_logits
from austeer.tasks.base import NEUTRAL_TEXTS, Task

__all__ = ["continuation_nll", "evaluate", "next_token_logits", "perplexity"]


def perplexity(model: nn.Module, tok: Any, texts: Sequence[str] = NEUTRAL_TEXTS, batch_size: int = 16) -> float:
    """Perplexity of ``model`` on plain ``texts`` (default: the fixed neutral set)."""
    nll, n = continuation_nll(model, tok, [""] * len(texts), list(texts), batch_size)
    return math.exp(nll / max(1, n))


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
) -> dict[str, float]:
    """Metrics of ``model`` as it is now (steered or not) on ``split`` of ``task``, plus ``ppl`` and ``n_items``.

    The task scores itself (:meth:`austeer.tasks.base.Task.score`; ``max_new_tokens`` defaults to the
    task's budget, ``ref_model`` judges behaviour continuations); this adds what every task shares.
    ``samples``, when a list, receives one record per item (the model's output and the verdict).
    ``system``, when given, is the system turn of every item's prompt (a prompting baseline, see
    :mod:`austeer.baselines.prompt`); ``ppl`` is read on the plain neutral texts, so a prompt alone leaves it
    as it is.
    """
    items = task.items(split, limit)
    if not items:
        raise ValueError(f"task {task.name!r} has no {split} items")
    metrics = task.score(
        model,
        tok,
        items,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        ref_model=ref_model,
        samples=samples,
        system=system,
    )
    metrics["ppl"] = perplexity(model, tok)
    metrics["n_items"] = float(len(items))
    return metrics
