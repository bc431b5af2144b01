"""Math word problems (SVAMP, MAWPS): greedy decoding, the predicted number compared as a float.

Answers are written as ``{equation} = {value}\\n#### {value}``. A pair is the problem with its gold answer
(positive) against **the most similar other answer of the pool** (negative). The pool is the task's pair
items; "most similar" means the pool answer whose *value* is closest to the gold value in relative
distance ``|v - gold| / max(|gold|, 1)``, among answers that are a different number (beyond the
scorer's tolerance, so 0.3333 and 0.333333 count as the same; ties: the first in pool order). The
negative is that item's whole answer text: a fluent, plausible-looking solution whose number is wrong.

Scoring (:func:`score_math`): greedy decoding (``model.generate`` with KV cache, left padding);
``accuracy`` compares the predicted number to the gold answer as a float (:func:`same_number`);
``answered`` is the share of outputs containing a number. The prediction is the first number after the
last ``####`` of the output, else its last number (:func:`extract_number`).

Example:
    >>> from austeer.tasks.math import extract_number, math_pairs, prefix_to_infix
    >>> extract_number("3 + 4 = 7\\n#### 7")
    7.0
    >>> extract_number("She has 12 apples, then 5 more: 17 apples.")
    17.0
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
import re
from collections.abc import Sequence
from typing import Any

from torch import nn

from austeer.core.pairs import Pair
from austeer.errors import UserError
from austeer.run.generate import generate
from austeer.tasks.base import MAX_PAIRS, Item, ScoreOptions, Task, fmt_number

INSTRUCTION = "Solve the problem. End your answer with #### followed by the final number."

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_number(text: str) -> float | None:
    """The predicted number of a math answer: the first number after the last ``####``, else the last number.

    Thousands separators are removed (``1,200`` -> 1200). Returns None when there is no number.
    """
    if "####" in text:
        tail = text.rsplit("####", 1)[1]
        found = _NUMBER.findall(tail)
        if found:
            return _to_float(found[0])
    found = _NUMBER.findall(text)
    return _to_float(found[-1]) if found else None


def _to_float(s: str) -> float | None:
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def same_number(pred: float | None, gold: float, tol: float = 1e-4) -> bool:
    """Float comparison with a small relative/absolute tolerance (answers like 0.333 vs 1/3 excepted)."""
    return pred is not None and abs(pred - gold) <= tol * max(1.0, abs(gold))


def score_math(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[Item],
    batch_size: int = 16,
    max_new_tokens: int = 64,
    samples: list[dict[str, Any]] | None = None,
    system: str | None = None,
) -> dict[str, float]:
    """Greedy decoding; the extracted number compared to the gold answer as a float.

    Example:
        >>> from austeer.tasks import get_task
        >>> m = score_math(model, tok, get_task("svamp").items("val", 2), max_new_tokens=4)
        >>> sorted(m)
        ['accuracy', 'answered']
    """
    prompts = [it.prompt for it in items]
    outs = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, system=system)
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
            raise UserError(f"incomplete prefix expression {expr!r}")
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
        raise UserError(f"trailing tokens in prefix expression {expr!r}")
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

    def score(self, model: nn.Module, tokenizer: Any, items: Sequence[Item], opts: ScoreOptions) -> dict[str, float]:
        """:func:`score_math` with the task's decoding budget unless ``max_new_tokens`` is given."""
        budget = opts.max_new_tokens or self.max_new_tokens
        return score_math(model, tokenizer, items, opts.batch_size, budget, opts.samples, opts.system)

    def sizes(self) -> dict[str, int]:
        return {"pairs": len(self.pair_items()), **super().sizes()}
