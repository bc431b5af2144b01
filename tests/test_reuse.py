"""Layer reuse (austeer.core.reuse): replayed layers give bit for bit what a full forward pass gives, on the real
embedded model and every supported family, and the work it saves is real (layer calls counted)."""

from __future__ import annotations

import warnings

import pytest
import torch

from austeer.core.momentum import Unit
from austeer.core.pairs import format_prompt
from austeer.core.reuse import LayerCache
from austeer.core.spec import SteerSpec
from austeer.core.steer import Gain, apply, fold_gains, folded, unfold
from austeer.evaluation.compare import compare
from austeer.evaluation.evaluate import Unsteered
from austeer.run.generate import generate
from austeer.run.likelihood import next_token_logits
from austeer.tasks import get_task

from .conftest import CONFIGS, tiny_model

HIGH = SteerSpec(units=[Unit("head", 22, 5, 1.0), Unit("ffn", 25, 7, -1.0)], alpha=8.0)
LOW = SteerSpec(units=[Unit("head", 3, 5, 1.0)], alpha=8.0)


@pytest.fixture(scope="module")
def texts(smol):
    _, tok = smol
    return [format_prompt(tok, it.prompt) for it in get_task("copa").items("val", 12)]


@pytest.mark.slow
def test_replay_is_exact_under_folds_and_hooks(smol, texts) -> None:
    model, tok = smol
    cache = LayerCache(model)
    with cache.reuse():
        plain = next_token_logits(model, tok, texts, 4)
    assert cache.stats["skipped"] == 0 and cache.stats["bytes"] > 0
    assert torch.equal(plain, next_token_logits(model, tok, texts, 4))
    for steering in (lambda: folded(model, HIGH), lambda: apply(model, HIGH), lambda: folded(model, LOW)):
        with steering():
            full = next_token_logits(model, tok, texts, 4)
            with cache.reuse():
                reused = next_token_logits(model, tok, texts, 4)
        assert not torch.equal(full, plain)  # the steering does something
        assert torch.equal(reused, full)
    # HIGH (first steered layer 22) replayed layers 0..19 of 3 batches, at least once each for fold and hooks
    assert cache.stats["skipped"] >= 2 * 3 * 20
    # a different batch composition is a different input: computed, and still exact
    with folded(model, HIGH):
        full = next_token_logits(model, tok, texts, 5)
        with cache.reuse():
            assert torch.equal(next_token_logits(model, tok, texts, 5), full)


@pytest.mark.slow
def test_changes_made_inside_the_block_are_seen(smol, texts) -> None:
    """A hook added after entering is found at the next call; the weights are checked on entering."""
    model, tok = smol
    cache = LayerCache(model)
    with cache.reuse():
        next_token_logits(model, tok, texts, 4)
        with apply(model, LOW):
            reused = next_token_logits(model, tok, texts, 4)
    with apply(model, LOW):
        assert torch.equal(reused, next_token_logits(model, tok, texts, 4))
    record = fold_gains(model, [Gain("ffn", 2, 3, 3.0)])
    try:
        assert cache.first_changed() == 2
    finally:
        unfold(model, record)
    assert cache.first_changed() == len(cache.layers)  # unfolded bit for bit: unchanged again


@pytest.mark.slow
def test_generation_and_cached_passes_run_in_full(smol) -> None:
    model, tok = smol
    cache = LayerCache(model)
    expected = generate(model, tok, ["Say hello."], max_new_tokens=6)
    with cache.reuse():
        got = generate(model, tok, ["Say hello."], max_new_tokens=6)
    assert got == expected
    assert cache.stats["skipped"] == 0 and cache.stats["bytes"] == 0


@pytest.mark.slow
def test_memory_bound_is_kept_with_one_warning(smol, texts) -> None:
    model, tok = smol
    cache = LayerCache(model, max_bytes=2_000_000)
    with pytest.warns(UserWarning, match="layer reuse") as record, cache.reuse():
        next_token_logits(model, tok, texts, 4)
    assert len(record) == 1 and 0 < cache.stats["bytes"] <= 2_000_000


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_every_family_replays_exactly(family: str) -> None:
    model = tiny_model(family)
    ids = torch.randint(1, 120, (3, 9))
    kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False}
    cache = LayerCache(model, every=1)
    with torch.inference_mode():
        with cache.reuse():
            model(**kw)
        with folded(model, SteerSpec(units=[Unit("ffn", 1, 3, 1.0)], alpha=4.0)):
            full = model(**kw).logits
            with cache.reuse():
                reused = model(**kw).logits
    assert cache.stats["skipped"] == 1  # layer 0 of 2
    assert torch.equal(reused, full)


@pytest.mark.slow
def test_compare_gives_the_same_results_with_and_without_reuse(smol) -> None:
    model, tok = smol
    kw = {"methods": ["austeer", "caa"], "budget": 2, "pairs_limit": 8, "val_limit": 4, "test_limit": 4}
    reused = LayerCache(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = compare(model, tok, get_task("copa"), progress=False, unsteered=Unsteered(model, tok, reused), **kw)
        none = Unsteered(model, tok, LayerCache(model, max_bytes=0))
        b = compare(model, tok, get_task("copa"), progress=False, unsteered=none, **kw)
    assert reused.stats["skipped"] > 0

    def seen(c):  # everything but the timings
        return [(r.method, r.config, r.val, r.test, r.test_correct, [t.metrics for t in r.trials]) for r in c.results]

    assert seen(a) == seen(b)
    assert a.baseline_test == b.baseline_test
