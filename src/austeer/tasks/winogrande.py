"""WinoGrande (Sakaguchi et al. 2020): which option fills the blank ``_`` of a sentence.

Pairs come from ``train_m.jsonl`` (2558 items: the first 1000 in a fixed order); val and test from
``dev.jsonl`` (1267 items: 100 val, 1167 test, fixed order). Train and dev share no sentence.

Prompt: ``{sentence}\\nWhich option fills the blank (_)?\\nA. {option1}\\nB. {option2}\\nAnswer with A or B.``

Example:
    >>> from austeer.tasks import get_task
    >>> get_task("winogrande").sizes()
    {'pairs': 1000, 'val': 100, 'test': 1167}
"""

from __future__ import annotations

from functools import cache
from typing import Any

from austeer.errors import UserError
from austeer.tasks.base import DATA, Item, read_jsonl, split_ids
from austeer.tasks.mc import AB, MCTask

N_PAIRS, N_VAL = 1000, 100


def _item(r: dict[str, Any]) -> Item:
    prompt = (
        f"{r['sentence']}\nWhich option fills the blank (_)?\nA. {r['option1']}\nB. {r['option2']}\nAnswer with A or B."
    )
    label = int(r["answer"]) - 1
    if label not in (0, 1):
        raise UserError(f"winogrande item {r.get('qID')}: answer must be '1' or '2', got {r['answer']!r}")
    return Item(f"wg-{r['qID']}", prompt, AB, label)


@cache
def _splits() -> dict[str, list[Item]]:
    train = {str(r["qID"]): r for r in read_jsonl(DATA / "WinoGrande" / "train_m.jsonl")}
    dev = {str(r["qID"]): r for r in read_jsonl(DATA / "WinoGrande" / "dev.jsonl")}
    (pair_ids,) = split_ids("winogrande-train", list(train), [N_PAIRS])
    val_ids, test_ids = split_ids("winogrande", list(dev), [N_VAL, None])
    return {
        "pairs": [_item(train[i]) for i in pair_ids],
        "val": [_item(dev[i]) for i in val_ids],
        "test": [_item(dev[i]) for i in test_ids],
    }


class WinoGrande(MCTask):
    name = "winogrande"
    instruction = "Pick the option that makes the sentence make sense, using common sense. Answer with A or B."
    description = "fill the blank with option A/B (pairs: train_m; val/test: dev)"

    def pair_items(self) -> list[Item]:
        return _splits()["pairs"]

    def _items(self, split: str) -> list[Item]:
        return _splits()[split]
