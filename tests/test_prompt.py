"""The prompting baseline (``prompt``, ``prompt+austeer``) and the paired test, on the real SmolLM2 and shipped data."""

from __future__ import annotations

import json
from fractions import Fraction
from math import comb

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import austeer.tasks.mc as mc_module
from austeer.core.pairs import format_prompt
from austeer.evaluation.compare import Comparison, Result, evaluate_steered, prompted_evidence
from austeer.evaluation.evaluate import evaluate
from austeer.methods import METHODS, au
from austeer.methods.base import gather
from austeer.report.comparison import paired, summary_table, table
from austeer.stats import discordant, mcnemar
from austeer.tasks import get_task
from tests.conftest import DATA, hook_count

SMOL_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM"


@pytest.mark.slow
def test_prompt_changes_the_formatted_prompts_and_nothing_in_the_model(smol, monkeypatch):
    model, tok = smol
    task = get_task("copa")
    evidence = prompted_evidence(model, tok, task, ["prompt"], pairs_limit=8, progress=False)
    assert evidence.pos == {} and evidence.n_pairs == 8  # a prompt reads no activation
    steerer = METHODS["prompt"].build(model, evidence, shots=0)
    assert steerer.system == task.instruction and steerer.n_steered == 0
    seen: list[str] = []
    real = mc_module.next_token_logits

    def spy(model, tok, texts, batch_size=16):
        seen.extend(texts)
        return real(model, tok, texts, batch_size)

    monkeypatch.setattr(mc_module, "next_token_logits", spy)  # where the MC scorer looks it up
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = evaluate(model, tok, task, split="val", limit=3)
    assert all(SMOL_DEFAULT_SYSTEM in t and task.instruction not in t for t in seen)
    seen.clear()
    for ctx in (steerer.hooks, steerer.fold):
        with ctx(model):
            assert hook_count(model) == 0
            after = model.state_dict()
            assert all(torch.equal(after[k], before[k]) for k in before)
    prompted = evaluate_steered(model, tok, task, steerer, split="val", limit=3)
    assert len(seen) == 3
    for text, item in zip(seen, task.items("val", 3)):
        assert text == format_prompt(tok, item.prompt, task.instruction)
        assert text.startswith(f"<|im_start|>system\n{task.instruction}<|im_end|>") and SMOL_DEFAULT_SYSTEM not in text
    assert prompted["ppl"] == plain["ppl"]  # the neutral-text perplexity of a prompt alone is the unsteered model's


def test_fewshot_examples_come_only_from_pair_items(smol):
    model, tok = smol
    for name in ("copa", "svamp"):
        task = get_task(name)
        evidence = prompted_evidence(model, tok, task, ["prompt"], pairs_limit=8, progress=False)
        system = METHODS["prompt"].build(model, evidence, shots=3).system
        assert system.startswith(task.instruction + "\n\nExample 1:\n") and "Example 4:" not in system
        shown = task.pair_items()[:3]  # pairs keep the order of the pair items
        held_out = {it.id for split in ("val", "test") for it in task.items(split)}
        assert not {it.id for it in shown} & held_out
        held_out_prompts = {it.prompt for split in ("val", "test") for it in task.items(split)}
        for it, (prompt, (positive, _)) in zip(shown, zip(evidence.prompts, evidence.answers)):
            assert it.prompt == prompt and it.prompt not in held_out_prompts
            assert f"{it.prompt}\nAnswer: {positive}" in system
        with pytest.raises(ValueError, match="only 8 pairs"):
            METHODS["prompt"].build(model, evidence, shots=9)


@pytest.mark.slow
def test_prompt_austeer_is_fitted_on_prompted_pairs(smol):
    model, tok = smol
    task = get_task("copa")
    pairs = task.pairs(limit=8)
    plain = gather(model, tok, pairs, ["head"], progress=False)
    prompted = prompted_evidence(model, tok, task, ["prompt", "prompt+austeer"], pairs_limit=8, progress=False)
    assert plain.system is None and prompted.system == task.instruction
    assert prompted.answers == plain.answers and prompted.prompts == plain.prompts  # the same pairs
    assert (prompted.pos["head"] - plain.pos["head"]).abs().max() > 1e-3  # read with the instruction
    config = dict(METHODS["prompt+austeer"].grid[-1])
    steerer = METHODS["prompt+austeer"].build(model, prompted, **config)
    assert steerer.system == task.instruction and steerer.config == config
    assert steerer.gains == au.build(model, prompted, **config).gains
    assert steerer.gains != au.build(model, plain, **config).gains
    with pytest.raises(ValueError, match="instruction"):
        METHODS["prompt+austeer"].build(model, plain, **config)


