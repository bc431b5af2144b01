"""The core on the real embedded model: selection, hook == fold, unfold, hooks removed, spec I/O, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import austeer
from austeer.core.collect import last_token_activations
from austeer.core.momentum import Unit
from austeer.core.pairs import PairsFormatError, pair_texts, read_pairs
from austeer.core.sites import decoder_layers, site_module
from austeer.core.spec import SpecMismatchError, SteerSpec
from tests.conftest import direct_last_token, hook_count


@pytest.mark.slow
def test_selection_equals_direct_recomputation(smol, sentiment_pairs):
    model, tok = smol
    pairs = sentiment_pairs[:12]
    spec = austeer.fit(model, tok, pairs, site="head", k=24, alpha=5, batch_size=5, progress=False)
    acts = direct_last_token(model, tok, pairs, lambda i: site_module(model, "head", i), "input")
    m = (acts[:, 0] - acts[:, 1]).double().numpy()  # momenta [N, L, D], one text at a time
    n = len(pairs)
    r_pos, r_neg = (m > 0).sum(0) / n, (m < 0).sum(0) / n
    beta = np.where(r_pos >= r_neg, r_pos, -r_neg)
    got = spec.scores["head"].beta().double().numpy()
    # signs of near-zero momenta may flip with float rounding between batched and unbatched runs
    assert (np.abs(got - beta) > 1e-6).mean() < 1e-3
    # documented order: |beta| desc, then sign(beta) * mean/std desc, then layer, index
    z = m.mean(0) / m.std(0) * np.sign(beta)
    L, D = beta.shape
    keys = sorted((-abs(beta[l, d]), -z[l, d], l, d) for l in range(L) for d in range(D))
    direct = [(l, d) for _, _, l, d in keys[:24]]
    assert [(u.layer, u.index) for u in spec.units] == direct
    for u in spec.units:
        assert u.beta == pytest.approx(beta[u.layer, u.index])


@pytest.mark.parametrize(
    ("site", "k", "positions"), [(["head", "ffn"], 8, "all"), ("head", 16, "last"), ("neuron", 4, "all")]
)
def test_the_shared_fit_of_the_tests_is_fit(smol, sentiment_pairs, sentiment_fit, site, k, positions):
    """The session's ``sentiment_fit`` (counts read once, the spec made per call) is what ``austeer.fit`` makes."""
    model, tok = smol
    a = austeer.fit(model, tok, sentiment_pairs[:8], site=site, k=k, alpha=5.0, progress=False, positions=positions)
    b = sentiment_fit(site, k=k, alpha=5.0, positions=positions)
    assert (a.units, a.alpha, a.positions, a.sites, a.n_pairs) == (b.units, b.alpha, b.positions, b.sites, b.n_pairs)


