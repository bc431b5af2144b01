"""MAWPS (Koncel-Kedziorski et al. 2016), cross-validation fold 0 with the ``numberN`` placeholders
filled (``derived_mawps_fold0_all_filled.jsonl``: 1537 train, 384 dev rows).

Pairs come from the train rows, val and test from the dev rows. MAWPS repeats problems: dev rows are
de-duplicated by question text (373 remain) and cut in a fixed order into 100 val and 273 test items;
train rows whose question appears in dev, or repeats an earlier train question, are removed from the pair
pool (1466 remain; the first 1000 are used, the paper's cap).

Prompt: ``{question}\\nSolve the problem. End your answer with #### followed by the final number.``
Answer: the prefix equation written infix, e.g. ``8 - 2 = 6\\n#### 6``.

Example:
    >>> from austeer.tasks import get_task
    >>> t = get_task("mawps")
    >>> t.sizes()
    {'pairs': 1000, 'val': 100, 'test': 273}
    >>> t.pairs()[0].positive
    '8 - 2 = 6\\n#### 6'
"""

from __future__ import annotations

from functools import cache
from typing import Any

from austeer.tasks.base import DATA, MAX_PAIRS, Item, fmt_number, norm_text, read_jsonl, split_ids
from austeer.tasks.math import INSTRUCTION, MathTask, prefix_to_infix

N_VAL = 100


def _item(i: int, r: dict[str, Any]) -> Item:
    answer = float(r["answer"])
    solution = f"{prefix_to_infix(str(r['equation_prefix']))} = {fmt_number(answer)}"
    prompt = f"{str(r['question']).strip()}\n{INSTRUCTION}"
    return Item(f"mawps-{i}", prompt, answer=answer, meta={"solution": solution})


@cache
def _splits() -> dict[str, list[Item]]:
    rows = read_jsonl(DATA / "MAWPS" / "derived_mawps_fold0_all_filled.jsonl")
    dev: dict[str, Item] = {}
    for i, r in enumerate(rows):
        if r["split_fold0"] != "train":
            dev.setdefault(norm_text(r["question"]), _item(i, r))
    val_keys, test_keys = split_ids("mawps", list(dev), [N_VAL, None])
    seen = set(dev)
    pool = []
    for i, r in enumerate(rows):
        key = norm_text(r["question"])
        if r["split_fold0"] == "train" and key not in seen:
            seen.add(key)
            pool.append(_item(i, r))
    return {"pairs": pool, "val": [dev[k] for k in val_keys], "test": [dev[k] for k in test_keys]}


class MAWPS(MathTask):
    name = "mawps"
    description = "arithmetic word problems (fold 0: pairs from train, val 100 / test 273 from dev, de-duplicated)"

    def pair_items(self) -> list[Item]:
        return _splits()["pairs"][:MAX_PAIRS]

    def _items(self, split: str) -> list[Item]:
        return _splits()[split]
