"""COPA (Roemmele et al. 2011): pick the more plausible cause or effect of a premise.

Pairs come from Balanced-COPA dev (``derived_balanced_copa_dev.jsonl``, 1000 items: the original COPA
dev items 1-500 and their 500 mirrored items), as in the paper. Val and test come from the COPA test
set (``derived_copa_test.jsonl``, items 501-1000): 100 val and 400 test items in a fixed order. Any pair
item whose premise also appears in val/test is dropped (one such premise exists), so pairs and the
evaluation items never share a premise.

Prompt: ``Premise: {premise}\\nWhat was the cause?`` (or ``What happened as a result?``) followed by
``A. {choice1}\\nB. {choice2}\\nAnswer with A or B.``; choices ``A`` / ``B``.

Example:
    >>> from austeer.tasks import get_task
    >>> t = get_task("copa")
    >>> t.sizes()
    {'pairs': 999, 'val': 100, 'test': 400}
"""

from __future__ import annotations

from functools import cache
from typing import Any

from austeer.tasks.base import DATA, Item, norm_text, read_jsonl, split_ids
from austeer.tasks.mc import AB, MCTask

N_VAL = 100
_QUESTION = {"cause": "What was the cause?", "effect": "What happened as a result?"}


def _item(r: dict[str, Any]) -> Item:
    q = _QUESTION[str(r["question"])]
    prompt = f"Premise: {r['premise']}\n{q}\nA. {r['choice1']}\nB. {r['choice2']}\nAnswer with A or B."
    return Item(f"copa-{r['idx']}", prompt, AB, int(r["label"]), meta={"premise": r["premise"]})


@cache
def _splits() -> dict[str, list[Item]]:
    test_rows = {str(r["idx"]): r for r in read_jsonl(DATA / "COPA" / "derived_copa_test.jsonl")}
    val_ids, test_ids = split_ids("copa", list(test_rows), [N_VAL, None])
    held_out = {norm_text(r["premise"]) for r in test_rows.values()}
    pair_rows = [
        r
        for r in read_jsonl(DATA / "COPA" / "derived_balanced_copa_dev.jsonl")
        if norm_text(r["premise"]) not in held_out
    ]
    return {
        "pairs": [_item(r) for r in pair_rows],
        "val": [_item(test_rows[i]) for i in val_ids],
        "test": [_item(test_rows[i]) for i in test_ids],
    }


class COPA(MCTask):
    name = "copa"
    instruction = "Pick the more plausible cause or effect of the premise, using common sense. Answer with A or B."
    description = "cause/effect with options A/B (pairs: Balanced-COPA dev; val/test: COPA test)"

    def pair_items(self) -> list[Item]:
        return _splits()["pairs"][:1000]

    def _items(self, split: str) -> list[Item]:
        return _splits()[split]
