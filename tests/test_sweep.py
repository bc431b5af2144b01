"""A sweep on a tiny grid, end to end on the real embedded model: files, fold/unfold exactness, resuming."""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

import austeer.evaluation.sweep as sweep_mod
from austeer.cli import main
from austeer.core.spec import load
from austeer.evaluation.sweep import CSV_COLUMNS, sweep
from austeer.tasks import get_task

GRID = {"sites": ("head",), "ks": (2, 6), "alphas": (1.0, 8.0)}
LIMITS = {"pairs_limit": 8, "val_limit": 4, "test_limit": 4}


@pytest.fixture(scope="module")
def swept(smol, tmp_path_factory):
    model, tok = smol
    out = tmp_path_factory.mktemp("sweep") / "copa"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = sweep(model, tok, get_task("copa"), out, model_id="smol", progress=False, **GRID, **LIMITS)
    after = model.state_dict()
    unchanged = all(torch.equal(before[k], after[k]) for k in before)
    return out, state, unchanged


@pytest.mark.slow
def test_sweep_writes_table_best_spec_and_test(swept) -> None:
    out, state, unchanged = swept
    assert unchanged, "folding during the sweep must leave the weights exactly as they were"
    assert state["task"] == "copa" and state["metric"] == "accuracy" and state["model"] == "smol"
    assert len(state["rows"]) == 4
    assert {(r["site"], r["k"], r["alpha"]) for r in state["rows"]} == {
        ("head", k, a) for k in GRID["ks"] for a in GRID["alphas"]
    }
    for r in state["rows"]:
        assert r["n_steered"] == r["k"]
        assert r["metric"] == r["metrics"]["accuracy"]
        assert r["ppl_delta"] == pytest.approx(r["metrics"]["ppl"] - state["baseline"]["ppl"])
    on_disk = json.loads((out / "sweep.json").read_text())
    assert on_disk["rows"] == state["rows"] and on_disk["best"] == state["best"]
    with (out / "sweep.csv").open() as fh:
        table = list(csv.reader(fh))
    assert tuple(table[0]) == CSV_COLUMNS and len(table) == 5
    best = load(out / "best")
    assert (best.k, best.alpha) == (state["best"]["k"], state["best"]["alpha"])
    assert best.info["sweep"] == state["best"]
    scores = load(out / "scores" / "head")
    assert scores.k == max(GRID["ks"]) and scores.n_pairs == LIMITS["pairs_limit"]
    assert best.units == scores.with_k(best.k).units  # the best spec is a re-selection of the cached scores
    test = state["test"]
    assert test["unsteered"]["n_items"] == test["steered"]["n_items"] == LIMITS["test_limit"]
    assert test["k"] == best.k


@pytest.mark.slow
def test_sweep_resumes_where_it_stopped(swept, smol, monkeypatch) -> None:
    model, tok = smol
    out, state, _ = swept
    calls: list[str] = []
    real = sweep_mod.evaluate

    def counting(*args, **kwargs):
        calls.append(args[3] if len(args) > 3 else kwargs.get("split", "val"))
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_mod, "evaluate", counting)
    # a finished sweep does nothing again
    again = sweep(model, tok, get_task("copa"), out, model_id="smol", progress=False, **GRID, **LIMITS)
    assert calls == [] and again["rows"] == state["rows"]
    # cut it back to two finished rows and no test, as if it had been interrupted
    cut = json.loads((out / "sweep.json").read_text())
    cut["rows"] = cut["rows"][:2]
    del cut["test"]
    cut["settings"]["pair_limit"] = cut["settings"].pop("pairs_limit")  # written before the setting's rename
    (out / "sweep.json").write_text(json.dumps(cut))
    resumed = sweep(model, tok, get_task("copa"), out, model_id="smol", progress=False, **GRID, **LIMITS)
    # two missing rows, then the steered test (the unsteered one goes through austeer.evaluation.evaluate.Unsteered,
    # with the baseline's perplexity); no baseline, no rescoring
    assert calls == ["val", "val", "test"]
    assert resumed["rows"][:2] == state["rows"][:2]
    # same model, same items, same folded weights: the recomputed rows are identical
    assert [r["metric"] for r in resumed["rows"]] == [r["metric"] for r in state["rows"]]


