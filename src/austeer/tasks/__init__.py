"""Built-in tasks of the paper's protocol, plus user tasks.

``get_task(name)`` returns a fresh task object; ``TASKS`` lists the built-in names. Every task has
``name``, ``kind`` (``"mc"``, ``"math"`` or ``"behaviour"``), ``metric`` (the primary metric),
``pairs(model, tok, limit=None)`` and ``items(split, limit=None)`` with ``split`` in ``val``/``test``.
Splits, prompts, pair construction and scoring of every task are documented in its module and in
``docs/EVALUATION.md``.

Example:
    >>> from austeer.tasks import TASKS, get_task
    >>> TASKS
    ('boolq', 'copa', 'winogrande', 'svamp', 'mawps', 'detox', 'sentiment')
    >>> t = get_task("copa")
    >>> t.kind, t.metric, len(t.items("val"))
    ('mc', 'accuracy', 100)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from austeer.tasks.base import Item, Task

TASKS: tuple[str, ...] = ("boolq", "copa", "winogrande", "svamp", "mawps", "detox", "sentiment")


def get_task(name: str, pairs: str | Path | None = None, eval: str | Path | None = None, **kwargs: Any) -> Task:  # noqa: A002
    """A task by name; ``custom`` needs ``pairs=`` (pairs JSONL) and ``eval=`` (eval JSONL)."""
    if name == "custom":
        if pairs is None or eval is None:
            raise ValueError("the custom task needs a pairs file and an eval file (--pairs FILE --eval FILE)")
        from austeer.tasks.custom import CustomTask

        return CustomTask(pairs, eval, **kwargs)
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}, or 'custom'")
    if name == "boolq":
        from austeer.tasks.boolq import BoolQ

        return BoolQ()
    if name == "copa":
        from austeer.tasks.copa import COPA

        return COPA()
    if name == "winogrande":
        from austeer.tasks.winogrande import WinoGrande

        return WinoGrande()
    if name == "svamp":
        from austeer.tasks.svamp import SVAMP

        return SVAMP()
    if name == "mawps":
        from austeer.tasks.mawps import MAWPS

        return MAWPS()
    if name == "detox":
        from austeer.tasks.detox import Detox

        return Detox()
    from austeer.tasks.sentiment import Sentiment

    return Sentiment()


__all__ = ["TASKS", "Item", "Task", "get_task"]