@pytest.mark.slow
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_invariance(smol, sentiment_pairs, side):
    model, tok = smol
    texts = [t for p in sentiment_pairs[:3] for t in pair_texts(tok, p)] + ["Hi"]
    batched = last_token_activations(model, tok, texts, ["head", "ffn", "residual"], padding_side=side)
    for i, text in enumerate(texts):
        single = last_token_activations(model, tok, [text], ["head", "ffn", "residual"])
        for site in single:
            torch.testing.assert_close(batched[site][i], single[site][0], rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_batch_size_does_not_change_result(smol, sentiment_pairs):
    model, tok = smol
    pairs = sentiment_pairs[:10]
    a = austeer.fit(model, tok, pairs, site=["head", "ffn"], k=16, batch_size=1, progress=False)
    b = austeer.fit(model, tok, pairs, site=["head", "ffn"], k=16, batch_size=7, progress=False)
    assert [(u.site, u.layer, u.index) for u in a.units] == [(u.site, u.layer, u.index) for u in b.units]
    for site in ("head", "ffn"):
        assert (a.scores[site].beta() != b.scores[site].beta()).float().mean() < 1e-3


def _spec_with_gains(model, sites=("head", "ffn", "neuron")) -> SteerSpec:
    gen = torch.Generator().manual_seed(0)
    units = []
    for i in range(16):
        site = sites[i % len(sites)]
        width = austeer.core.sites.site_width(model, site)
        layer = int(torch.randint(0, len(decoder_layers(model)), (1,), generator=gen))
        index = int(torch.randint(0, width, (1,), generator=gen))
        units.append(Unit(site, layer, index, float(torch.rand(1, generator=gen) * 2 - 1)))
    return SteerSpec(units=units, alpha=2.0)  # gains 1 + gamma with gamma in [-2, 2]


def test_hook_equals_fold_and_unfold_is_exact(smol):
    model, tok = smol
    spec = _spec_with_gains(model)
    ids = tok(["The weather today is", "I think that the answer is"], return_tensors="pt", padding=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        base = model(**ids).logits
        with austeer.apply(model, spec):
            hooked = model(**ids).logits
        record = austeer.fold(model, spec)
        folded = model(**ids).logits
        austeer.unfold(model, record)
        after = model(**ids).logits
    assert (hooked - base).abs().max() > 1e-2, "the spec must actually change the logits"
    torch.testing.assert_close(folded, hooked, rtol=1e-5, atol=1e-3)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(after, base)


def test_hooks_removed_after_exception(smol):
    model, _ = smol
    spec = _spec_with_gains(model, sites=("head", "ffn", "neuron", "residual"))
    n = hook_count(model)
    with pytest.raises(RuntimeError, match="boom"):
        with austeer.apply(model, spec):
            assert hook_count(model) > n
            raise RuntimeError("boom")
    assert hook_count(model) == n
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with austeer.folded(model, _spec_with_gains(model)):
            raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_residual_is_hook_only(smol):
    model, _ = smol
    spec = SteerSpec(units=[Unit("residual", 3, 7, 1.0)], alpha=1.0)
    with pytest.raises(ValueError, match="cannot be folded.*hook"):
        austeer.fold(model, spec)


def test_spec_round_trip_and_mismatch(smol, sentiment_pairs, tmp_path):
    model, tok = smol
    spec = austeer.fit(model, tok, sentiment_pairs[:6], site="ffn", k=5, alpha=3, progress=False)
    spec.save(tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "steer.json").read_text())
    assert meta["sites"] == ["ffn"] and meta["n_pairs"] == 6 and len(meta["units"]) == 5
    assert [abs(u["beta"]) for u in meta["units"]] == sorted((abs(u["beta"]) for u in meta["units"]), reverse=True)
    back = austeer.load(tmp_path / "s")
    assert back.units == spec.units and back.alpha == 3.0
    assert torch.equal(back.scores["ffn"].pos, spec.scores["ffn"].pos)
    assert back.with_k(9).units == austeer.select(spec.scores, 9)
    other = dict(spec.fingerprint, family="gpt2")
    with pytest.raises(SpecMismatchError, match="'llama'.*'gpt2'"):
        back.check_fits(other)
    widths = dict(spec.fingerprint["widths"], ffn=768)
    with pytest.raises(SpecMismatchError, match="width 576.*768"):
        back.check_fits(dict(spec.fingerprint, widths=widths))


def test_malformed_pairs(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a", "positive": "b", "negative": "c"}\n\n{"prompt": "a", "positive": "b"}\n')
    with pytest.raises(PairsFormatError, match=r"p\.jsonl:3: missing field 'negative'"):
        read_pairs(f)
    f.write_text('{"prompt": "a", "positive": 3, "negative": "c"}\n')
    with pytest.raises(PairsFormatError, match=r":1: field 'positive' must be a string"):
        read_pairs(f)
    f.write_text('{"prompt": "a", "positive": "b", "negative": "c"}\n{oops\n')
    with pytest.raises(PairsFormatError, match=r":2: invalid JSON"):
        read_pairs(f)


def test_export_reloads_with_plain_transformers(smol, tmp_path):
    model, tok = smol
    spec = _spec_with_gains(model)
    ids = tok(["Once upon a time"], return_tensors="pt")
    with torch.no_grad(), austeer.folded(model, spec):
        folded = model(**ids).logits
    austeer.export(model, tok, spec, tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**ids).logits, folded, rtol=1e-5, atol=1e-4)
    assert json.loads((tmp_path / "m" / "austeer_steer.json").read_text())["k"] == 16


def test_spec_refuses_a_model_of_another_shape(smol, sentiment_pairs):
    model, tok = smol
    spec = austeer.fit(model, tok, sentiment_pairs[:4], site="head", k=4, progress=False)
    import transformers as tf

    other = tf.AutoModelForCausalLM.from_config(
        tf.LlamaConfig(
            hidden_size=64, intermediate_size=96, num_hidden_layers=30, num_attention_heads=4, vocab_size=128
        )
    )
    with pytest.raises(SpecMismatchError, match="site 'head' of width 576, the model's is 64"):
        with austeer.apply(other, spec):
            pass
    with pytest.raises(SpecMismatchError, match="spec was fitted on a 'llama' model.*'gpt2'"):
        austeer.fold(
            tf.AutoModelForCausalLM.from_config(tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=128)), spec
        )
