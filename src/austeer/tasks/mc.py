"""Multiple-choice tasks (BoolQ, COPA, WinoGrande): items with single-token answers, pairs correct vs wrong.

A pair is ``(prompt, correct answer, wrong answer)``; with two options the wrong answer is the other one.
Scoring (see :mod:`austeer.evaluate`): the paper's greedy one-token exact match, and a restricted-choice
accuracy (argmax of the next-token logits over the options' first tokens).

Example:
    >>> from austeer.tasks.base import Item
    >>> from austeer.tasks.mc import mc_pairs
    >>> mc_pairs([Item("1", "Is ice cold?", ("Yes", "No"), 0)])[0].negative
    'No'
"""

from __future__ import annotations

from collections.abc import Sequence

from austeer.pairs import Pair
from austeer.tasks.base import MAX_PAIRS, Item, Task

AB = ("A", "B")


def mc_pairs(items: Sequence[Item], limit: int | None = None) -> list[Pair]:
    """One pair per item: the correct choice against the next wrong one (cyclically)."""
    pairs = []
    for it in items:
        wrong = it.choices[(it.label + 1) % len(it.choices)]
        pairs.append(Pair(it.prompt, it.gold, wrong))
    cap = MAX_PAIRS if limit is None else min(limit, MAX_PAIRS)
    return pairs[:cap]


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

    def sizes(self) -> dict[str, int]:
        return {"pairs": len(self.pair_items()), **super().sizes()}