@pytest.mark.slow
def test_sweep_chooses_on_val_and_reads_test_only_for_its_choice(smol, tmp_path, monkeypatch) -> None:
    """Choice on validation never reads a test item: every configuration of the grid is scored on val items
    before the best one is chosen; test items are read only after the choice, by the unsteered model and by the
    chosen configuration."""
    model, tok = smol
    task = get_task("copa")
    reads: list[tuple[str, Any, bool]] = []  # (split, configuration steering the model or None, after the choice)
    active: list[tuple[int, float]] = []
    chosen: list[bool] = []
    real_items, real_steering, real_best = task.items, sweep_mod.steering, sweep_mod.best_row

    def items(split: str, limit: int | None = None) -> Any:
        reads.append((split, active[-1] if active else None, bool(chosen)))
        return real_items(split, limit)

    @contextmanager
    def steering(m: Any, spec: Any) -> Iterator[None]:
        active.append((spec.k, spec.alpha))
        try:
            with real_steering(m, spec):
                yield
        finally:
            active.pop()

    def best_row(rows: Any) -> Any:
        chosen.append(True)
        return real_best(rows)

    monkeypatch.setattr(task, "items", items)
    monkeypatch.setattr(sweep_mod, "steering", steering)
    monkeypatch.setattr(sweep_mod, "best_row", best_row)
    grid = {"sites": ("head",), "ks": (2,), "alphas": (1.0, 8.0)}
    state = sweep(model, tok, task, tmp_path / "sw", model_id="smol", progress=False, **grid, **LIMITS)
    before = {(split, config) for split, config, after in reads if not after}
    after = {(split, config) for split, config, after in reads if after}
    assert before == {("val", None), ("val", (2, 1.0)), ("val", (2, 8.0))}
    assert after == {("test", None), ("test", (state["best"]["k"], state["best"]["alpha"]))}


@pytest.mark.slow
def test_sweep_measures_its_choice_on_the_capability_panel_and_bounds_it(swept, smol, tmp_path) -> None:
    """The panel's record of the choice is the panel answered with the best spec, and only it is answered; under
    a bound no row keeps (the panel must gain everything) every row is answered and one that drops least is
    chosen."""
    import shutil

    from austeer.evaluation.capability import Panel
    from austeer.evaluation.sweep import steering

    model, tok = smol
    src, state, _ = swept
    out = tmp_path / "copa"
    shutil.copytree(src, out)
    panel = Panel(model, tok, exclude=("copa",), n=3, batch_size=4)
    kw = {"model_id": "smol", "progress": False, "run_test": False, "panel": panel, **GRID, **LIMITS}
    again = sweep(model, tok, get_task("copa"), out, **kw)
    assert again["best"] == state["best"] and again["rows"] == state["rows"]  # only the panel was measured
    with steering(model, load(out / "best")):
        expected = panel.measure(contextlib.nullcontext)
    assert again["capability"]["chosen"] == json.loads(json.dumps(expected.to_json()))
    assert len(again["capability"]["rows"]) == 1  # without a bound only the choice is answered
    panel.max_drop = -1.0  # the same panel (its unsteered answers kept), now a bound
    bounded = sweep(model, tok, get_task("copa"), out, **kw)
    measured = bounded["capability"]["rows"]
    assert len(measured) == len(state["rows"])
    least = min(measured.values(), key=lambda r: r["drop"])
    assert bounded["capability"]["chosen"]["drop"] == least["drop"]
    b = bounded["best"]
    assert measured[json.dumps([b["site"], b["k"], b["alpha"]])]["drop"] == least["drop"]
    assert (load(out / "best").k, load(out / "best").alpha) == (b["k"], b["alpha"])


@pytest.mark.slow
def test_sweep_refuses_other_settings_in_the_same_dir(swept, smol) -> None:
    model, tok = smol
    out, _, _ = swept
    with pytest.raises(ValueError, match="different settings"):
        sweep(model, tok, get_task("copa"), out, model_id="smol", progress=False, **GRID, pairs_limit=8, val_limit=5)


@pytest.mark.slow
def test_cli_eval_with_the_best_spec(swept, tmp_path, capsys) -> None:
    out, _, _ = swept
    result = tmp_path / "eval.json"
    rc = main(["eval", "--task", "copa", "--steer", str(out / "best"), "--model", "embedded:smollm2-135m-instruct",
               "--split", "test", "--limit", "4", "--out", str(result)])  # fmt: skip
    assert rc == 0
    saved = json.loads(result.read_text())
    assert saved["n_steered"] == load(out / "best").k and saved["metrics"]["n_items"] == 4
    assert "accuracy" in capsys.readouterr().out
    assert main(["eval", "--task", "copa", "--eval", "x.jsonl"]) == 2  # --eval belongs to --task custom
