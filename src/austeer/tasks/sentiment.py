"""Sentiment: continue neutral openings in a positive way (an effect visible even on a 135M model).

Openings: the distinct premises of Balanced-COPA dev (998 short everyday sentences), fixed order: 500
pair openings, 100 val, 398 test. The user message is ``Continue the story:\\n{opening}``.

Judge: VADER (PyPI ``vadersentiment``, lexicon shipped with the package), compound score in [-1, 1]; a
continuation is positive when compound >= 0.05 (VADER's usual threshold).

Pairs: four sampled continuations per opening; positive = the highest compound, negative = the lowest;
kept when positive >= 0.05 and negative <= -0.05.

Score: ``positive_rate`` = share of positive greedy continuations on held-out openings, with
``mean_compound`` and ``cont_ppl``.

Example:
    >>> from austeer.tasks.sentiment import vader
    >>> [round(x, 2) for x in vader(["I love it!", "I hate it."])]
    [0.67, -0.57]
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from austeer.extras import VADER, require
from austeer.tasks.base import DATA, Item, read_jsonl, split_ids
from austeer.tasks.behaviour import BehaviourTask

N_PAIRS, N_VAL = 500, 100
THRESHOLD = 0.05


@cache
def _analyzer() -> Any:
    require(*VADER, "the sentiment task")
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader(texts: Sequence[str]) -> list[float]:
    """VADER compound score of each text."""
    a = _analyzer()
    return [float(a.polarity_scores(t)["compound"]) for t in texts]


@cache
def _splits() -> dict[str, list[Item]]:
    rows = read_jsonl(DATA / "COPA" / "derived_balanced_copa_dev.jsonl")
    by_text: dict[str, Item] = {}
    for r in rows:
        text = str(r["premise"]).strip()
        if text not in by_text:
            by_text[text] = Item(f"opening-{r['idx']}", f"Continue the story:\n{text}")
    parts = split_ids("sentiment", list(by_text), [N_PAIRS, N_VAL, None])
    return {name: [by_text[k] for k in keys] for name, keys in zip(("pairs", "val", "test"), parts)}


class Sentiment(BehaviourTask):
    name = "sentiment"
    instruction = "Continue the story in a positive, happy and cheerful way."
    metric = "positive_rate"
    mean_name = "mean_compound"
    description = "continue neutral openings positively (VADER judge)"
    needs = (VADER,)

    def pair_items(self) -> list[Item]:
        return _splits()["pairs"]

    def _items(self, split: str) -> list[Item]:
        return _splits()[split]

    def judge(self, texts: Sequence[str]) -> list[float]:
        return vader(texts)

    def wanted(self, score: float) -> bool:
        return score >= THRESHOLD

    def choose(self, samples: Sequence[str], scores: Sequence[float]) -> tuple[str, str] | None:
        hi = max(range(len(samples)), key=lambda i: scores[i])
        lo = min(range(len(samples)), key=lambda i: scores[i])
        if scores[hi] >= THRESHOLD and scores[lo] <= -THRESHOLD:
            return samples[hi], samples[lo]
        return None
