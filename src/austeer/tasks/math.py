"""Math word problems (SVAMP, MAWPS): greedy decoding, the predicted number compared as a float.

Answers are written as ``{equation} = {value}\\n#### {value}``. A pair is the problem with its gold answer
(positive) against **the most similar other answer of the pool** (negative). The pool is the task's pair
items; "most similar" means the pool answer whose *value* is closest to the gold value in relative
distance ``|v - gold| / max(|gold|, 1)``, among answers that are a different number (beyond the
scorer's tolerance, so 0.3333 and 0.333333 count as the same; ties: the first in pool order). The
negative is that item's whole answer text: a fluent, plausible-looking solution whose number is wrong.

The prediction is the first number after the last ``####`` of the output, else its last number
(:func:`austeer.tasks.base.extract_number`).

Example:
    >>> from austeer.tasks.math import math_pairs, prefix_to_infix
    >>> prefix_to_infix("+ * 3 4 5")
    '(3 * 4) + 5'
    >>> from austeer.tasks.base import Item
    >>> pool = [Item("a", "P1", answer=6.0, meta={"solution": "8 - 2 = 6"}),
    ...         Item("b", "P2", answer=7.0, meta={"solution": "3 + 4 = 7"}),
    ...         Item("c", "P3", answer=100.0, meta={"solution": "10 * 10 = 100"})]
    >>> math_pairs(pool)[0].negative
    '3 + 4 = 7\\n#### 7'
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from austeer.pairs import Pair
from austeer.tasks.base import MAX_PAIRS, Item, Task, fmt_number, same_number

INSTRUCTION = "Solve the problem. End your answer with #### followed by the final number."


def answer_text(item: Item) -> str:
    value = fmt_number(float(item.answer or 0.0))
    return f"{item.meta['solution']}\n#### {value}"


def math_pairs(pool: Sequence[Item], limit: int | None = None) -> list[Pair]:
    """Gold answer vs the most similar other answer of ``pool`` (see the module docstring)."""
    values = sorted({float(it.answer or 0.0) for it in pool})
    first_with: dict[float, Item] = {}
    for it in pool:
        first_with.setdefault(float(it.answer or 0.0), it)
    pairs = []
    cap = MAX_PAIRS if limit is None else min(limit, MAX_PAIRS)
    for it in pool[:cap]:
        gold = float(it.answer or 0.0)
        other = _nearest(values, first_with, gold)
        if other is None:
            continue
        pairs.append(Pair(it.prompt, answer_text(it), answer_text(other)))
    return pairs


def _nearest(values: list[float], first_with: dict[float, Item], gold: float) -> Item | None:
    """Closest value to ``gold`` in the sorted distinct ``values`` that is not the same number (tolerance of
    :func:`same_number`); same distance: the value whose first item comes first in pool order."""
    i = bisect.bisect_left(values, gold)
    lo, hi = i - 1, i
    while lo >= 0 and same_number(values[lo], gold):
        lo -= 1
    while hi < len(values) and same_number(values[hi], gold):
        hi += 1
    cands = [values[j] for j in (lo, hi) if 0 <= j < len(values)]
    if not cands:
        return None
    order = {v: n for n, v in enumerate(first_with)}
    return first_with[min(cands, key=lambda v: (abs(v - gold), order[v]))]


def prefix_to_infix(expr: str) -> str:
    """``- 8 2`` -> ``8 - 2``; nested operations are parenthesised."""
    tokens = expr.split()
    pos = 0

    def parse(top: bool) -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError(f"incomplete prefix expression {expr!r}")
        tok = tokens[pos]
        pos += 1
        if tok in "+-*/" and len(tok) == 1:
            left, right = parse(False), parse(False)
            s = f"{left} {tok} {right}"
            return s if top else f"({s})"
        try:
            return fmt_number(float(tok))
        except ValueError:
            return tok

    out = parse(True)
    if pos != len(tokens):
        raise ValueError(f"trailing tokens in prefix expression {expr!r}")
    return out


class MathTask(Task):
    """A math task: subclasses provide the pair pool and the val/test items."""

    kind = "math"
    metric = "accuracy"
    max_new_tokens = 64
    instruction = "You solve arithmetic word problems correctly. Write the equation, then #### and the final number."

    def pair_items(self) -> list[Item]:
        raise NotImplementedError

    def pairs(self, model: object = None, tokenizer: object = None, limit: int | None = None) -> list[Pair]:
        return math_pairs(self.pair_items(), limit)

    def sizes(self) -> dict[str, int]:
        return {"pairs": len(self.pair_items()), **super().sizes()}
