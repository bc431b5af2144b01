"""What every task shares: the :class:`Item` and :class:`Task` types, deterministic splits, data paths
and the neutral text set used for the perplexity side effect.

Splits are made by :func:`split_ids`: items are ordered by the SHA-256 of ``"<task>:<key>"`` (a
stable, platform-independent shuffle that needs no random generator) and cut into consecutive blocks,
so no item can be in two splits and the split never changes between runs or machines.

Example:
    >>> from austeer.tasks.base import split_ids
    >>> a, b = split_ids("demo", [str(i) for i in range(10)], [6, 4])
    >>> sorted(a + b) == [str(i) for i in range(10)], set(a) & set(b)
    (True, set())
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from austeer.core.pairs import Pair
from austeer.errors import UserError
from austeer.io import iter_jsonl

if TYPE_CHECKING:
    from torch import nn

Kind = Literal["mc", "math", "behaviour"]
SPLITS = ("val", "test")

#: folder of the data shipped with the package (copies of ../shared/data, see data/MANIFEST.md)
DATA = Path(__file__).resolve().parents[1] / "data"

#: at most this many pairs per task (the paper's cap)
MAX_PAIRS = 1000


@dataclass
class ScoreOptions:
    """How :meth:`Task.score` scores: ``max_new_tokens`` (``None``: the task's decoding budget),
    ``ref_model`` (judges the fluency of generated continuations: behaviour tasks), ``samples`` (when a
    list, receives one record per item) and ``system`` (the system turn of every prompt)."""

    batch_size: int = 16
    max_new_tokens: int | None = None
    ref_model: nn.Module | None = None
    samples: list[dict[str, Any]] | None = None
    system: str | None = None


@dataclass(frozen=True)
class Item:
    """One evaluation item.

    ``prompt`` is the user message (the chat template is applied at evaluation). MC items have
    ``choices`` (the answer strings, each starting with a distinct token) and ``label`` (the index of
    the correct one); math items have a float ``answer``; behaviour items only a prompt.
    """

    id: str
    prompt: str
    choices: tuple[str, ...] = ()
    label: int = -1
    answer: float | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def gold(self) -> str:
        return self.choices[self.label] if self.choices else ""


class Task:
    """Base class of a task: its data, splits, pair building and scoring.

    Subclasses set ``name``, ``kind``, ``metric`` and implement :meth:`_items` (all items of a split
    before ``limit``), :meth:`pairs` and :meth:`score` (the task kinds :class:`~austeer.tasks.mc.MCTask`,
    :class:`~austeer.tasks.math.MathTask` and :class:`~austeer.tasks.behaviour.BehaviourTask` do).
    """

    name: str = ""
    kind: Kind = "mc"
    metric: str = "accuracy"
    #: greedy decoding budget for math and behaviour tasks
    max_new_tokens: int = 1
    #: extra instruction added to every prompt (documented per task)
    description: str = ""
    #: the prompting baseline's system turn: asks for the task's behaviour in words (``""``: none declared)
    instruction: str = ""
    #: optional packages the task's judge imports: ``(module, pip requirement)`` (see :mod:`austeer.extras`)
    needs: tuple[tuple[str, str], ...] = ()

    def check_needs(self) -> None:
        """Raise :class:`~austeer.extras.MissingPackage` (with the ``pip install``) when a package the task
        needs is not installed: called before the model loads, not after the generations."""
        from austeer.extras import require

        for module, pip in self.needs:
            require(module, pip, f"the {self.name} task")

    def items(self, split: str, limit: int | None = None) -> list[Item]:
        """The ``val`` or ``test`` items, in their fixed order; ``limit`` keeps the first ``limit``."""
        if split not in SPLITS:
            raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        items = self._items(split)
        return items[:limit] if limit is not None else items

    def _items(self, split: str) -> list[Item]:
        raise NotImplementedError

    def pairs(self, model: Any = None, tokenizer: Any = None, limit: int | None = None) -> list[Pair]:
        raise NotImplementedError

    def score(self, model: nn.Module, tokenizer: Any, items: Sequence[Item], opts: ScoreOptions) -> dict[str, float]:
        """The task's metrics of ``model`` as it is now (steered or not) on ``items`` (see :class:`ScoreOptions`)."""
        raise NotImplementedError

    def sizes(self) -> dict[str, int]:
        """Number of items per split (pairs: for behaviour tasks, the number of pair prompts)."""
        return {s: len(self._items(s)) for s in SPLITS}

    def __repr__(self) -> str:
        return f"<task {self.name} ({self.kind}, metric {self.metric})>"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every object of a shipped task's JSONL file (:func:`austeer.io.iter_jsonl`: errors name the line)."""
    return [obj for _, obj in iter_jsonl(path, "task data", UserError)]


def stable_order(task: str, keys: Sequence[str]) -> list[int]:
    """Indices of ``keys`` sorted by ``sha256(task:key)``: a fixed pseudo-random order."""
    return sorted(range(len(keys)), key=lambda i: hashlib.sha256(f"{task}:{keys[i]}".encode()).hexdigest())


def split_ids(task: str, keys: Sequence[str], sizes: Sequence[int | None]) -> list[list[str]]:
    """Cut ``keys`` (unique) in stable order into consecutive blocks of ``sizes`` (None = the rest)."""
    if len(set(keys)) != len(keys):
        raise UserError(f"{task}: split keys are not unique")
    order = [keys[i] for i in stable_order(task, keys)]
    out, start = [], 0
    for n in sizes:
        end = len(order) if n is None else min(len(order), start + n)
        out.append(order[start:end])
        start = end
    return out


def norm_text(text: str) -> str:
    """Lower case, single spaces: what counts as "the same question" when checking overlap."""
    return " ".join(text.lower().split())


def fmt_number(x: float) -> str:
    """``6.0`` -> ``6``, ``2.50`` -> ``2.5``: how numbers are written in answers."""
    if float(x).is_integer():
        return str(int(x))
    return f"{x:.6f}".rstrip("0").rstrip(".")


#: Fixed neutral English text (written for this project): the perplexity side effect of steering is
#: measured on it, so a configuration that gains on a task by breaking the language model shows up.
NEUTRAL_TEXTS: tuple[str, ...] = (
    "The library opens at nine in the morning and closes at six in the evening on weekdays.",
    "Water boils at one hundred degrees Celsius at sea level, and at a lower temperature in the mountains.",
    "The train from the city centre to the airport leaves every fifteen minutes and takes about half an hour.",
    "Most plants need sunlight, water and nutrients from the soil in order to grow.",
    "The committee met on Tuesday to discuss the budget for the coming year.",
    "A bicycle has two wheels, a frame, pedals, a chain and a saddle for the rider.",
    "The museum's new exhibition shows paintings and drawings from the nineteenth century.",
    "To make a cup of tea, boil some water, pour it over the tea leaves and wait a few minutes.",
    "The river flows from the hills in the north to the sea in the south, passing through three towns.",
    "Many people use a calendar on their phone to keep track of meetings and appointments.",
    "The recipe calls for two eggs, a cup of flour, half a cup of milk and a pinch of salt.",
    "In the winter the days are shorter and the nights are longer than in the summer.",
    "The report describes the results of a survey of five hundred households in the region.",
    "Students are asked to hand in their essays by the end of the week.",
    "The software update adds a few small features and fixes several known problems.",
    "The town square has a fountain, a few benches and a small market on Saturdays.",
)
