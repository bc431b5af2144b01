"""What every search of configurations shares: which ``n`` of a grid to try, and the order it chooses in.

``compare`` spreads each method's validation grid over its budget; ``tune`` spreads each site's (k, alpha)
grid, ordered by strength, and every other method's grid. Both take evenly spaced ranks, so the first and the
last configuration are always tried; with room for one, ``compare`` tries the first (its grids start at the
weakest) and ``tune`` the last (the strongest: one configuration that does nothing tells a user nothing).

``compare``, ``sweep`` and ``tune`` rank what they measured by one rule (:func:`ranked`, :func:`rank_key`) over
one row interface (:class:`Row`: what every search's row tells the rule, a :class:`Measured`): the better score
first; ties go to less damage (neutral perplexity), then fewer steered activations, then the weaker strength,
then the earlier in the grid. A new search rule is written here once, for all three.

``compare``, ``sweep`` and ``tune`` resume by one scheme: the run's state is a JSON file austeer signs
(:func:`save_state`, written atomically after every measured configuration); :func:`load_state` reads it back
only when it names the same run (model, task or pairs, settings: the ``identity`` fields), so a rerun measures only
what is missing and never mixes two runs (``--force``: another run's state is started over).

Example:
    >>> spread(list(range(8)), 3), spread(list(range(8)), 1), spread(list(range(8)), 1, one="last")
    ([0, 4, 7], [0], [7])
    >>> rows = [(0.6, 1.2, 8, 5.0), (0.6, 1.1, 32, 1.0), (0.6, 1.1, 8, 2.0), (0.5, 1.0, 2, 1.0)]
    >>> sorted(rows, key=lambda r: rank_key(*r))
    [(0.6, 1.1, 8, 2.0), (0.6, 1.1, 32, 1.0), (0.6, 1.2, 8, 5.0), (0.5, 1.0, 2, 1.0)]
    >>> from austeer.evaluation.sweep import SweepRow
    >>> rows = [SweepRow("head", 8, 5.0, 8, 0.6, 0.2), SweepRow("head", 32, 1.0, 32, 0.6, 0.1)]
    >>> [r.k for r in ranked(rows)], [r.k for r in ranked(rows, max_damage=0.15)]
    ([32, 8], [32])
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

from austeer.errors import UserError
from austeer.io import signed_json, write_output

T = TypeVar("T")


class Measured(NamedTuple):
    """What the one choice rule reads of a measured configuration."""

    score: float | tuple[float, ...]  # the effect on validation: higher is better (a tuple compares in order)
    damage: float  # the neutral-text perplexity cost (a ratio or an increase): lower is better
    size: int  # how many activations it steers
    strength: float  # its alpha; 0 where the methods' strengths share no scale


class Row(Protocol):
    """A row of any search (``compare``'s :class:`~austeer.evaluation.compare.Trial`, ``sweep``'s
    :class:`~austeer.evaluation.sweep.SweepRow`, ``tune``'s :class:`~austeer.evaluation.tune.TuneRow`): each
    carries its own measurements and says which of them the rule reads."""

    @property
    def measured(self) -> Measured: ...


R = TypeVar("R", bound=Row)


def rank_key(score: float | tuple[float, ...], damage: float, size: int, strength: float = 0.0) -> tuple[float, ...]:
    """The sort key of every search's choice (ascending = best first): the higher ``score`` (a tuple compares in
    order), then the smaller ``damage`` (a perplexity ratio or increase), the fewer steered activations ``size``,
    the smaller ``|strength|``; :func:`sorted` keeps the grid order among what is left equal."""
    scores = score if isinstance(score, tuple) else (score,)
    return (*(-x for x in scores), damage, size, abs(strength))


def ranked(
    rows: Sequence[R], max_damage: float | None = None, score: Callable[[R], float | tuple[float, ...]] | None = None
) -> list[R]:
    """The rows whose damage is at most ``max_damage`` (all with None), best first by :func:`rank_key` (``score``
    replaces each row's own where a search ranks on another measurement, e.g. tune's margin rule)."""
    ok = [r for r in rows if max_damage is None or r.measured.damage <= max_damage]
    of = score or (lambda r: r.measured.score)
    return sorted(ok, key=lambda r: rank_key(of(r), *r.measured[1:]))


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


def load_state(
    path: Path | None,
    kind: str,
    fresh: dict[str, Any],
    identity: Sequence[str],
    migrate: Callable[[dict[str, Any]], None] | None = None,
    rows: str | None = "rows",
    replace: bool = False,
) -> dict[str, Any]:
    """The state an earlier ``kind`` run saved at ``path`` when its ``identity`` fields equal ``fresh``'s, else
    ``fresh`` when there is none; a file that is not such a state (a JSON object with its measured list under
    ``rows``, unless None), or another run's, is one clear error, or with ``replace`` (the commands' ``--force``) is
    started over: ``fresh``.
    ``migrate`` renames in place what an older austeer wrote under another name, before the comparison.

    Example:
        >>> import tempfile
        >>> where = Path(tempfile.mkdtemp()) / "sweep.json"
        >>> save_state(where, {"task": "copa", "rows": [1]}, "sweep")
        >>> load_state(where, "sweep", {"task": "copa", "rows": []}, ["task"])["rows"]
        [1]
        >>> try:
        ...     load_state(where, "sweep", {"task": "boolq", "rows": []}, ["task"])
        ... except UserError as e:
        ...     print(str(e).split(": ", 1)[1].split(";")[0])
        an earlier sweep run with a different task ('copa', now 'boolq')
    """
    if path is None or not path.exists():
        return fresh
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        if replace:
            return fresh
        raise UserError(f"{path}: not a {path.name} austeer wrote ({exc}); use another --out directory") from None
    if not isinstance(state, dict) or (rows is not None and not isinstance(state.get(rows), list)):
        if replace:
            return fresh
        raise UserError(f"{path}: not a {path.name} austeer wrote; use another --out directory")
    if migrate is not None:
        migrate(state)
    for name in identity:
        if state.get(name) != fresh[name]:
            if replace:
                return fresh
            was, now = state.get(name), fresh[name]
            shown = f" ({was!r}, now {now!r})" if len(repr((was, now))) <= 200 else ""
            raise UserError(
                f"{path}: an earlier {kind} run with a different {name.removesuffix('_sha256')}{shown}; "
                "use another --out directory, or --force to start it over"
            )
    return state


def save_state(
    path: Path | None,
    state: dict[str, Any],
    kind: str,
    force: bool = False,
    allow_nan: bool = True,
    inputs: Iterable[str | Path | None] = (),
) -> None:
    """Write ``state`` to ``path`` signed as ``kind``'s, atomically (nothing when ``path`` is None); a file there
    that austeer did not write is replaced only with ``force``, one of the run's ``inputs`` never.
    ``allow_nan=False``: strict JSON (a NaN or an infinity is an error, not a token other readers refuse)."""
    if path is not None:
        write_output(path, signed_json(state, kind, allow_nan=allow_nan), kind, force, inputs)