def test_format_prompt_puts_the_system_in_the_user_turn_without_a_system_role():
    class NoSystem:
        chat_template = "stub"

        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
            if any(m["role"] == "system" for m in messages):
                raise ValueError("System role not supported")
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    assert format_prompt(NoSystem(), "Hi?", "Be kind.") == "<user>Be kind.\n\nHi?<assistant>"
    assert format_prompt(NoSystem(), "Hi?") == "<user>Hi?<assistant>"


def test_mcnemar_on_a_hand_made_case():
    base = [1, 0, 0, 1, 0, 1, 0, 0]
    steered = [1, 1, 1, 0, 1, 1, 0, 1]
    assert discordant(base, steered) == (4, 1)  # items 1, 2, 4, 7 fixed; item 3 broken
    assert mcnemar(4, 1) == pytest.approx(2 * (1 + 5) / 32)  # 0.375
    assert mcnemar(20, 6) == pytest.approx(0.00936, abs=1e-5)
    assert mcnemar(6, 20) == mcnemar(20, 6) and mcnemar(0, 0) == 1.0
    with pytest.raises(ValueError, match="same items"):
        discordant([1, 0], [1])
    comp = Comparison(
        "demo",
        "accuracy",
        {"test_limit": 8},
        {"accuracy": 0.5},
        {"accuracy": 3 / 8, "n_items": 8.0},
        [
            Result("x", {"k": 2}, 2, 0.6, {"accuracy": 6 / 8}, 6 / 8, 0.1, "exact", [], steered),
            Result("p", {"shots": 0}, 0, 0.6, {"accuracy": 3 / 8}, 3 / 8, 0.0, "nothing", [], []),
        ],
        base,
    )
    rows = table(comp).splitlines()
    assert "| fixed/broken | p |" in rows[0]
    assert "| 4/1 | 0.38 |" in rows[3] and "| +1.5 |" in rows[3]  # z of 6/8 against 3/8 on 8 items
    assert "| - | - |" in rows[4]  # no per-item outcomes
    assert summary_table([comp]).splitlines()[2].endswith("| x | +1.5 | 4/1 | 0.38 |")


@given(st.integers(0, 14), st.integers(0, 14))
def test_mcnemar_is_the_two_sided_binomial_tail(fixed, broken):
    n = fixed + broken
    pmf = [Fraction(comb(n, i), 2**n) for i in range(n + 1)]
    # two-sided: every outcome at most as likely as the observed one (the binomial(n, 1/2) is symmetric)
    exact = sum((p for p in pmf if p <= pmf[fixed]), Fraction(0))
    assert mcnemar(fixed, broken) == pytest.approx(float(min(exact, Fraction(1))))
    steered, base = [1] * fixed + [0] * broken + [1], [0] * fixed + [1] * broken + [1]  # and one item both got
    expected = f"{fixed}/{broken} | {mcnemar(fixed, broken):.2g}"
    assert paired(Result("m", {}, 1, 0, {}, 0, 0, "-", [], steered), base) == expected


@pytest.mark.slow
def test_compare_cli_with_the_prompting_baseline(smol, tmp_path):
    from austeer.cli import main
    from austeer.cli.compare import DEFAULT_METHODS

    assert "prompt" in DEFAULT_METHODS.split(",")
    model, tok = smol
    task = get_task("copa")
    out = tmp_path / "cmp"
    args = ["compare", "--task", "copa", "--methods", "austeer,prompt,prompt+austeer", "--budget", "1",
            "--pairs-limit", "8", "--val-limit", "8", "--test-limit", "8", "--out", str(out),
            "--dtype", "float32"]  # fmt: skip
    assert main(args) == 0
    data = json.loads((out / "compare.json").read_text())
    comp = Comparison.from_json(data)
    assert comp.to_json() == {k: v for k, v in data.items() if k not in ("model", "written_by", "protocol")}
    by = {r.method: r for r in comp.results}
    assert list(by) == ["austeer", "prompt", "prompt+austeer"]
    assert by["prompt"].config == {"shots": 0} and by["prompt"].n_steered == 0
    assert by["prompt"].ppl_delta == pytest.approx(0.0, abs=1e-9) and by["prompt"].fold.startswith("nothing to fold")
    assert by["prompt+austeer"].config == dict(METHODS["austeer"].grid[0]) and by["prompt+austeer"].n_steered == 2
    direct = evaluate(model, tok, task, split="test", limit=8, system=task.instruction)
    assert by["prompt"].test_metric == direct["accuracy"]
    assert len(by["prompt"].test_correct) == len(comp.baseline_correct) == 8
    assert comp.best_steering() in (by["austeer"], by["prompt+austeer"])  # a prompt alone steers nothing
    text = (out / "compare.md").read_text()
    assert "| prompt | shots=0 | 0 |" in text and "| prompt+austeer |" in text


