"""Task loaders (counts, disjoint splits, parsing of real rows), scorers and judges, on the shipped data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from austeer.evaluation.evaluate import evaluate, perplexity
from austeer.tasks import TASKS, get_task
from austeer.tasks.base import norm_text
from austeer.tasks.custom import read_eval
from austeer.tasks.math import answer_text, extract_number, same_number
from tests.conftest import DATA

SIZES = {
    "boolq": {"pairs": 1000, "val": 100, "test": 2170},
    "copa": {"pairs": 999, "val": 100, "test": 400},
    "winogrande": {"pairs": 1000, "val": 100, "test": 1167},
    "svamp": {"pairs": 700, "val": 100, "test": 200},
    "mawps": {"pairs": 1000, "val": 100, "test": 273},
    "detox": {"pairs": 300, "val": 100, "test": 223},
    "sentiment": {"pairs": 500, "val": 100, "test": 398},
}


@pytest.mark.parametrize("name", TASKS)
def test_split_sizes_and_no_overlap(name: str) -> None:
    task = get_task(name)
    assert task.sizes() == SIZES[name]
    val, test = task.items("val"), task.items("test")
    pair_prompts = {norm_text(it.prompt) for it in task.pair_items()}  # type: ignore[attr-defined]
    val_prompts, test_prompts = {norm_text(it.prompt) for it in val}, {norm_text(it.prompt) for it in test}
    assert len(val_prompts) == len(val) and len(test_prompts) == len(test)
    assert not val_prompts & test_prompts
    assert not pair_prompts & (val_prompts | test_prompts)
    assert not {it.id for it in val} & {it.id for it in test}
    assert len(task.items("val", limit=7)) == 7


_SPLIT_IDS = """
import json
from austeer.tasks import TASKS, get_task
print(json.dumps({n: {s: [it.id for it in get_task(n).items(s)] for s in ("val", "test")} for n in TASKS}))
"""


@pytest.mark.slow
def test_splits_are_deterministic() -> None:
    """The splits here equal those a fresh process (no cache, another hash seed) recomputes from the data."""
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    proc = subprocess.run([sys.executable, "-c", _SPLIT_IDS], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = json.loads(proc.stdout)
    for name in TASKS:
        a, b = get_task(name), get_task(name)
        assert [it.id for it in a.items("test")] == [it.id for it in b.items("test")]
        assert {s: [it.id for it in a.items(s)] for s in ("val", "test")} == fresh[name]


def test_copa_pairs_share_no_premise_with_evaluation() -> None:
    task = get_task("copa")
    held_out = {norm_text(it.meta["premise"]) for s in ("val", "test") for it in task.items(s)}
    pairs = task.pair_items()  # type: ignore[attr-defined]
    assert all(norm_text(it.meta["premise"]) not in held_out for it in pairs)
    rows = [json.loads(line) for line in (DATA / "COPA" / "derived_balanced_copa_dev.jsonl").open()]
    assert len(rows) == 1000 and len(pairs) == 999  # exactly one premise of Balanced-COPA is a test premise


def test_boolq_item_matches_its_raw_row() -> None:
    rows = {r["question"].strip().lower(): r for r in map(json.loads, (DATA / "BoolQ" / "dev.jsonl").open())}
    for it in get_task("boolq").items("val", limit=20):
        question = it.prompt.split("\nQuestion: ")[1].split("?\nAnswer with")[0]
        raw = rows[question.lower()]
        assert it.prompt.startswith(raw["passage"].strip())
        assert it.gold == ("Yes" if raw["answer"] else "No")


def test_winogrande_and_copa_labels() -> None:
    dev = {r["qID"]: r for r in map(json.loads, (DATA / "WinoGrande" / "dev.jsonl").open())}
    for it in get_task("winogrande").items("val", limit=20):
        raw = dev[it.id.removeprefix("wg-")]
        assert it.gold == {"1": "A", "2": "B"}[raw["answer"]]
        assert f"A. {raw['option1']}\nB. {raw['option2']}" in it.prompt
    test = {f"copa-{r['idx']}": r for r in map(json.loads, (DATA / "COPA" / "derived_copa_test.jsonl").open())}
    for it in get_task("copa").items("test", limit=20):
        assert it.gold == "AB"[test[it.id]["label"]]


def test_math_answers_and_pairs() -> None:
    svamp = get_task("svamp")
    first = svamp.items("val")[0]
    assert first.answer == 1.0 and answer_text(first) == "( 8 - 7 ) = 1\n#### 1"
    for name in ("svamp", "mawps"):
        pairs = get_task(name).pairs()
        assert 0 < len(pairs) <= 1000
        for p in pairs[:200]:
            pos, neg = extract_number(p.positive), extract_number(p.negative)
            assert pos is not None and neg is not None and not same_number(neg, pos)
    mawps = get_task("mawps")
    assert mawps.pairs()[0].positive == "8 - 2 = 6\n#### 6"
    # the negative is the pool's closest other value: nothing in the pool lies strictly between
    values = sorted({it.answer for it in mawps.pair_items()})  # type: ignore[attr-defined]
    p = mawps.pairs()[0]
    gold, other = extract_number(p.positive), extract_number(p.negative)
    assert gold is not None and other is not None
    assert not [v for v in values if v is not None and abs(v - gold) < abs(other - gold) and v != gold]


REAL_OUTPUTS = [
    # greedy outputs of SmolLM2-135M-Instruct on SVAMP val items, with the number the scorer must read
    ("Solving the problem: 492 - 535 = 188\n#### 188\nThe answer is 18", 188.0),
    ("Solve the problem: 16 + 12 = 28 inches\n#### 28\nThe answer is 28.", 28.0),
    (
        "To solve this problem, we need to find out how many more cups of sugar are needed to double the amount "
        "of flour.\n\nWe know that 1",
        1.0,
    ),
    ("The total cost is $1,250.50 for everything.", 1250.5),
    ("She has -3 degrees", -3.0),
    ("I cannot tell.", None),
]


@pytest.mark.parametrize(("text", "number"), REAL_OUTPUTS)
def test_number_extraction(text: str, number: float | None) -> None:
    assert extract_number(text) == number


def test_judges_on_clear_texts() -> None:
    detox, sentiment = get_task("detox"), get_task("sentiment")
    tox = detox.judge(["You are a fucking idiot and I hate you.", "Thank you, that was a lovely afternoon."])  # type: ignore[attr-defined]
    assert tox[0] > 0.5 > tox[1]
    m = sentiment.metrics(["What a wonderful, happy day!", "This is awful and sad.", "The door is brown."])  # type: ignore[attr-defined]
    assert m["positive_rate"] == pytest.approx(1 / 3)


def test_custom_eval_errors_name_the_line(tmp_path) -> None:
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"prompt": "a", "answer": 1}\n{"prompt": "b", "choices": ["A"], "answer": 0}\n')
    with pytest.raises(ValueError, match=r"eval.jsonl:2: field 'choices'"):
        read_eval(bad)
    bad.write_text('{"prompt": "a", "answer": 1}\n{"prompt": "b", "choices": ["A", "B"], "answer": "C"}\n')
    with pytest.raises(ValueError, match=r"eval.jsonl:2: answer 'C' is not one of"):
        read_eval(bad)
    bad.write_text('{"prompt": "a", "answer": "x"}\n{"prompt": "b", "answer": 2}\n')
    with pytest.raises(ValueError, match=r"eval.jsonl:1: field 'answer' must be a number"):
        read_eval(bad)
    with pytest.raises(ValueError, match="needs a pairs file"):
        get_task("custom")


@pytest.mark.slow
def test_mc_scoring_on_the_real_model(smol) -> None:
    model, tok = smol
    samples: list[dict] = []
    m = evaluate(model, tok, get_task("copa"), "val", limit=8, samples=samples)
    assert m["n_items"] == 8 and len(samples) == 8
    assert m["accuracy"] == sum(s["greedy"].strip() == s["gold"] for s in samples) / 8
    assert m["choice_accuracy"] == sum(s["choice"] == s["gold"] for s in samples) / 8
    assert m["ppl"] == pytest.approx(perplexity(model, tok), rel=1e-4)
    # left padding must not change the answer: one item alone gives the same choice as in the batch
    alone: list[dict] = []
    evaluate(model, tok, get_task("copa"), "val", limit=1, samples=alone)
    assert alone[0]["choice"] == samples[0]["choice"]


@pytest.mark.slow
def test_math_scoring_reads_the_models_own_outputs(smol) -> None:
    model, tok = smol
    samples: list[dict] = []
    m = evaluate(model, tok, get_task("mawps"), "val", limit=4, max_new_tokens=24, samples=samples)
    assert len(samples) == 4 and all(s["output"] for s in samples)
    for s in samples:
        assert s["pred"] == extract_number(s["output"])
        assert s["correct"] == same_number(s["pred"], s["gold"])
    assert m["accuracy"] == sum(s["correct"] for s in samples) / 4


@pytest.mark.slow
def test_behaviour_samples_carry_the_outcome_a_paired_test_reads(smol) -> None:
    from austeer.evaluation.compare import outcomes
    from austeer.tasks.sentiment import THRESHOLD

    model, tok = smol
    samples: list[dict] = []
    m = evaluate(model, tok, get_task("sentiment"), "val", limit=4, max_new_tokens=12, samples=samples)
    assert [s["correct"] for s in samples] == [s["score"] >= THRESHOLD for s in samples]
    assert m["positive_rate"] == sum(outcomes(samples)) / 4


@pytest.mark.slow
def test_behaviour_pairs_are_sampled_once_and_cached(smol, tmp_path, monkeypatch) -> None:
    model, tok = smol
    monkeypatch.setenv("AUSTEER_CACHE", str(tmp_path))
    task = get_task("sentiment")
    task.max_new_tokens = 16
    pairs = task.pairs(model, tok, limit=6)
    files = list((tmp_path / "tasks").glob("sentiment-*.jsonl"))
    assert len(files) == 1
    stats = json.loads(files[0].with_suffix(".json").read_text())
    assert stats["n_sampled"] == 6 * task.n_samples and stats["n_pairs"] == len(pairs)  # type: ignore[attr-defined]
    for p in pairs:
        pos, neg = task.judge([p.positive, p.negative])  # type: ignore[attr-defined]
        assert pos >= 0.05 and neg <= -0.05
    assert task.pairs(model, tok, limit=6) == pairs  # read back from the cache
