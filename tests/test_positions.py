"""Gains at the last position only (``positions="last"``) on the real embedded model: what they steer, what
refuses them (fold, export, per-row serving), how a spec keeps them, and the CLI."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

import austeer
from austeer.cli import main
from austeer.core.sites import site_module
from austeer.core.spec import SpecError
from austeer.core.steer import gain_vectors
from austeer.methods import METHODS, CannotFold, gather
from austeer.serving.batched import RowSteer, row_gains
from tests.conftest import DATA


@pytest.fixture(scope="module")
def specs(sentiment_fit):
    return sentiment_fit("head", k=16, alpha=8.0), sentiment_fit("head", k=16, alpha=8.0, positions="last")


def test_same_selection_different_positions(specs):
    every, last = specs
    assert every.positions == "all" and last.positions == "last"
    assert last.units == every.units and last.alpha == every.alpha


def _logits(model, ids, steering=None):
    """Logits of ``ids`` under ``steering`` (a context manager; None: unsteered)."""
    with torch.no_grad(), steering or contextlib.nullcontext():
        return model(ids).logits


def test_last_steers_the_last_position_only(smol, specs):
    model, tok = smol
    every, last = specs
    ids = tok("The weather today is", return_tensors="pt").input_ids
    base = _logits(model, ids)
    only_last = _logits(model, ids, austeer.apply(model, last))
    everywhere = _logits(model, ids, austeer.apply(model, every))
    assert torch.equal(only_last[:, :-1], base[:, :-1]), "positions before the last must be untouched"
    assert (only_last[:, -1] - base[:, -1]).abs().max() > 1e-2, "the last position must be steered"
    assert (only_last[:, -1] - everywhere[:, -1]).abs().max() > 1e-3, "the prompt is read unsteered"
    one = ids[:, :1]  # a one-token pass: its only position is the last, so both rules steer the same
    a, b = _logits(model, one, austeer.apply(model, last)), _logits(model, one, austeer.apply(model, every))
    assert torch.equal(a, b)


def test_generation_steers_each_new_token(smol, specs):
    """With a KV cache each decoding pass is one token, so "last" steers the prompt's last token and every
    generated one: greedy decoding equals recomputing the whole sequence at each step with the gains on
    exactly those positions (and differs from the unsteered text)."""
    model, tok = smol
    every, last = specs
    last, gains = last.with_alpha(30.0), gain_vectors(model, every.with_alpha(30.0))
    ids = tok("Tell me about your day.", return_tensors="pt").input_ids
    start = ids.shape[1] - 1
    with torch.no_grad():
        plain = model.generate(ids, max_new_tokens=8, do_sample=False)
        with austeer.apply(model, last):
            cached = model.generate(ids, max_new_tokens=8, do_sample=False)

        def hook(gain):
            def pre(_module, args):
                x = args[0].clone()
                x[:, start:] = x[:, start:] * gain
                return (x, *args[1:])

            return pre

        handles = [site_module(model, s, layer).register_forward_pre_hook(hook(g)) for (s, layer), g in gains.items()]
        try:
            seq = ids
            for _ in range(8):
                seq = torch.cat([seq, model(seq).logits[:, -1:].argmax(-1)], dim=1)
        finally:
            for h in handles:
                h.remove()
    assert torch.equal(cached, seq)
    assert not torch.equal(cached, plain)


def test_paths_that_steer_every_position_refuse_it(smol, specs, tmp_path):
    model, tok = smol
    _, last = specs
    for call in (
        lambda: austeer.fold(model, last),
        lambda: austeer.export(model, tok, last, tmp_path / "export"),
        lambda: row_gains(model, [RowSteer(last)]),
    ):
        with pytest.raises(SpecError, match="positions: 'last' steers the last position"):
            call()
    assert not (tmp_path / "export").exists()


def test_spec_keeps_positions_and_rejects_unknown(specs, tmp_path):
    _, last = specs
    last.save(tmp_path / "s")
    assert austeer.load(tmp_path / "s").positions == "last"
    assert austeer.load(tmp_path / "s").with_k(4).positions == "last"
    meta = json.loads((tmp_path / "s" / "steer.json").read_text())
    meta["positions"] = "first"
    (tmp_path / "s" / "steer.json").write_text(json.dumps(meta))
    with pytest.raises(SpecError, match=r"steer\.json: positions: expected one of all, last, found 'first'"):
        austeer.load(tmp_path / "s")
    del meta["positions"]  # specs written before the field existed steer every position
    (tmp_path / "s" / "steer.json").write_text(json.dumps(meta))
    assert austeer.load(tmp_path / "s").positions == "all"


def test_method_austeer_last(smol, sentiment_pairs):
    model, tok = smol
    evidence = gather(model, tok, sentiment_pairs[:8], ["head"], progress=False)
    a = METHODS["austeer"].build(model, evidence, site="head", k=8, alpha=4.0)
    b = METHODS["austeer-last"].build(model, evidence, site="head", k=8, alpha=4.0)
    assert b.gains == a.gains and b.positions == "last"
    with pytest.raises(CannotFold, match="last position only"):
        b.fold(model)


@pytest.mark.slow
def test_cli_fit_positions_last(tmp_path, capsys):
    spec_dir = tmp_path / "spec"
    pairs = DATA / "pairs" / "sentiment.jsonl"
    assert (
        main(["fit", "--pairs", str(pairs), "--k", "8", "--out", str(spec_dir), "--limit", "6", "--positions", "last"])
        == 0
    )
    assert json.loads((spec_dir / "steer.json").read_text())["positions"] == "last"
    capsys.readouterr()
    args = ["generate", "--steer", str(spec_dir), "--max-new-tokens", "4", "Hi."]
    assert main(args) == 0
    assert main(args + ["--mode", "fold"]) == 2
    assert "positions: 'last'" in capsys.readouterr().err


def test_sweep_steers_a_last_position_spec_with_hooks(smol, specs):
    from austeer.evaluation.sweep import steering

    model, tok = smol
    ids = tok("The weather today is", return_tensors="pt").input_ids
    base, out = _logits(model, ids), _logits(model, ids, steering(model, specs[1]))
    assert torch.equal(out[:, :-1], base[:, :-1]) and not torch.equal(out[:, -1], base[:, -1])
