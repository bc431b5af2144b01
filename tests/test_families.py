"""Every supported family: a tiny random model built from a config (no download), sites resolve, hook == fold."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import austeer
from austeer.core.collect import last_token_activations
from austeer.core.momentum import Unit
from austeer.core.sites import FAMILIES, UnsupportedModelError, decoder_layers, site_width
from austeer.core.spec import SteerSpec
from tests.conftest import CONFIGS, ByteTok, tiny_model


def test_every_family_has_a_test():
    assert set(CONFIGS) >= set(FAMILIES) - {"gemma"}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sites_resolve_and_hook_equals_fold(name):
    model = tiny_model(name)
    assert model.config.model_type == name
    layers = len(decoder_layers(model))
    acts = last_token_activations(model, ByteTok(), ["hello world", "hi"], ["head", "ffn", "neuron", "residual"])
    for site, a in acts.items():
        assert a.shape == (2, layers, site_width(model, site)), site
        assert a.abs().sum() > 0, site
    units = [
        Unit(s, layer, i, b)
        for s in ("head", "ffn", "neuron")
        for layer in range(layers)
        for i, b in ((1, 1.0), (5, -0.75))
    ]
    spec = SteerSpec(units=units, alpha=1.5)
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    with torch.no_grad():
        base = model(ids).logits
        with austeer.apply(model, spec):
            hooked = model(ids).logits
        with austeer.folded(model, spec):
            folded = model(ids).logits
        after = model(ids).logits
    assert not torch.allclose(hooked, base)
    torch.testing.assert_close(folded, hooked, rtol=1e-5, atol=1e-5)
    assert torch.equal(after, base)
    with pytest.raises(ValueError, match="cannot be folded"):
        austeer.fold(model, SteerSpec(units=[Unit("residual", 0, 1, 1.0)], alpha=1.0))


def test_unsupported_family_names_it():
    model = tf.AutoModelForCausalLM.from_config(tf.BloomConfig(hidden_size=32, n_layer=1, n_head=4, vocab_size=64))
    with pytest.raises(UnsupportedModelError, match="'bloom'.*FAMILIES"):
        site_width(model, "head")
