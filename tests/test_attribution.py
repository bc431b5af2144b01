"""The attribution selection rule (``attribution``) on the real embedded model and the shipped sentiment pairs:
its score is the derivative of the pairs' answer margin with respect to each AU's gain (checked against a
finite difference), its gains raise that margin, and it leaves the model as it found it."""

from __future__ import annotations

import json

import pytest
import torch

import austeer
from austeer.cli import main
from austeer.core.pairs import format_prompt
from austeer.core.spec import SpecError
from austeer.core.steer import Gain, apply_gains
from austeer.errors import UserError
from austeer.methods import METHODS, gather
from austeer.methods.attribution import scores
from austeer.run.likelihood import continuation_nll
from tests.conftest import DATA, hook_count


@pytest.fixture(scope="module")
def evidence(smol, sentiment_pairs):
    model, tok = smol
    return gather(model, tok, sentiment_pairs[:4], ["head"], progress=False)


def mean_margin(model, tok, pairs) -> float:
    """``log p(positive) - log p(negative)`` given each prompt, averaged over ``pairs``."""
    total = 0.0
    for p in pairs:
        head = format_prompt(tok, p.prompt, p.system)
        total += (
            continuation_nll(model, tok, [head], [p.negative])[0]
            - continuation_nll(model, tok, [head], [p.positive])[0]
        )
    return total / len(pairs)


@pytest.mark.slow
def test_attribution_is_the_derivative_of_the_margin(smol, evidence):
    model, tok = smol
    a = scores(model, evidence, "head")
    top = divmod(int(a.abs().argmax()), a.shape[1])
    torch.manual_seed(0)
    other = (int(torch.randint(a.shape[0], ())), int(torch.randint(a.shape[1], ())))
    eps = 1e-2
    for layer, index in (top, other):
        with apply_gains(model, [Gain("head", layer, index, eps)]):
            up = mean_margin(model, tok, evidence.pairs)
        with apply_gains(model, [Gain("head", layer, index, -eps)]):
            down = mean_margin(model, tok, evidence.pairs)
        assert (up - down) / (2 * eps) == pytest.approx(float(a[layer, index]), rel=0.05, abs=1e-3)
    assert abs(float(a[top])) > 10 * abs(float(a[other])), "the top AU moves the margin far more than a random one"


@pytest.mark.slow
def test_attribution_gains_raise_the_margin(smol, evidence):
    model, tok = smol
    steerer = METHODS["attribution"].build(model, evidence, site="head", k=8, alpha=0.1)
    assert steerer.n_steered == 8 and max(abs(g.gamma) for g in steerer.gains) == pytest.approx(0.1)
    base = mean_margin(model, tok, evidence.pairs)
    with steerer.hooks(model):
        steered = mean_margin(model, tok, evidence.pairs)
    flipped = [Gain(g.site, g.layer, g.index, -g.gamma) for g in steerer.gains]
    with apply_gains(model, flipped):
        against = mean_margin(model, tok, evidence.pairs)
    assert against < base < steered


def test_attribution_leaves_the_model_as_it_was(smol, sentiment_pairs):
    model, tok = smol
    ids = tok("Hello there", return_tensors="pt").input_ids
    flags = [p.requires_grad for p in model.parameters()]
    before = model(ids).logits.detach()
    ev = gather(model, tok, sentiment_pairs[4:6], ["head"], progress=False)
    scores(model, ev, "head")
    assert [p.requires_grad for p in model.parameters()] == flags
    assert hook_count(model) == 0
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model(ids).logits.detach(), before)
    assert ev.memo("attribution:head", lambda: pytest.fail("computed twice")) is not None


