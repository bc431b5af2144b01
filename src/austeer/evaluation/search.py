"""What every search of configurations shares: which ``n`` of a grid to try, and the order it chooses in.

``compare`` spreads each method's validation grid over its budget; ``tune`` spreads each site's (k, alpha)
grid, ordered by strength, and every other method's grid. Both take evenly spaced ranks, so the first and the
last configuration are always tried; with room for one, ``compare`` tries the first (its grids start at the
weakest) and ``tune`` the last (the strongest: one configuration that does nothing tells a user nothing).

``compare``, ``sweep`` and ``tune`` rank what they measured by one rule (:func:`rank_key`): the better score
first; ties go to less damage (neutral perplexity), then fewer steered activations, then the weaker strength,
then the earlier in the grid.

Example:
    >>> spread(list(range(8)), 3), spread(list(range(8)), 1), spread(list(range(8)), 1, one="last")
    ([0, 4, 7], [0], [7])
    >>> rows = [(0.6, 1.2, 8, 5.0), (0.6, 1.1, 32, 1.0), (0.6, 1.1, 8, 2.0), (0.5, 1.0, 2, 1.0)]
    >>> sorted(rows, key=lambda r: rank_key(*r))
    [(0.6, 1.1, 8, 2.0), (0.6, 1.1, 32, 1.0), (0.6, 1.2, 8, 5.0), (0.5, 1.0, 2, 1.0)]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeVar

from austeer.errors import UserError

T = TypeVar("T")


def rank_key(score: float | tuple[float, ...], damage: float, size: int, strength: float = 0.0) -> tuple[float, ...]:
    """The sort key of every search's choice (ascending = best first): the higher ``score`` (a tuple compares in
    order), then the smaller ``damage`` (a perplexity ratio or increase), the fewer steered activations ``size``,
    the smaller ``|strength|``; :func:`sorted` keeps the grid order among what is left equal."""
    scores = score if isinstance(score, tuple) else (score,)
    return (*(-x for x in scores), damage, size, abs(strength))


def spread(items: Sequence[T], n: int, one: Literal["first", "last"] = "first") -> list[T]:
    """``n`` of ``items`` at evenly spaced ranks (all of them when ``n`` is larger; none when ``n`` is 0); with
    ``n == 1``, the ``one`` end."""
    if n < 0:
        raise UserError(f"budget must be >= 0, got {n}")
    if n >= len(items):
        return list(items)
    if n <= 1:
        return [] if n == 0 else [items[0] if one == "first" else items[-1]]
    return [items[round(j * (len(items) - 1) / (n - 1))] for j in range(n)]
