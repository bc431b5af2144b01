"""What every search of configurations shares: which ``n`` of a grid to try.

``compare`` spreads each method's validation grid over its budget; ``tune`` spreads each site's (k, alpha)
grid, ordered by strength, and every other method's grid. Both take evenly spaced ranks, so the first and the
last configuration are always tried; with room for one, ``compare`` tries the first (its grids start at the
weakest) and ``tune`` the last (the strongest: one configuration that does nothing tells a user nothing).

Example:
    >>> spread(list(range(8)), 3), spread(list(range(8)), 1), spread(list(range(8)), 1, one="last")
    ([0, 4, 7], [0], [7])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeVar

from austeer.errors import UserError

T = TypeVar("T")


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