@pytest.mark.slow
def test_fit_selection_attribution_is_the_methods_selection(smol, evidence, tmp_path):
    model, tok = smol
    spec = austeer.fit(  # the pairs run whole, as the evidence read them
        model, tok, evidence.pairs, site="head", k=8, alpha=1.0, selection="attribution", progress=False,
        share_prefix=False,
    )  # fmt: skip
    method = METHODS["attribution"].build(model, evidence, site="head", k=8, alpha=1.0)
    assert spec.selection == "attribution" and spec.k == 8
    assert [(u.layer, u.index) for u in spec.units] == [(g.layer, g.index) for g in method.gains]
    assert [g for _, g in spec.gains()] == pytest.approx([g.gamma for g in method.gains])
    paper = austeer.fit(model, tok, evidence.pairs, site="head", k=8, alpha=1.0, progress=False)
    assert paper.selection == "sign" and {(u.layer, u.index) for u in paper.units} != {
        (u.layer, u.index) for u in spec.units
    }, "another rule, other AUs"
    spec.save(tmp_path / "s")
    assert austeer.load(tmp_path / "s").selection == "attribution"
    with pytest.raises(ValueError, match="attribution specs keep none"):
        spec.with_k(4)
    meta = json.loads((tmp_path / "s" / "steer.json").read_text())
    meta["selection"] = "gradient"
    (tmp_path / "s" / "steer.json").write_text(json.dumps(meta))
    with pytest.raises(SpecError, match=r"steer\.json: selection: expected one of sign, attribution, found 'gradient'"):
        austeer.load(tmp_path / "s")
    del meta["selection"]  # specs written before the field existed were chosen by sign consistency
    (tmp_path / "s" / "steer.json").write_text(json.dumps(meta))
    assert austeer.load(tmp_path / "s").selection == "sign"


@pytest.mark.slow
def test_cli_fit_selection_attribution(tmp_path):
    out = tmp_path / "spec"
    pairs = DATA / "pairs" / "sentiment.jsonl"
    args = ["fit", "--pairs", str(pairs), "--k", "4", "--alpha", "1", "--out", str(out), "--limit", "4"]
    assert main([*args, "--selection", "attribution"]) == 0
    meta = json.loads((out / "steer.json").read_text())
    assert meta["selection"] == "attribution" and len(meta["units"]) == 4
    assert max(abs(u["beta"]) for u in meta["units"]) == 1.0


@pytest.mark.slow
def test_attribution_with_the_prompt_run_once_equals_the_whole_texts(smol, sentiment_pairs):
    """BoolQ's pairs share a passage of a hundred tokens and more (the case the shared prompt is for); the
    sentiment pairs' answers run several tokens past the prompt. The derivative reaches the prompt's positions
    through the KV cache: the same scores, the same top AUs."""
    from austeer.core.attribution import margin_attribution, top_attributed
    from austeer.tasks import get_task

    model, tok = smol
    boolq = get_task("boolq").pairs(model, tok, limit=6)
    for pairs in (boolq, sentiment_pairs[:6]):
        shared = margin_attribution(model, tok, pairs, "head", progress=False)
        whole = margin_attribution(model, tok, pairs, "head", progress=False, share_prefix=False)
        assert shared.abs().max() > 0
        torch.testing.assert_close(shared, whole, rtol=1e-3, atol=1e-4 * float(whole.abs().max()))
        top = [top_attributed({"head": a}, 16) for a in (shared, whole)]
        assert [(u.layer, u.index) for u in top[0]] == [(u.layer, u.index) for u in top[1]]
    with pytest.warns(UserWarning, match="truncated on the left"):  # both ways cut the texts alike
        cut = [
            margin_attribution(model, tok, boolq, "head", progress=False, share_prefix=s, max_length=24)
            for s in (True, False)
        ]
    torch.testing.assert_close(cut[0], cut[1], rtol=1e-3, atol=1e-4 * float(cut[1].abs().max()))
    assert not torch.allclose(cut[0], margin_attribution(model, tok, boolq, "head", progress=False), rtol=0.1)


