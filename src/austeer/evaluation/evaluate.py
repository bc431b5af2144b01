"""Evaluate a (possibly steered) model on a task: the task's metrics plus the perplexity side effect.

:func:`evaluate` is steering-agnostic: wrap it in ``with austeer.apply(model, spec)`` or
``with austeer.folded(model, spec)`` to evaluate a steered model. Each task kind scores itself
(:meth:`austeer.tasks.base.Task.score`: multiple choice in :mod:`austeer.tasks.mc`, math in
:mod:`austeer.tasks.math`, behaviour in :mod:`austeer.tasks.behaviour`); :func:`evaluate` adds what is
common to all: ``ppl``, the perplexity of the model on a fixed neutral text set
(:data:`austeer.tasks.base.NEUTRAL_TEXTS`), so a configuration that gains on the task by breaking the
language model shows up, and ``n_items``.

Example:
    >>> from austeer.evaluation.evaluate import perplexity
    >>> 5 < perplexity(model, tok, ["The cat sat on the mat."] * 2) < 500
    True
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from austeer.core.reuse import LayerCache
from austeer.errors import UserError
from austeer.run.likelihood import continuation_nll, next_token_logits
from austeer.tasks.base import NEUTRAL_TEXTS, ScoreOptions, Task

__all__ = ["continuation_nll", "evaluate", "next_token_logits", "perplexity"]


def perplexity(model: nn.Module, tokenizer: Any, texts: Sequence[str] = NEUTRAL_TEXTS, batch_size: int = 16) -> float:
    """Perplexity of ``model`` on plain ``texts`` (default: the fixed neutral set)."""
    nll, n = continuation_nll(model, tokenizer, [""] * len(texts), list(texts), batch_size)
    return math.exp(nll / max(1, n))


def evaluate(
    model: nn.Module,
    tokenizer: Any,
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

    The task scores itself (:meth:`austeer.tasks.base.Task.score`; ``max_new_tokens`` defaults to the
    task's budget, ``ref_model`` judges behaviour continuations); this adds what every task shares.
    ``samples``, when a list, receives one record per item (the model's output and the verdict).
    ``system``, when given, is the system turn of every item's prompt (a prompting baseline, see
    :mod:`austeer.methods.prompt`); ``ppl`` is read on the plain neutral texts, so a prompt alone leaves it
    as it is.
    ``ppl``: the neutral-text perplexity when it is already known for the model as it is now (see
    :class:`Unsteered`); otherwise it is computed.
    """
    items = task.items(split, limit)
    if not items:
        raise UserError(f"task {task.name!r} has no {split} items")
    metrics = task.score(model, tokenizer, items, ScoreOptions(batch_size, max_new_tokens, ref_model, samples, system))
    metrics["ppl"] = perplexity(model, tokenizer) if ppl is None else ppl
    metrics["n_items"] = float(len(items))
    return metrics


class Unsteered:
    """The unsteered model's evaluations of one run, each computed once (and its neutral-text perplexity
    once for all of them): ``get`` returns the memo for the same task, split, limit and options.

    Call it only while ``model`` is unsteered; steered evaluations must not go through it. ``cache`` (made
    now, while the model is unsteered, unless given) receives the hidden states of these evaluations, so
    steered evaluations of the same items can replay the layers below their first steered layer
    (:mod:`austeer.core.reuse`).

    Example:
        >>> from austeer.tasks import get_task
        >>> base = Unsteered(model, tok)
        >>> a = base.get(get_task("copa"), "val", limit=4)
        >>> base.get(get_task("copa"), "val", limit=4) == a, base.evaluations
        (True, 1)
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, cache: LayerCache | None = None, progress: bool = False
    ) -> None:
        self.model, self.tok, self.progress = model, tokenizer, progress
        self.cache = cache or LayerCache(model)
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
            if self.progress:  # a long silent step otherwise (minutes on a large model)
                extra = "" if self.ppl is not None else " and the neutral-text perplexity"
                n = "every" if limit is None else f"{limit}"
                tqdm.write(f"{task.name}: the unsteered model on {split} ({n} items){extra} ...", file=sys.stderr)
            records: list[dict[str, Any]] = []
            with self.cache.reuse():
                metrics = evaluate(self.model, self.tok, task, split, limit, samples=records, ppl=self.ppl, **kw)
            self.ppl = metrics["ppl"]
            self.evaluations += 1
            self._memo[key] = (metrics, records)
        metrics, records = self._memo[key]
        if samples is not None:
            samples.extend(records)
        return dict(metrics)
