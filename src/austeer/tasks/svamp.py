"""SVAMP (Patel et al. 2021), the ChilleD 700/300 split: 700 train items are the pair pool (the paper
uses 700 pairs), ``dev.json`` (100) is val and ``test.json`` (200) is test. The three files share no problem.

Prompt: ``{Body} {Question}\\nSolve the problem. End your answer with #### followed by the final number.``
Answer: ``{Equation} = {Answer}\\n#### {Answer}`` (numbers written without a trailing ``.0``).

Example:
    >>> from austeer.tasks import get_task
    >>> t = get_task("svamp")
    >>> t.sizes()
    {'pairs': 700, 'val': 100, 'test': 200}
    >>> t.items("val")[0].answer
    1.0
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

from austeer.errors import UserError
from austeer.tasks.base import DATA, Item, fmt_number
from austeer.tasks.math import INSTRUCTION, MathTask


def _equation(eq: str) -> str:
    return re.sub(r"\d+\.\d+", lambda m: fmt_number(float(m.group())), eq.strip())


def _item(r: dict[str, Any]) -> Item:
    body, question = str(r["Body"]).strip(), str(r["Question"]).strip()
    prompt = f"{body} {question}\n{INSTRUCTION}"
    answer = float(r["Answer"])
    solution = f"{_equation(str(r['Equation']))} = {fmt_number(answer)}"
    return Item(f"svamp-{r['ID']}", prompt, answer=answer, meta={"solution": solution})


@cache
def _split(name: str) -> list[Item]:
    path = DATA / "SVAMP" / f"{name}.json"
    rows = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(rows, list):
        raise UserError(f"{path}: expected a JSON list of problems")
    return [_item(r) for r in rows]


class SVAMP(MathTask):
    name = "svamp"
    description = "arithmetic word problems (ChilleD split: pairs train 700, val dev 100, test 200)"

    def pair_items(self) -> list[Item]:
        return _split("train")

    def _items(self, split: str) -> list[Item]:
        return _split("dev" if split == "val" else "test")
