"""The capability panel (austeer.evaluation.capability) on the embedded model: its counts are the evaluations' own,
compare measures and bounds it, eval --steer reports it, and bad flags are one line before any model loads."""

from __future__ import annotations

import contextlib
import json

import pytest

from austeer.cli import main
from austeer.core.momentum import Unit
from austeer.core.spec import SteerSpec
from austeer.core.steer import apply as steering
from austeer.errors import UserError
from austeer.evaluation.capability import Panel
from austeer.evaluation.evaluate import evaluate
from austeer.tasks import get_task

N = 6


def _strong_spec(model) -> SteerSpec:
    """Every head AU of layers 10-12 at a large gain: a steer that changes many answers."""
    from austeer.core.spec import fingerprint

    width = 576
    units = [Unit("head", layer, i, 1.0) for layer in (10, 11, 12) for i in range(width)]
    return SteerSpec(units, alpha=-0.9, fingerprint=fingerprint(model))


@pytest.mark.slow
def test_panel_counts_are_the_evaluations(smol):
    """Per task, the panel's unsteered and steered accuracies equal austeer.evaluation.evaluate on the same val items,
    and fixed - broken over the pooled items is exactly the accuracy change."""
    model, tok = smol
    panel = Panel(model, tok, exclude=("copa",), n=N, batch_size=4)
    assert panel.names == ["boolq", "winogrande"]
    same = panel.measure(contextlib.nullcontext)
    assert (same.fixed, same.broken, same.drop, same.p) == (0, 0, 0.0, 1.0)
    spec = _strong_spec(model)
    r = panel.measure(lambda: steering(model, spec))
    assert r.n == 2 * N and r.fixed + r.broken > 0  # this steer changes answers
    for name in panel.names:
        task = get_task(name)
        plain = evaluate(model, tok, task, "val", N, batch_size=4, ppl=1.0)["accuracy"]
        with steering(model, spec):
            steered_acc = evaluate(model, tok, task, "val", N, batch_size=4, ppl=1.0)["accuracy"]
        t = r.tasks[name]
        assert t["unsteered"] == pytest.approx(plain) and t["steered"] == pytest.approx(steered_acc)
        assert t["steered"] - t["unsteered"] == pytest.approx((t["fixed"] - t["broken"]) / N)
    assert r.drop == pytest.approx((r.broken - r.fixed) / r.n)
    with pytest.raises(ValueError, match="empty without"):
        Panel(model, tok, exclude=("copa", "boolq", "winogrande"))


@pytest.mark.slow
def test_compare_measures_and_bounds_the_capability_cost(smol, tmp_path):
    """compare records the panel under its choice; measure_capability, given the same comparison without it (a
    comparison committed before compare measured it), rebuilds the choice from the same pairs and finds the same."""
    from austeer.core.pairs import pairs_sha256
    from austeer.evaluation.compare import Comparison, measure_capability

    out = tmp_path / "cmp"
    argv = ["compare", "--task", "copa", "--methods", "austeer", "--budget", "2", "--pairs-limit", "8",
            "--val-limit", "4", "--test-limit", "4", "--capability", "4", "--max-capability-drop", "0",
            "--dtype", "float32", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    data = json.loads((out / "compare.json").read_text())
    [result] = data["results"]
    cap = result["capability"]
    assert set(cap["tasks"]) == {"boolq", "winogrande"} and cap["n"] == 8
    trial_configs = [t["config"] for t in result["trials"]]
    assert result["config"] in trial_configs
    assert "capability change" in (out / "compare.md").read_text()
    model, tok = smol
    earlier = Comparison.from_json({**data, "results": [{**result, "capability": None}]})
    again = measure_capability(model, tok, earlier, Panel(model, tok, exclude=("copa",), n=4), progress=False)
    assert again.results[0].capability == cap
    assert data["settings"]["pairs_limit"] == 8  # the prompts asked for, beside the pairs kept
    assert data["settings"]["pairs_sha256"] == pairs_sha256(get_task("copa").pairs(limit=8))  # and which they are
    unmeasured = {**data, "results": [{**result, "capability": None}]}
    miscounted = Comparison.from_json({**unmeasured, "settings": {**data["settings"], "pairs": 9}})
    with pytest.raises(UserError, match="the comparison read 9 pairs, the first 8 pair prompts give 8"):
        measure_capability(model, tok, miscounted, Panel(model, tok, exclude=("copa",), n=4), progress=False)
    other = Comparison.from_json({**unmeasured, "settings": {**data["settings"], "pairs_sha256": "0" * 64}})
    with pytest.raises(UserError, match="the first 8 pair prompts give other pairs than the comparison read"):
        measure_capability(model, tok, other, Panel(model, tok, exclude=("copa",), n=4), progress=False)
    older = {k: v for k, v in data["settings"].items() if k not in ("pairs_limit", "pairs_sha256")}  # before both
    older_comparison = Comparison.from_json({**unmeasured, "settings": older})  # rebuilt from the pairs it read
    rebuilt = measure_capability(model, tok, older_comparison, Panel(model, tok, exclude=("copa",), n=4))
    assert rebuilt.results[0].capability == cap


@pytest.mark.slow
def test_eval_reports_the_capability_cost(smol, tmp_path, capsys):
    from austeer.core.spec import fingerprint

    model, _ = smol
    spec_dir = tmp_path / "spec"
    SteerSpec([Unit("head", 12, i, 1.0) for i in range(64)], 8.0, fingerprint=fingerprint(model)).save(spec_dir)
    out = tmp_path / "e.json"
    argv = ["eval", "--task", "copa", "--steer", str(spec_dir), "--limit", "2", "--capability", "3",
            "--dtype", "float32", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    cap = json.loads(out.read_text())["capability"]
    assert cap["n"] == 6 and set(cap["tasks"]) == {"boolq", "winogrande"}
    assert "capability panel (6 items of boolq, winogrande)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["compare", "--task", "copa", "--max-capability-drop", "0.1"],  # a bound with no panel
        ["eval", "--task", "copa", "--capability", "3"],  # a cost with no steer
        ["tune", "--pairs", "pairs.jsonl", "--max-capability-drop", "0.1"],
    ],
)
def test_capability_flags_without_what_they_need(tmp_path, capsys, monkeypatch, argv):
    import austeer.models.loading

    def no_load(*_a, **_k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(austeer.models.loading, "load_model", no_load)
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("austeer: error: ") and err.count("\n") == 1 and "capability" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("argv", "bound"),
    [
        (["compare", "--task", "copa", "--out", "o", "--capability", "4"], "default"),
        (["sweep", "--task", "copa", "--out", "o", "--capability", "4"], "default"),
        (["tune", "--pairs", "p.jsonl", "--out", "o", "--capability", "4"], "default"),
        (["compare", "--task", "copa", "--out", "o", "--capability", "4", "--max-capability-drop", "0.1"], 0.1),
        (["eval", "--task", "copa", "--steer", "s", "--capability", "4"], None),  # eval measures, it chooses nothing
    ],
)
def test_the_searches_bound_the_capability_drop_by_default(argv, bound):
    """With ``--capability N`` alone, compare, sweep and tune keep the measured default bound; eval only reports."""
    from austeer.cli import build_parser
    from austeer.cli.common import capability_panel
    from austeer.evaluation.capability import DEFAULT_MAX_DROP

    panel = capability_panel(build_parser().parse_args(argv), None, None, "copa")
    assert panel.max_drop == (DEFAULT_MAX_DROP if bound == "default" else bound)
