"""Capability retention: what a steer costs on tasks it was not made for, as paired counts.

Neutral-text perplexity says whether the model still writes fluent text; it does not say whether it can still
*do* things. The capability panel is the validation items of the shipped multiple-choice tasks (COPA, BoolQ,
WinoGrande; ``PANEL_ITEMS`` of each) other than the task being steered. :meth:`Panel.measure` answers every
panel item with the model steered, against the same items unsteered (computed once per panel), and reports
per task and pooled: accuracy before and after, items fixed and broken, and the exact McNemar p of the pooled
counts. ``drop`` is the pooled accuracy lost (negative when the steer helps).

Example:
    >>> import contextlib
    >>> panel = Panel(model, tok, exclude=("copa",), n=4)
    >>> panel.names
    ['boolq', 'winogrande']
    >>> r = panel.measure(contextlib.nullcontext)  # the unsteered model against itself
    >>> r.fixed, r.broken, r.drop
    (0, 0, 0.0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from torch import nn
from tqdm.auto import tqdm

from austeer.errors import UserError
from austeer.stats import discordant, mcnemar, outcomes
from austeer.tasks import get_task
from austeer.tasks.base import ScoreOptions, Task

T = TypeVar("T")

#: the shipped multiple-choice tasks the panel draws from, and how many validation items of each
PANEL_TASKS: tuple[str, ...] = ("copa", "boolq", "winogrande")
PANEL_ITEMS = 50
#: the bound ``compare``, ``sweep`` and ``tune --capability N`` keep unless told otherwise (pooled accuracy lost):
#: on the 1.5B's 100-item COPA panel every method's choice in the committed comparison, and the confirmed spec,
#: moved it by -0.07 to +0.04, none beyond noise (McNemar p >= 0.14; docs/COMPARISON.md), so 0.05 lets changes of
#: that size pass and stops a steer that loses 5 items in 100 or more
DEFAULT_MAX_DROP = 0.05


@dataclass(frozen=True)
class Retention:
    """The panel's answers steered against unsteered: per task ``{unsteered, steered, fixed, broken, n}``,
    pooled ``fixed`` / ``broken`` over ``n`` items, their McNemar ``p`` and the pooled accuracy ``drop``."""

    tasks: dict[str, dict[str, float]]
    fixed: int
    broken: int
    n: int
    p: float

    @property
    def drop(self) -> float:
        """Pooled accuracy lost to the steer (unsteered minus steered; negative: it helps)."""
        return (self.broken - self.fixed) / self.n if self.n else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "drop": self.drop}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Retention:
        """The retention :meth:`to_json` wrote."""
        return cls(obj["tasks"], int(obj["fixed"]), int(obj["broken"]), int(obj["n"]), float(obj["p"]))

    def line(self) -> str:
        """One line for a terminal: ``capability panel (100 items): 0.640 -> 0.620, 3 fixed / 5 broken (p = 0.73)``."""
        before = sum(t["unsteered"] * t["n"] for t in self.tasks.values()) / max(self.n, 1)
        return (
            f"capability panel ({self.n} items of {', '.join(self.tasks)}): accuracy {before:.3f} -> "
            f"{before - self.drop:.3f}, {self.fixed} fixed / {self.broken} broken (McNemar p = {self.p:.2g})"
        )


class Panel:
    """The capability panel of one run: ``n`` validation items of each task in ``names`` but those in
    ``exclude`` (the steered task), answered unsteered once (call :meth:`unsteered` or the first
    :meth:`measure` while ``model`` is unsteered). ``max_drop``: the bound a search's choice must keep (the pooled
    accuracy lost, :meth:`keeps`); None: the panel is measured and reported, not a bound."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        exclude: Sequence[str] = (),
        n: int = PANEL_ITEMS,
        batch_size: int = 16,
        names: Sequence[str] = PANEL_TASKS,
        progress: bool = False,
        max_drop: float | None = None,
    ) -> None:
        if n < 1:
            raise UserError(f"the capability panel needs at least 1 item per task, got {n}")
        self.model, self.tok, self.n, self.batch_size, self.progress = model, tokenizer, n, batch_size, progress
        self.max_drop = max_drop
        self.names = [name for name in names if name not in exclude]
        if not self.names:
            raise UserError(f"the capability panel ({', '.join(names)}) is empty without {', '.join(exclude)}")
        self.tasks: list[Task] = [get_task(name) for name in self.names]
        self._base: dict[str, list[int]] | None = None

    def _answers(self, what: str, system: str | None = None) -> dict[str, list[int]]:
        out = {}
        for task in tqdm(self.tasks, desc=f"capability panel, {what}", unit="task", disable=not self.progress):
            records: list[dict[str, Any]] = []
            task.score(
                self.model,
                self.tok,
                task.items("val", self.n),
                ScoreOptions(self.batch_size, samples=records, system=system),
            )
            out[task.name] = outcomes(records)
        return out

    def keeps(self, retention: Retention) -> bool:
        """Whether ``retention`` keeps the bound (always, without one)."""
        return self.max_drop is None or retention.drop <= self.max_drop

    def unsteered(self) -> dict[str, list[int]]:
        """Per task, 1 where the unsteered model answers the item right (computed once)."""
        if self._base is None:
            self._base = self._answers("unsteered")
        return self._base

    def measure(self, steer: Callable[[], AbstractContextManager[Any]], system: str | None = None) -> Retention:
        """The panel answered inside ``steer()`` (a context manager that steers the model: hooks or a fold),
        with ``system`` as every prompt's system turn (a prompting method), against the unsteered answers."""
        base = self.unsteered()
        with steer():
            now = self._answers("steered", system)
        tasks, fixed, broken, n = {}, 0, 0, 0
        for name in self.names:
            f, b = discordant(base[name], now[name])
            m = len(base[name])
            tasks[name] = {
                "unsteered": sum(base[name]) / m,
                "steered": sum(now[name]) / m,
                "fixed": f,
                "broken": b,
                "n": m,
            }
            fixed, broken, n = fixed + f, broken + b, n + m
        return Retention(tasks, fixed, broken, n, mcnemar(fixed, broken))


def first_within(panel: Panel, ranked: Sequence[T], retention: Callable[[T], Retention]) -> T | None:
    """The first of ``ranked`` (best first, by the search's rule) that keeps the panel's bound, measuring
    ``retention`` in that order and stopping there; None when none keeps it. compare and sweep then take the one
    that drops least, tune takes none.

    Example:
        >>> drops = {"a": Retention({}, 0, 3, 10, 0.25), "b": Retention({}, 1, 1, 10, 1.0)}
        >>> bounded = Panel(model, tok, n=1, max_drop=0.1)  # answers nothing until measured
        >>> first_within(bounded, ["a", "b"], drops.__getitem__)
        'b'
    """
    return next((c for c in ranked if panel.keeps(retention(c))), None)
