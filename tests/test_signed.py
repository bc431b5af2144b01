"""Sign-aware gains (``austeer-signed``) on the real embedded model: the same AUs as AUSteer, each gain turned so
that it moves the AU's typical activation towards the positive answers; exact folding; the dose-response of a
variant."""

from __future__ import annotations

import pytest
import torch

from austeer.evaluation.compare import dose_response
from austeer.methods import METHODS, gather
from austeer.methods.au import top_units
from austeer.tasks import get_task


@pytest.fixture(scope="module")
def evidence(smol, sentiment_pairs):
    model, tok = smol
    return gather(model, tok, sentiment_pairs[:12], ["head"], progress=False)


def test_signed_gains_move_towards_the_positive_side(smol, evidence):
    model, _ = smol
    paper = METHODS["austeer"].build(model, evidence, site="head", k=32, alpha=4.0)
    signed = METHODS["austeer-signed"].build(model, evidence, site="head", k=32, alpha=4.0)
    level, units = evidence.level("head"), top_units(evidence, "head", 32)
    assert [(g.layer, g.index) for g in signed.gains] == [(u.layer, u.index) for u in units]
    flipped = 0
    for p, s, u in zip(paper.gains, signed.gains, units, strict=True):
        x = float(level[s.layer, s.index])
        assert s.gamma == (p.gamma if x >= 0 else -p.gamma)
        flipped += x < 0
        # the change gamma * x of the typical activation has the sign of beta (towards the positive side);
        # the paper's gain has it only where x > 0
        assert (s.gamma * x > 0) == (u.beta > 0) or x == 0
    assert 0 < flipped < len(signed.gains), "on real activations some selected AUs sit below zero, some above"


def test_signed_folds_exactly(smol, evidence):
    model, tok = smol
    steerer = METHODS["austeer-signed"].build(model, evidence, site="head", k=16, alpha=4.0)
    ids = tok(["The weather today is", "I think that the answer is"], return_tensors="pt", padding=True)
    with torch.no_grad():
        with steerer.hooks(model):
            hooked = model(**ids).logits
        with steerer.fold(model):
            folded = model(**ids).logits
    torch.testing.assert_close(folded, hooked, rtol=1e-5, atol=1e-3)


@pytest.mark.slow
def test_dose_response_of_a_variant(smol, evidence):
    model, tok = smol
    task = get_task("copa")
    kw = {"limit": 4, "progress": False, "method": "austeer-signed"}
    rows = dose_response(model, tok, task, evidence, ["head"], [0, 8], 4.0, **kw)
    assert [(r.k, r.curve) for r in rows] == [(0, "head (austeer-signed)"), (8, "head (austeer-signed)")]


@pytest.mark.slow
def test_cli_compare_runs_the_variants(tmp_path, capsys):
    import json

    from austeer.cli import main

    out = tmp_path / "cmp"
    args = ["compare", "--task", "copa", "--methods", "austeer-last,austeer-signed", "--budget", "1"]
    args += ["--pairs-limit", "6", "--val-limit", "4", "--test-limit", "4", "--out", str(out), "--dtype", "float32"]
    args += ["--doses", "0,2", "--dose-sites", "head", "--dose-method", "austeer-last", "--share-prefix"]
    assert main(args) == 0
    assert [r["method"] for r in json.loads((out / "compare.json").read_text())["results"]] == [
        "austeer-last",
        "austeer-signed",
    ]
    assert {r["method"] for r in json.loads((out / "dose.json").read_text())["rows"]} == {"austeer-last"}
    assert "dose-response head (austeer-last)" in capsys.readouterr().out
