"""BoolQ (Clark et al. 2019): yes/no questions about a Wikipedia passage.

Only the 3270-item dev set is available (``data/BoolQ/dev.jsonl``). It is cut in a fixed order
(SHA-256 of the question, see :func:`austeer.tasks.base.split_ids`) into 1000 pair items, 100 val items
and the remaining 2170 test items.

Prompt: ``{passage}\\nQuestion: {question}?\\nAnswer with Yes or No.``; choices ``Yes`` / ``No``.

Example:
    >>> from austeer.tasks import get_task
    >>> t = get_task("boolq")
    >>> t.sizes()
    {'pairs': 1000, 'val': 100, 'test': 2170}
    >>> t.items("val")[0].choices
    ('Yes', 'No')
"""

from __future__ import annotations

from functools import cache

from austeer.tasks.base import DATA, Item, read_jsonl, split_ids
from austeer.tasks.mc import MCTask

N_PAIRS, N_VAL = 1000, 100


@cache
def _splits() -> dict[str, list[Item]]:
    rows = read_jsonl(DATA / "BoolQ" / "dev.jsonl")
    items = {}
    for i, r in enumerate(rows):
        q = str(r["question"]).strip()
        q = q[0].upper() + q[1:] if q else q
        prompt = f"{str(r['passage']).strip()}\nQuestion: {q}?\nAnswer with Yes or No."
        items[q.lower()] = Item(f"boolq-{i}", prompt, ("Yes", "No"), 0 if bool(r["answer"]) else 1)
    parts = split_ids("boolq", list(items), [N_PAIRS, N_VAL, None])
    return {name: [items[k] for k in keys] for name, keys in zip(("pairs", "val", "test"), parts)}


class BoolQ(MCTask):
    name = "boolq"
    instruction = "Read the passage carefully and answer the question truthfully with Yes or No."
    description = "yes/no questions on a passage (BoolQ dev, split 1000 pairs / 100 val / 2170 test)"

    def pair_items(self) -> list[Item]:
        return _splits()["pairs"]

    def _items(self, split: str) -> list[Item]:
        return _splits()[split]