@pytest.mark.slow
def test_compare_resumes_after_the_methods_it_has(smol):
    """``done`` results are kept as they are and ``on_result`` sees the comparison after every method."""
    from austeer.evaluation.compare import compare
    from austeer.tasks import get_task

    model, tok = smol
    kw = {"budget": 1, "pairs_limit": 8, "val_limit": 4, "test_limit": 4, "progress": False}
    seen: list[list[str]] = []
    first = compare(
        model,
        tok,
        get_task("copa"),
        ["prompt", "austeer"],
        **kw,
        on_result=lambda c: seen.append([r.method for r in c.results]),
    )
    assert seen == [["prompt"], ["prompt", "austeer"]]
    kept = first.results[0]
    kept.test_metric = -1.0  # a marker: a resumed method is not evaluated again
    seen.clear()
    record = lambda c: seen.append([r.method for r in c.results])  # noqa: E731
    again = compare(model, tok, get_task("copa"), ["austeer", "prompt"], **kw, done=[kept], on_result=record)
    assert again.results[1].test_metric == -1.0
    assert again.results[0].test == first.results[1].test and again.baseline_correct == first.baseline_correct
    assert seen[-1] == ["austeer", "prompt"], "a kept method after the new ones is in what is saved last"


def test_overview_of_the_committed_1_5b_results(tmp_path):
    """The overview merges the 1.5B's COPA runs by budget (not by test score) and draws a readable PNG."""
    import matplotlib.image as mpimg

    from austeer.report.comparison import _change, merged, plot_overview

    folder = DATA.parents[2] / "docs" / "results" / "qwen2.5-coder-1.5b-instruct"
    comps = [Comparison.from_json(json.loads(p.read_text())) for p in sorted(folder.glob("compare_copa*.json"))]
    assert len(comps) >= 3
    (copa,) = merged(comps)
    by = {r.method: r for r in copa.results}
    # austeer chose 8 AUs under the budget of 4 (0.752) and 32 under 16 (0.823): the larger budget is shown
    # (the doctest of merged() shows the rule where the smaller budget scored higher)
    assert (by["austeer"].n_steered, round(by["austeer"].test_metric, 3)) == (32, 0.823)
    assert len(copa.baseline_correct) == 400 and {"prompt", "attribution", "iti", "sadi"} <= set(by)
    change, half = _change(copa, by["austeer"])
    fixed, broken = discordant(copa.baseline_correct, by["austeer"].test_correct)
    assert change == pytest.approx((fixed - broken) / 400)
    assert 0.02 < half < change  # the paired interval excludes zero (McNemar p = 1.3e-4)
    img = mpimg.imread(plot_overview(merged(comps), tmp_path / "overview.png"))
    assert img.shape[0] > 100 and img.std() > 0


def test_overview_leaves_out_a_run_whose_unsteered_model_answered_otherwise():
    """A run of the same task and items whose unsteered outcomes differ (another dtype) does not join the overview:
    its methods would be paired against another model's unsteered answers."""
    from dataclasses import replace

    from austeer.report.comparison import merged

    one = Comparison("copa", "accuracy", {"budget": 4}, {}, {}, [Result("austeer", {}, 8, 0, {}, 0.8, 0, "")])
    one = replace(one, baseline_correct=[1, 0, 1])
    same = replace(one, results=[Result("iti", {}, 2048, 0, {}, 0.8, 0, "")])
    other = replace(one, baseline_correct=[1, 1, 1], results=[Result("au-add", {}, 32, 0, {}, 0.9, 0, "")])
    (copa,) = merged([one, same, other])
    assert [r.method for r in copa.results] == ["austeer", "iti"]
