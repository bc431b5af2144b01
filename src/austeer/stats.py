"""Significance of a method's test metric against the unsteered model's: unpaired and paired.

Both are evaluated on the same test items, so the paired test is the sharper one: McNemar's exact test
looks only at the *discordant* items, those the method fixed (wrong unsteered, right steered) and
those it broke (right unsteered, wrong steered). Under "no effect" a discordant item is equally likely
to be either, so the number fixed is Binomial(fixed + broken, 1/2); the p-value is two-sided.
The unpaired two-proportion z (:func:`margin`) ignores that pairing and is kept for results that have
no per-item outcomes.

Example:
    >>> discordant([0, 0, 1, 1, 0], [1, 0, 1, 0, 1])  # items 0 and 4 fixed, item 3 broken
    (2, 1)
    >>> round(mcnemar(20, 6), 4)  # 20 fixed against 6 broken
    0.0094
    >>> mcnemar(3, 3), mcnemar(0, 0)
    (1.0, 1.0)
    >>> margin(0.60, 0.50, 100)  # 60% against 50% on 100 items: z 1.4, within noise
    1.4
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb
from typing import Any

from austeer.errors import UserError


def discordant(base: Sequence[int], steered: Sequence[int]) -> tuple[int, int]:
    """``(fixed, broken)``: items wrong in ``base`` and right in ``steered``, and the reverse.

    Both are per-item 0/1 outcomes on the same items in the same order.
    """
    if len(base) != len(steered):
        raise UserError(f"paired outcomes need the same items: {len(base)} unsteered against {len(steered)} steered")
    fixed = sum(1 for b, s in zip(base, steered) if not b and s)
    broken = sum(1 for b, s in zip(base, steered) if b and not s)
    return fixed, broken


def mcnemar(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value: ``2 * P(X <= min(fixed, broken))``, ``X ~ Binomial(fixed + broken, 1/2)``,
    capped at 1 (1 when there is no discordant item).

    Example:
        >>> round(mcnemar(0, 5), 4)  # 5 of 5 discordant items one way: 2 / 2**5
        0.0625
    """
    if fixed < 0 or broken < 0:
        raise UserError(f"counts must be >= 0, got fixed={fixed}, broken={broken}")
    n = fixed + broken
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(fixed, broken) + 1))
    return min(1.0, 2 * tail / 2**n)


def margin(metric: float, base: float, n: int) -> float:
    """z of ``metric`` against ``base``, two rates on ``n`` items each (pooled two-proportion test), rounded.

    Below 2 in absolute value the difference is within noise at about the 5% level.

    Example:
        >>> margin(0.10, 0.0, 40)  # 4 of 40 against 0 of 40
        2.1
    """
    pooled = (metric + base) / 2
    se = (pooled * (1 - pooled) * 2 / max(n, 1)) ** 0.5
    return round((metric - base) / se, 1) if se > 0 else 0.0


def outcomes(samples: list[dict[str, Any]]) -> list[int]:
    """Per-item 0/1 outcomes from evaluation samples (empty when the task kind records none); a method
    averaged over several steerers (``random``) keeps the first one's.

    Example:
        >>> outcomes([{"id": "a", "correct": True}, {"id": "b", "correct": False}])
        [1, 0]
    """
    if not samples or "correct" not in samples[0]:
        return []
    n = len({s["id"] for s in samples})
    return [int(bool(s["correct"])) for s in samples[:n]]