@pytest.mark.slow
def test_attribution_reads_no_activations(smol, evidence):
    """The comparison reads no site for it (its build runs the pairs itself): the same steer from the pairs
    alone as from the evidence that read them."""
    from austeer.evaluation.compare import sites_for

    model, tok = smol
    assert sites_for(["attribution"]) == [] and sites_for(["attribution", "iti"]) == sites_for(["iti"])
    bare = gather(model, tok, evidence.pairs, [], progress=False)
    assert bare.pos == {}
    a = METHODS["attribution"].build(model, bare, site="head", k=8, alpha=1.0)
    b = METHODS["attribution"].build(model, evidence, site="head", k=8, alpha=1.0)
    assert [(g.layer, g.index) for g in a.gains] == [(g.layer, g.index) for g in b.gains]


@pytest.mark.slow
def test_additive_attribution_is_the_derivative_of_the_margin(smol, evidence):
    """``probe="add"``: the derivative with respect to a constant added to the AU at every position (what au-add
    steers with), checked against a central difference; it is not the gain's derivative."""
    from austeer.methods.base import AddSteerer

    model, tok = smol
    a = scores(model, evidence, "head", probe="add")
    assert not torch.allclose(a, scores(model, evidence, "head"), rtol=0.5)
    top = divmod(int(a.abs().argmax()), a.shape[1])
    torch.manual_seed(1)
    other = (int(torch.randint(a.shape[0], ())), int(torch.randint(a.shape[1], ())))
    eps = 1e-2
    for layer, index in (top, other):
        margins = []
        for sign in (1, -1):
            v = torch.zeros(a.shape[1])
            v[index] = sign * eps
            with AddSteerer("probe", "head", {layer: v}, {}).hooks(model):
                margins.append(mean_margin(model, tok, evidence.pairs))
        assert (margins[0] - margins[1]) / (2 * eps) == pytest.approx(float(a[layer, index]), rel=0.05, abs=1e-3)
    assert abs(float(a[top])) > 10 * abs(float(a[other]))
    with pytest.raises(UserError, match="probe must be one of gain, add, got .bias."):
        scores(model, evidence, "head", probe="bias")


@pytest.mark.slow
def test_au_add_attr_shifts_the_most_attributed_aus_and_raises_the_margin(smol, evidence):
    """au-add-attr: the top-k AUs by |additive attribution x std|, each shifted by alpha * beta * std (signed to
    raise the margin); the shift raises the pairs' margin, its negation lowers it, the bias fold equals the
    hooks and leaves no hook behind."""
    from austeer.core.attribution import top_attributed

    model, tok = smol
    steerer = METHODS["au-add-attr"].build(model, evidence, site="head", k=8, alpha=0.5)
    pos, neg = evidence.pos["head"].double(), evidence.neg["head"].double()
    std = torch.cat([pos, neg]).std(0).float()
    units = top_attributed({"head": scores(model, evidence, "head", probe="add") * std}, 8)
    assert steerer.n_steered == 8 and steerer.config == {"site": "head", "k": 8, "alpha": 0.5}
    for u in units:
        assert steerer.vectors[u.layer][u.index].item() == pytest.approx(0.5 * u.beta * float(std[u.layer, u.index]))
    nonzero = {(layer, int(i)) for layer, v in steerer.vectors.items() for i in torch.nonzero(v).flatten()}
    assert nonzero == {(u.layer, u.index) for u in units}
    base = mean_margin(model, tok, evidence.pairs)
    with steerer.hooks(model):
        steered = mean_margin(model, tok, evidence.pairs)
    with steerer.fold(model):
        folded = mean_margin(model, tok, evidence.pairs)
    against = type(steerer)("neg", "head", {k: -v for k, v in steerer.vectors.items()}, {})
    with against.hooks(model):
        lowered = mean_margin(model, tok, evidence.pairs)
    assert lowered < base < steered and folded == pytest.approx(steered, abs=1e-3)
    assert hook_count(model) == 0
