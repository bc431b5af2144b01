"""Built-in tasks of the paper's protocol, plus user tasks.

``TASKS`` maps each built-in name to its task class; ``get_task(name)`` returns a fresh task object.
Every task has ``name``, ``kind`` (``"mc"``, ``"math"`` or ``"behaviour"``), ``metric`` (the primary
metric), ``pairs(model, tok, limit=None)``, ``items(split, limit=None)`` with ``split`` in
``val``/``test``, and ``score(model, tok, items, ...)``: each task kind scores itself
(:mod:`~austeer.tasks.mc`, :mod:`~austeer.tasks.math`, :mod:`~austeer.tasks.behaviour`). Splits,
prompts, pair construction and scoring of every task are documented in its module and in
``docs/EVALUATION.md``. A new task is one module with a :class:`~austeer.tasks.base.Task` subclass,
listed in ``TASKS``.

Example:
    >>> from austeer.tasks import TASKS, get_task
    >>> tuple(TASKS)
    ('boolq', 'copa', 'winogrande', 'svamp', 'mawps', 'detox', 'sentiment')
    >>> t = get_task("copa")
    >>> t.kind, t.metric, len(t.items("val"))
    ('mc', 'accuracy', 100)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from austeer.errors import UserError
from austeer.tasks.base import Item, Task
from austeer.tasks.boolq import BoolQ
from austeer.tasks.copa import COPA
from austeer.tasks.custom import CustomTask
from austeer.tasks.detox import Detox
from austeer.tasks.mawps import MAWPS
from austeer.tasks.sentiment import Sentiment
from austeer.tasks.svamp import SVAMP
from austeer.tasks.winogrande import WinoGrande

#: the built-in tasks by name (the user task ``custom`` needs files: see :func:`get_task`)
TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (BoolQ, COPA, WinoGrande, SVAMP, MAWPS, Detox, Sentiment)}


def get_task(name: str, pairs: str | Path | None = None, eval: str | Path | None = None, **kwargs: Any) -> Task:  # noqa: A002
    """A task by name; ``custom`` needs ``pairs=`` (pairs JSONL) and ``eval=`` (eval JSONL)."""
    if name == "custom":
        if pairs is None or eval is None:
            raise UserError("the custom task needs a pairs file and an eval file (--pairs FILE --eval FILE)")
        return CustomTask(pairs, eval, **kwargs)
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}, or 'custom'")
    return TASKS[name]()


__all__ = ["TASKS", "CustomTask", "Item", "Task", "get_task"]
