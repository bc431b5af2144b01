"""A user task: a pairs JSONL (``prompt``, ``positive``, ``negative``) and an eval JSONL.

Eval file, one JSON object per line, all lines of one kind:

- multiple choice: ``{"prompt": str, "choices": [str, ...], "answer": int | str}`` (``answer`` is the
  index of the correct choice or the choice itself; choices must start with distinct tokens, e.g.
  ``"A"``/``"B"`` or ``"Yes"``/``"No"``);
- math: ``{"prompt": str, "answer": number}`` (greedy decoding, number after ``####`` or last number).

An optional ``"id"`` names the item. Split: the eval items in a fixed order (SHA-256 of their line
number) give ``val`` = the first ``min(100, n // 2)`` and ``test`` = the rest. The pairs file is used
as given (at most 1000 pairs) and is the user's responsibility not to overlap the eval items.

Example:
    >>> import json, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> p, e = os.path.join(d, "p.jsonl"), os.path.join(d, "e.jsonl")
    >>> _ = open(p, "w").write(json.dumps({"prompt": "2+2?", "positive": "4", "negative": "5"}) + "\\n")
    >>> _ = open(e, "w").write("".join(json.dumps({"prompt": f"{i}+1?", "answer": i + 1}) + "\\n" for i in range(6)))
    >>> from austeer.tasks import get_task
    >>> t = get_task("custom", pairs=p, eval=e)
    >>> t.kind, t.sizes()
    ('math', {'pairs': 1, 'val': 3, 'test': 3})
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from austeer.core.pairs import Pair, read_pairs
from austeer.errors import UserError
from austeer.io import iter_jsonl
from austeer.tasks.base import MAX_PAIRS, Item, ScoreOptions, Task, split_ids
from austeer.tasks.math import score_math
from austeer.tasks.mc import score_mc


def _parse(path: Path, lineno: int, obj: Any) -> Item:
    where = f"{path}:{lineno}"
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object, found {type(obj).__name__}")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"{where}: field 'prompt' must be a non-empty string")
    item_id = str(obj.get("id", f"line-{lineno}"))
    if "choices" in obj:
        choices = obj["choices"]
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise UserError(f"{where}: field 'choices' must be a list of at least 2 non-empty strings")
        answer = obj.get("answer")
        if isinstance(answer, bool) or not isinstance(answer, int | str):
            raise UserError(f"{where}: field 'answer' must be the index of the correct choice or the choice")
        if isinstance(answer, str):
            if answer not in choices:
                raise UserError(f"{where}: answer {answer!r} is not one of the choices {choices}")
            label = choices.index(answer)
        else:
            label = answer
        if not 0 <= label < len(choices):
            raise UserError(f"{where}: answer index {label} out of range for {len(choices)} choices")
        return Item(item_id, prompt, tuple(choices), label)
    answer = obj.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, int | float):
        raise UserError(f"{where}: field 'answer' must be a number (math item) or add 'choices' (multiple choice)")
    return Item(item_id, prompt, answer=float(answer))


def read_eval(path: str | Path) -> list[Item]:
    """Read and validate an eval JSONL (see the module docstring); all items must be of one kind."""
    path = Path(path)
    items = [(lineno, _parse(path, lineno, obj)) for lineno, obj in iter_jsonl(path, "eval")]
    if len(items) < 2:
        raise UserError(f"{path}: need at least 2 eval items (val and test), found {len(items)}")
    kinds = {bool(it.choices) for _, it in items}
    if len(kinds) > 1:
        raise UserError(f"{path}: mixes multiple-choice items (with 'choices') and math items (without)")
    return [it for _, it in items]


class CustomTask(Task):
    """Pairs and eval items given by the user."""

    name = "custom"

    def __init__(self, pairs: str | Path, eval: str | Path, name: str = "custom", instruction: str = "") -> None:  # noqa: A002
        self.pairs_path, self.eval_path, self.name = Path(pairs), Path(eval), name
        self.instruction = instruction  # the prompting baseline's system turn (none by default)
        self._pairs = read_pairs(self.pairs_path)[:MAX_PAIRS]
        all_items = read_eval(self.eval_path)
        self.kind = "mc" if all_items[0].choices else "math"
        self.max_new_tokens = 1 if self.kind == "mc" else 64
        n_val = min(100, len(all_items) // 2)
        keys = [str(i) for i in range(len(all_items))]
        val, test = split_ids(f"custom:{self.eval_path.name}", keys, [n_val, None])
        self._splits = {"val": [all_items[int(k)] for k in val], "test": [all_items[int(k)] for k in test]}

    def pairs(self, model: object = None, tokenizer: object = None, limit: int | None = None) -> list[Pair]:
        return self._pairs[:limit] if limit is not None else list(self._pairs)

    def _items(self, split: str) -> list[Item]:
        return self._splits[split]

    def score(self, model: nn.Module, tokenizer: Any, items: Sequence[Item], opts: ScoreOptions) -> dict[str, float]:
        """Scored as a multiple-choice or a math task, whichever the eval file holds."""
        if self.kind == "mc":
            return score_mc(model, tokenizer, items, opts.batch_size, opts.samples, opts.system)
        budget = opts.max_new_tokens or self.max_new_tokens
        return score_math(model, tokenizer, items, opts.batch_size, budget, opts.samples, opts.system)

    def sizes(self) -> dict[str, int]:
        return {"pairs": len(self._pairs), **super().sizes()}
