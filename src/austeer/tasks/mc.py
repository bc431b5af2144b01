"""Multiple-choice tasks (BoolQ, COPA, WinoGrande): items with single-token answers, pairs correct vs wrong.

A pair is ``(prompt, correct answer, wrong answer)``; with two options the wrong answer is the other one.

Scoring (:func:`score_mc`): one batched forward pass (left padding, position ids from the attention
mask) of the chat-formatted prompt; at the next-token position ``accuracy`` is the paper's greedy
one-token exact match (the greedy token, stripped and lower-cased, equals the gold answer's first
token), ``choice_accuracy`` the argmax over the choices' first tokens only, and ``answer_rate`` the share
of greedy tokens that are one of the choices.

Example:
    >>> from austeer.tasks.base import Item
    >>> from austeer.tasks.mc import mc_pairs
    >>> mc_pairs([Item("1", "Is ice cold?", ("Yes", "No"), 0)])[0].negative
    'No'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from austeer.core.pairs import Pair, format_prompt
from austeer.errors import UserError
from austeer.run.likelihood import next_token_logits
from austeer.tasks.base import MAX_PAIRS, Item, ScoreOptions, Task

AB = ("A", "B")


def mc_pairs(items: Sequence[Item], limit: int | None = None) -> list[Pair]:
    """One pair per item: the correct choice against the next wrong one (cyclically)."""
    pairs = []
    for it in items:
        wrong = it.choices[(it.label + 1) % len(it.choices)]
        pairs.append(Pair(it.prompt, it.gold, wrong))
    cap = MAX_PAIRS if limit is None else min(limit, MAX_PAIRS)
    return pairs[:cap]


def _first_token(tokenizer: Any, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise UserError(f"choice {text!r} has no tokens")
    return int(ids[0])


def score_mc(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[Item],
    batch_size: int = 16,
    samples: list[dict[str, Any]] | None = None,
    system: str | None = None,
) -> dict[str, float]:
    """Greedy one-token exact match, restricted-choice accuracy and answer rate (see the module docstring).

    Example:
        >>> from austeer.tasks import get_task
        >>> m = score_mc(model, tok, get_task("copa").items("val", 4))
        >>> sorted(m), all(0 <= v <= 1 for v in m.values())
        (['accuracy', 'answer_rate', 'choice_accuracy'], True)
    """
    logits = next_token_logits(
        model, tokenizer, [format_prompt(tokenizer, it.prompt, system) for it in items], batch_size
    )
    exact = restricted = answered = 0
    for it, row in zip(items, logits):
        option_ids = [_first_token(tokenizer, c) for c in it.choices]
        if len(set(option_ids)) != len(option_ids):
            raise UserError(f"item {it.id}: choices {it.choices} do not start with distinct tokens")
        greedy = int(row.argmax())
        said = tokenizer.decode([greedy]).strip().lower()
        gold = tokenizer.decode([option_ids[it.label]]).strip().lower()
        pick = int(torch.stack([row[i] for i in option_ids]).argmax())
        exact += said == gold
        restricted += pick == it.label
        answered += greedy in option_ids
        if samples is not None:
            samples.append(
                {
                    "id": it.id,
                    "greedy": tokenizer.decode([greedy]),
                    "choice": it.choices[pick],
                    "gold": it.gold,
                    "correct": said == gold,
                }
            )
    n = max(1, len(items))
    return {"accuracy": exact / n, "choice_accuracy": restricted / n, "answer_rate": answered / n}


class MCTask(Task):
    """A multiple-choice task: subclasses provide the pair items and the val/test items."""

    kind = "mc"
    metric = "accuracy"
    max_new_tokens = 1

    def pair_items(self) -> list[Item]:
        raise NotImplementedError

    def pairs(self, model: object = None, tokenizer: object = None, limit: int | None = None) -> list[Pair]:
        """Pairs from the task's pair split (never from val/test); ``model`` is not needed."""
        return mc_pairs(self.pair_items(), limit)

    def score(self, model: nn.Module, tokenizer: Any, items: Sequence[Item], opts: ScoreOptions) -> dict[str, float]:
        """:func:`score_mc` (one forward pass: no decoding budget, no reference model)."""
        return score_mc(model, tokenizer, items, opts.batch_size, opts.samples, opts.system)

    def sizes(self) -> dict[str, int]:
        return {"pairs": len(self.pair_items()), **super().sizes()}
