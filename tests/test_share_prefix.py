"""``score(share_prefix=True)``: the prompt of a pair runs once, both answers from its KV cache.

Checked against the full-text path on the embedded model with real pairs, and on tiny models of every
family (GPT-2 and GPT-NeoX included: positions come from the attention mask, cache from the backbone).
"""

from __future__ import annotations

import pytest
import torch

import austeer
from austeer.core.collect import last_token_activations, shared_prefix_activations
from austeer.core.pairs import pair_texts
from tests.conftest import CONFIGS, ByteTok, tiny_model


def pair_momenta(model, tok, pairs, sites):
    pos, neg = shared_prefix_activations(model, tok, pairs, sites)
    return {s: pos[s] - neg[s] for s in sites}


def _full_momenta(model, tok, pairs, sites):
    out = {}
    for site in sites:
        rows = []
        for pos, neg in pairs:  # one text at a time: no padding at all
            a = last_token_activations(model, tok, [pos], [site])[site][0]
            b = last_token_activations(model, tok, [neg], [site])[site][0]
            rows.append(a - b)
        out[site] = torch.stack(rows)
    return out


@pytest.mark.slow
def test_shared_prefix_equals_full_texts_on_smollm2(smol, sentiment_pairs):
    model, tok = smol
    pairs = [pair_texts(tok, p) for p in sentiment_pairs[:5]]
    got = pair_momenta(model, tok, pairs, ["head", "ffn", "residual"])
    ref = _full_momenta(model, tok, pairs, ["head", "ffn", "residual"])
    for site in ref:
        torch.testing.assert_close(got[site], ref[site], rtol=1e-4, atol=2e-3)


@pytest.mark.slow
def test_score_share_prefix_gives_the_same_selection(smol, sentiment_pairs):
    model, tok = smol
    pairs = sentiment_pairs[:10]
    a = austeer.fit(model, tok, pairs, site="head", k=16, batch_size=4, progress=False, share_prefix=False)
    b = austeer.fit(model, tok, pairs, site="head", k=16, batch_size=4, progress=False, share_prefix=True)
    assert (a.scores["head"].beta() != b.scores["head"].beta()).float().mean() < 1e-3
    assert [(u.layer, u.index) for u in a.units] == [(u.layer, u.index) for u in b.units]


@pytest.mark.slow
def test_share_prefix_is_the_default(smol, sentiment_pairs):
    from austeer.cli import build_parser

    model, tok = smol
    pairs = sentiment_pairs[:6]
    default = austeer.score(model, tok, pairs, ["head"], batch_size=3, progress=False)["head"]
    shared = austeer.score(model, tok, pairs, ["head"], batch_size=3, progress=False, share_prefix=True)["head"]
    assert torch.equal(default.pos, shared.pos) and torch.equal(default.neg, shared.neg)
    assert torch.equal(default.total, shared.total)
    fit_args = ["fit", "--pairs", "p.jsonl", "--out", "o"]
    assert build_parser().parse_args(fit_args).share_prefix is True
    assert build_parser().parse_args([*fit_args, "--no-share-prefix"]).share_prefix is False


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shared_prefix_every_family(name):
    model = tiny_model(name)
    tok = ByteTok()
    pairs = [("the answer is yes", "the answer is no"), ("a longer shared prompt: good", "a longer prompt: bad!")]
    got = pair_momenta(model, tok, pairs, ["head", "ffn", "neuron", "residual"])
    ref = _full_momenta(model, tok, pairs, ["head", "ffn", "neuron", "residual"])
    for site in ref:
        torch.testing.assert_close(got[site], ref[site], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_score_and_gather_read_the_same_batches(smol, sentiment_pairs, monkeypatch):
    """One loop over pairs (``pair_batches``): the evidence of the baselines gives the sign counts ``score``
    gives, in either mode, and each pair's chat template is applied once per pass."""
    import austeer.core.collect
    from austeer.methods.base import gather

    model, tok = smol
    pairs = sentiment_pairs[:7]
    calls = []
    real = austeer.core.collect.pair_texts
    monkeypatch.setattr(austeer.core.collect, "pair_texts", lambda t, p: calls.append(p) or real(t, p))
    for shared in (False, True):
        calls.clear()
        counts = austeer.score(model, tok, pairs, ["head"], batch_size=3, progress=False, share_prefix=shared)["head"]
        assert len(calls) == len(pairs)
        calls.clear()
        ev = gather(model, tok, pairs, ["head"], batch_size=3, progress=False, share_prefix=shared)
        assert len(calls) == len(pairs)
        again = ev.counts("head")
        assert torch.equal(again.pos, counts.pos) and torch.equal(again.neg, counts.neg)
        assert [p.prompt for p in pairs] == ev.prompts  # put back in the pairs' order
