"""Every baseline against a direct recomputation of its formula on the real embedded model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import austeer
from austeer.core.sites import decoder_layers, head_dim, site_module, site_width
from austeer.core.steer import gains_vectors
from austeer.methods import METHODS, block, caa, calibration, fixed, iti, random_units, sadi
from austeer.methods.base import AddSteerer, CannotFold, gather
from tests.conftest import direct_last_token, hook_count


@pytest.fixture(scope="module")
def evidence(smol, sentiment_pairs):
    model, tok = smol
    return gather(model, tok, sentiment_pairs[:16], ["head", "residual"], batch_size=8, progress=False)


def _ids(tok):
    return tok(["I think that the weather today is", "Tell me a story"], return_tensors="pt", padding=True)


def _logits(model, enc):
    with torch.no_grad():
        return model(**enc).logits


def _three_ways(model, tok, steerer):
    """Logits of two prompts unsteered, with ``steerer``'s hooks and with its fold."""
    enc = _ids(tok)
    base = _logits(model, enc)
    with steerer.hooks(model):
        hooked = _logits(model, enc)
    with steerer.fold(model):
        folded = _logits(model, enc)
    return base, hooked, folded


@pytest.mark.slow
def test_caa_vector_is_mean_difference_and_fold_is_down_proj_bias(smol, sentiment_pairs, evidence):
    model, tok = smol
    pairs = sentiment_pairs[:16]
    steerer = caa.build(model, evidence, layer=0.5, multiplier=2.0)
    layer = steerer.config["layer_index"]
    assert layer == caa.layer_of(0.5, len(decoder_layers(model))) == 14
    # independent recomputation at that layer only, unbatched
    acts = direct_last_token(model, tok, pairs[:4], lambda i: decoder_layers(model)[i], "output")
    v4 = (acts[:, 0] - acts[:, 1]).mean(0)[layer]
    ev4 = gather(model, tok, pairs[:4], ["residual"], batch_size=4, progress=False)
    # gather batches by length, then puts every row back in pair order
    assert torch.allclose(ev4.pos["residual"], acts[:, 0], atol=1e-3)
    assert torch.allclose(ev4.neg["residual"], acts[:, 1], atol=1e-3)
    assert torch.allclose(caa.build(model, ev4, layer=float(layer), multiplier=1.0).vectors[layer], v4, atol=1e-3)
    assert torch.allclose(steerer.vectors[layer], 2.0 * evidence.mean_diff("residual")[layer])
    assert steerer.n_steered == model.config.hidden_size
    enc = _ids(tok)
    base = _logits(model, enc)
    with steerer.hooks(model):
        hooked = _logits(model, enc)
    down = site_module(model, "neuron", layer)
    assert down.bias is None
    with steerer.fold(model):
        assert torch.equal(down.bias, steerer.vectors[layer])
        folded = _logits(model, enc)
    assert down.bias is None and hook_count(model) == 0
    assert (hooked - base).abs().max() > 0.1
    assert (hooked - folded).abs().max() < 1e-3
    assert torch.equal(_logits(model, enc), base)


@pytest.fixture(scope="module")
def iti_fit(smol, evidence):
    """ITI's per-head activations of the pairs, its probes, and its steerer of the 5 best heads at alpha 3."""
    H = smol[0].config.num_attention_heads
    pos, neg = iti.per_head(evidence.pos["head"], H), iti.per_head(evidence.neg["head"], H)
    return pos, neg, iti.train_probes(pos, neg), iti.build(smol[0], evidence, heads=5, alpha=3.0)


def test_iti_steers_the_heads_whose_probes_are_best(iti_fit):
    _, _, probes, steerer = iti_fit
    chosen = [tuple(c) for c in steerer.config["chosen"]]
    acc = probes.accuracy
    others = [float(acc[l, h]) for l in range(acc.shape[0]) for h in range(acc.shape[1]) if (l, h) not in chosen]
    assert len(chosen) == 5 and min(float(acc[l, h]) for l, h in chosen) >= max(others)


def test_iti_probe_accuracies_are_a_logistic_regressions(evidence, iti_fit):
    """The probe accuracies agree with an independent logistic regression (scikit-learn) on the same split."""
    from sklearn.linear_model import LogisticRegression

    pos, neg, probes, _ = iti_fit
    train, held = iti.split_pairs(evidence.n_pairs)
    ranking = probes.ranking()
    for layer, h in [ranking[0], ranking[len(ranking) // 2], ranking[-1]]:

        def x(idx, layer=layer, h=h):
            return torch.cat([pos[idx, layer, h], neg[idx, layer, h]]).double().numpy()

        def y(idx):
            return np.r_[np.ones(len(idx)), np.zeros(len(idx))]

        mu, sd = x(train).mean(0), x(train).std(0, ddof=1) + 1e-6
        clf = LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit((x(train) - mu) / sd, y(train))
        # the same objective: at most one held-out sample near the boundary may differ
        assert (
            abs(clf.score((x(held) - mu) / sd, y(held)) - float(probes.accuracy[layer, h]))
            <= 1 / (2 * len(held)) + 1e-6
        )


def test_iti_adds_alpha_sigma_theta_to_the_chosen_heads_only(smol, iti_fit):
    """The added vector, read back at the o_proj input, is alpha * sigma * theta on the chosen heads only."""
    model, tok = smol
    H, d = model.config.num_attention_heads, head_dim(model)
    pos, neg, _, steerer = iti_fit
    chosen = [tuple(c) for c in steerer.config["chosen"]]
    layer, h = min(chosen)  # the earliest chosen head: no steered head upstream changes its input
    p, n = pos[:, layer, h].double(), neg[:, layer, h].double()
    theta = (p.mean(0) - n.mean(0)) / (p.mean(0) - n.mean(0)).norm()
    sigma = (torch.cat([p, n]) @ theta).std()
    enc = _ids(tok)
    seen = []
    # a forward hook sees the o_proj input as the steerer's pre-hook left it (a pre-hook registered first would not)
    handle = site_module(model, "head", layer).register_forward_hook(lambda m, a, out: seen.append(a[0].clone()))
    try:
        _logits(model, enc)
        with steerer.hooks(model):
            _logits(model, enc)
    finally:
        handle.remove()
    shift = seen[1] - seen[0]
    assert torch.allclose(shift[0, -1, h * d : (h + 1) * d], (3.0 * sigma * theta).float(), atol=1e-4)
    others_mask = torch.ones(H * d, dtype=torch.bool)
    for cl, ch in chosen:
        if cl == layer:
            others_mask[ch * d : (ch + 1) * d] = False
    assert shift[0, -1, others_mask].abs().max() < 1e-5
    assert steerer.n_steered == 5 * d


def test_iti_folded_as_a_bias_equals_its_hooks_and_restores(smol, iti_fit):
    model, tok = smol
    steerer = iti_fit[3]
    enc = _ids(tok)
    with steerer.hooks(model):
        steered = _logits(model, enc)
    with steerer.fold(model):
        folded = _logits(model, enc)
    layer = min(tuple(c) for c in steerer.config["chosen"])[0]
    assert site_module(model, "head", layer).bias is None and hook_count(model) == 0
    assert (steered - folded).abs().max() < 1e-3


def test_sadi_mask_is_top_k_mean_difference(smol, sentiment_pairs, evidence):
    model, tok = smol
    steerer = sadi.build(model, evidence, k=20, delta=2.0)
    diff = (evidence.pos["head"] - evidence.neg["head"]).double().mean(0).numpy()
    L, W = diff.shape
    order = np.argsort(-np.abs(diff).ravel(), kind="stable")[:20]
    assert {(g.layer, g.index) for g in steerer.gains} == {(int(o) // W, int(o) % W) for o in order}
    gains = gains_vectors(model, steerer.gains)
    assert sum(int((g != 1).sum()) for g in gains.values()) == 20
    assert all(set(g[g != 1].tolist()) == {3.0} for g in gains.values())


def test_block_gains_cover_exactly_the_heads(smol, evidence):
    model, _ = smol
    d = head_dim(model)
    top = austeer.select({"head": evidence.counts("head")}, 12)
    steerer = block.build(model, evidence, k=12, alpha=4.0)
    heads = {(u.layer, u.index // d) for u in top}
    assert {(g.layer, g.index) for g in steerer.gains} == {(l, h * d + i) for l, h in heads for i in range(d)}
    assert steerer.n_steered == len(heads) * d
    for layer, h in heads:
        betas = [u.beta for u in top if (u.layer, u.index // d) == (layer, h)]
        gain = gains_vectors(model, steerer.gains)[("head", layer)][h * d : (h + 1) * d]
        assert torch.allclose(gain, torch.full((d,), 1 + 4.0 * float(np.mean(betas))))


def test_fixed_gains_are_one_plus_alpha_sign_beta(smol, evidence):
    model, _ = smol
    top = austeer.select({"head": evidence.counts("head")}, 16)
    steerer = fixed.build(model, evidence, k=16, alpha=3.0)
    gains = gains_vectors(model, steerer.gains)
    for u in top:
        assert float(gains[("head", u.layer)][u.index]) == pytest.approx(1 + 3.0 * np.sign(u.beta))


@pytest.mark.slow
def test_austeer_method_equals_fit_and_random_keeps_gains(smol, sentiment_pairs, evidence):
    model, tok = smol
    # the evidence runs both texts whole: so does this fit (the shared-prompt default may flip near-zero signs)
    pairs = sentiment_pairs[:16]
    spec = austeer.fit(model, tok, pairs, site="head", k=10, alpha=5.0, progress=False, share_prefix=False)
    mine = METHODS["austeer"].build(model, evidence, k=10, alpha=5.0)
    assert [(g.layer, g.index) for g in mine.gains] == [(u.layer, u.index) for u in spec.units]
    assert [g.gamma for g in mine.gains] == pytest.approx([5.0 * u.beta for u in spec.units])
    seeds = random_units.build(model, evidence, k=10, alpha=5.0, seeds=3)
    places = [{(g.layer, g.index) for g in s.gains} for s in seeds]
    assert all(len(p) == 10 for p in places) and len({frozenset(p) for p in places}) == 3  # three different draws
    assert all(sorted(g.gamma for g in s.gains) == sorted(g.gamma for g in mine.gains) for s in seeds)


@pytest.mark.slow
def test_one_pass_gives_the_activations_and_fits_counts(smol, sentiment_pairs, evidence):
    """gather reads each pair once: its kept activations are in the pairs' order (each pair read alone gives the
    same rows) and the sign counts streamed in that pass are fit's counts of the same pairs, and the counts of the
    kept activations."""
    from austeer.core.fit import score
    from austeer.core.momentum import SignCounts

    model, tok = smol
    pairs = sentiment_pairs[:16]
    streamed = evidence.counts("head")
    fitted = score(model, tok, pairs, ["head"], batch_size=8, share_prefix=False, progress=False)["head"]
    again = SignCounts.zeros(*evidence.pos["head"].shape[1:])
    again.update(evidence.pos["head"] - evidence.neg["head"])
    for other in (fitted, again):
        assert torch.equal(streamed.pos, other.pos) and torch.equal(streamed.neg, other.neg)
        assert torch.allclose(streamed.total, other.total, rtol=1e-9, atol=1e-9) and streamed.n == other.n == 16
    alone = gather(model, tok, [pairs[5]], ["head"], progress=False)
    assert torch.allclose(alone.pos["head"][0], evidence.pos["head"][5], atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("site", ["ffn", "neuron"])
def test_austeer_at_the_mlp_sites_equals_fit_there(smol, sentiment_pairs, site):
    """``austeer-ffn`` / ``austeer-neuron``: AUSteer's rule at the MLP sites, the AUs ``fit(site=...)`` selects,
    and its fold changes the outputs exactly as its hooks do."""
    model, tok = smol
    pairs = sentiment_pairs[:8]
    ev = gather(model, tok, pairs, [site], batch_size=8, progress=False)
    method = METHODS[f"austeer-{site}"]
    assert method.sites == (site,) and {c["site"] for c in method.grid} == {site} and not method.default
    spec = austeer.fit(model, tok, pairs, site=site, k=6, alpha=4.0, progress=False, share_prefix=False)
    mine = method.build(model, ev, **method.grid[5])  # k=8, alpha 10 on the grid
    assert mine.n_steered == 8 and {g.site for g in mine.gains} == {site}
    first6 = method.build(model, ev, site=site, k=6, alpha=4.0)
    assert [(g.layer, g.index) for g in first6.gains] == [(u.layer, u.index) for u in spec.units]
    base, hooked, folded = _three_ways(model, tok, mine)
    assert (hooked - base).abs().max() > 1e-3
    torch.testing.assert_close(folded, hooked, rtol=1e-4, atol=1e-4)
    assert torch.equal(_logits(model, _ids(tok)), base)


def test_calibration_offsets_one_option_logit(smol):
    model, tok = smol
    pairs = [austeer.Pair("Is water wet?", "Yes", "No"), austeer.Pair("Is fire cold?", "No", "Yes")]
    ev = gather(model, tok, pairs, ["residual"], progress=False)
    steerer = calibration.build(model, ev, offset=2.5)
    yes, no = tok("Yes", add_special_tokens=False).input_ids[0], tok("No", add_special_tokens=False).input_ids[0]
    assert steerer.config["options"] == sorted([yes, no]) and steerer.n_steered == 0
    base, hooked, folded = _three_ways(model, tok, steerer)
    delta = hooked - base
    assert torch.allclose(delta[..., min(yes, no)], torch.full_like(delta[..., 0], 2.5), atol=1e-4)
    delta[..., min(yes, no)] = 0
    assert delta.abs().max() == 0
    assert (hooked - folded).abs().max() < 1e-4 and model.get_output_embeddings().bias is None
    with pytest.raises(ValueError, match="multiple-choice"):
        calibration.options_of([(1, 2), (3, 4), (5, 6), (7, 8), (9, 10)])


@pytest.mark.parametrize("name", ["austeer", "caa", "iti"])
def test_hooks_and_folds_are_undone_after_an_exception(smol, evidence, name):
    model, tok = smol
    config = dict(METHODS[name].grid[0])
    steerer = METHODS[name].build(model, evidence, **config)
    enc = _ids(tok)
    base = _logits(model, enc)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for ctx in (steerer.hooks, steerer.fold):
        with pytest.raises(RuntimeError, match="boom"), ctx(model):
            raise RuntimeError("boom")
        assert hook_count(model) == 0
        assert torch.equal(_logits(model, enc), base)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_residual_addition_refuses_to_fold_where_the_mlp_output_is_normalised(smol, evidence):
    model, _ = smol
    steerer = caa.build(model, evidence)
    original = model.config.model_type
    try:
        model.config.model_type = "gemma2"  # the family name alone decides; no weights are touched
        with pytest.raises(ValueError, match="normalised"), steerer.fold(model):
            pass
    finally:
        model.config.model_type = original
    assert isinstance(steerer, AddSteerer) and hook_count(model) == 0


def test_methods_describe_themselves():
    """Each method's strength parameter is one of its parameters, and a frontier varies only its parameters."""
    for m in METHODS.values():
        assert m.strength is None or m.strength in m.params
        if m.frontier is not None:
            assert m.strength is not None and set(m.frontier.config) | {m.strength} <= m.params


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_fold_note_says_what_folding_does(smol, evidence, family):
    """``Method.fold_note`` (nothing folded) says ``hooks only (why)`` exactly where folding a built steerer refuses."""
    model, _ = smol
    # the prompted methods read an instruction, calibration a small option set; the MLP-site methods their site
    g = torch.Generator().manual_seed(0)
    shape = (evidence.n_pairs, len(decoder_layers(model)))
    mlp = {s: torch.randn(*shape, site_width(model, s), generator=g) for s in ("ffn", "neuron")}
    pos, neg = {**evidence.pos, **mlp}, {**evidence.neg, **{s: torch.zeros_like(v) for s, v in mlp.items()}}
    ev = dataclasses.replace(evidence, pos=pos, neg=neg, system="Be kind.", answer_tokens=[(10, 20)] * evidence.n_pairs)
    original = model.config.model_type
    try:
        model.config.model_type = family  # the family name alone decides; no weights are touched
        for name, method in METHODS.items():
            built = method.build(model, ev, **method.grid[0])
            steerer = built[0] if isinstance(built, list) else built
            try:
                with steerer.fold(model):
                    pass
                expected = method.foldable
            except CannotFold as exc:
                expected = f"hooks only ({exc})"
            assert method.fold_note(model) == expected, name
    finally:
        model.config.model_type = original
    assert METHODS["caa"].fold_note(model).startswith("as a bias")


@pytest.mark.slow
def test_compare_chooses_on_val_and_reads_test_only_for_its_choice(smol, monkeypatch):
    """Choice on validation never reads a test item under a configuration it has not chosen: every trial of the
    budget is scored on val items before the method's choice; after it, test items are read only under the
    chosen configuration (the unsteered model reads test items too, for the baseline the choice does not use)."""
    import austeer.evaluation.compare as compare_mod
    from austeer.tasks import get_task

    model, tok = smol
    task = get_task("copa")
    reads: list[tuple[str, tuple | None, bool]] = []  # (split, configuration steering the model or None, chosen)
    active: list[tuple] = []
    chosen: list[bool] = []
    real_items, real_steered, real_pick = task.items, compare_mod.evaluate_steered, compare_mod.pick

    def items(split, limit=None):
        reads.append((split, active[-1] if active else None, bool(chosen)))
        return real_items(split, limit)

    def evaluate_steered(model, tok, task, steerers, *args, **kw):
        first = steerers[0] if isinstance(steerers, list) else steerers
        active.append(tuple(sorted(first.config.items())))
        try:
            return real_steered(model, tok, task, steerers, *args, **kw)
        finally:
            active.pop()

    def pick(trials, max_ppl_ratio):
        chosen.append(True)
        return real_pick(trials, max_ppl_ratio)

    monkeypatch.setattr(task, "items", items)
    monkeypatch.setattr(compare_mod, "evaluate_steered", evaluate_steered)
    monkeypatch.setattr(compare_mod, "pick", pick)
    limits = {"pairs_limit": 8, "val_limit": 4, "test_limit": 4}
    comp = compare_mod.compare(model, tok, task, ["austeer"], budget=2, batch_size=8, progress=False, **limits)
    [result] = comp.results
    trials = {tuple(sorted(t.config.items())) for t in result.trials}
    assert len(trials) == 2
    steered_before = {(split, config) for split, config, after in reads if config is not None and not after}
    steered_after = {(split, config) for split, config, after in reads if config is not None and after}
    assert steered_before == {("val", config) for config in trials}
    assert steered_after == {("test", tuple(sorted(result.config.items())))}


@pytest.fixture(scope="module")
def cli_compare(smol, tmp_path_factory):
    """One ``austeer compare`` run (three methods, budget 2, a dose-response over head AUs), its JSON files and
    the unsteered test evaluation made directly."""
    import json

    from austeer.cli import main
    from austeer.evaluation.evaluate import evaluate
    from austeer.tasks import get_task

    model, tok = smol
    out = tmp_path_factory.mktemp("cmp") / "cmp"
    args = [
        "compare",
        "--task",
        "copa",
        "--methods",
        "austeer,sadi,calibration",
        "--budget",
        "2",
        "--pairs-limit",
        "8",
        "--val-limit",
        "6",
        "--test-limit",
        "6",
        "--out",
        str(out),
        "--doses",
        "0,2,all",
        "--dose-sites",
        "head",
        "--dtype",
        "float32",
    ]  # fmt: skip  (float32: compared with the fixture's model below)
    assert main(args) == 0
    data = json.loads((out / "compare.json").read_text())
    dose = json.loads((out / "dose.json").read_text())
    return out, data, dose, evaluate(model, tok, get_task("copa"), split="test", limit=6)


@pytest.mark.slow
def test_compare_cli_gives_every_method_the_same_budget_spread_over_its_grid(cli_compare):
    _, data, _, _ = cli_compare
    assert [r["method"] for r in data["results"]] == ["austeer", "sadi", "calibration"]
    assert all(len(r["trials"]) == 2 for r in data["results"])
    grid = [dict(c) for c in METHODS["austeer"].grid]
    assert [t["config"] for t in data["results"][0]["trials"]] == [grid[0], grid[-1]]
    assert data["results"][0]["n_steered"] == data["results"][0]["config"]["k"]
    assert data["results"][2]["n_steered"] == 0  # calibration steers no activation


@pytest.mark.slow
def test_compare_cli_baseline_is_the_direct_evaluation(cli_compare):
    _, data, _, direct = cli_compare
    assert data["baseline_test"]["accuracy"] == direct["accuracy"]
    assert data["baseline_test"]["ppl"] == pytest.approx(direct["ppl"], rel=1e-4)


@pytest.mark.slow
def test_compare_cli_writes_a_table_that_marks_the_best_steering_method(cli_compare):
    from austeer.evaluation.compare import Comparison
    from austeer.report.comparison import summary_table

    out, data, _, direct = cli_compare
    assert (out / "compare.png").stat().st_size > 0 and "| calibration |" in (out / "compare.md").read_text()
    comp = Comparison.from_json(data)
    assert comp.to_json() == {k: v for k, v in data.items() if k not in ("model", "written_by", "protocol")}
    row = summary_table([comp]).splitlines()[2].split(" | ")
    best = max(data["results"][:2], key=lambda r: (r["test_metric"], -r["n_steered"]))
    assert row[-4] == best["method"] and row[3] == f"{direct['accuracy']:.3f}"
    assert f"**{best['test_metric']:.3f} ({best['n_steered']})**" in row


@pytest.mark.slow
def test_compare_cli_dose_response_runs_from_none_to_every_au(cli_compare):
    out, data, dose, direct = cli_compare
    assert [r["k"] for r in dose["rows"]] == [0, 2, 17280] and dose["rows"][2]["all"]
    assert dose["alpha"] == data["results"][0]["config"]["alpha"] and (out / "dose.png").stat().st_size > 0
    assert dose["rows"][0]["metric"] == direct["accuracy"]  # no AU steered: the unsteered model
    assert dose["rows"][2]["ppl"] > 10 * direct["ppl"]  # every head AU at once wrecks the model


@pytest.mark.parametrize(
    "extra,said",
    [(["--methods", "nope"], "unknown method"), (["--doses", "0,many"], "bad dose 'many'"),
     (["--methods", "nope", "--doses", "0,2"], "unknown method")],
)  # fmt: skip
def test_compare_cli_refuses_bad_methods_and_doses_in_one_line(tmp_path, capsys, extra, said):
    from austeer.cli import main

    assert main(["compare", "--task", "copa", *extra, "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1 and not (tmp_path / "cmp").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name,scale", [("au-add", "std"), ("au-add-diff", "diff")])
def test_au_add_shifts_austeers_units_by_alpha_beta_scale(smol, evidence, name, scale):
    """au-add: exactly AUSteer's top-k AUs, each shifted by alpha * beta * s (s: std or |mean diff| over the pairs,
    recomputed here from the raw activations); hooks move the logits, the bias fold equals the hooks and
    restores the model bit for bit."""
    from austeer.methods.au import top_units

    model, tok = smol
    steerer = METHODS[name].build(model, evidence, site="head", k=8, alpha=3.0)
    units = top_units(evidence, "head", 8)
    assert steerer.n_steered == 8 and steerer.site == "head"
    pos, neg = evidence.pos["head"].double(), evidence.neg["head"].double()
    for u in units:
        if scale == "std":
            s = torch.cat([pos[:, u.layer, u.index], neg[:, u.layer, u.index]]).std()
        else:
            s = (pos[:, u.layer, u.index] - neg[:, u.layer, u.index]).mean().abs()
        assert steerer.vectors[u.layer][u.index].item() == pytest.approx(3.0 * u.beta * float(s), rel=1e-5)
    nonzero = {(layer, int(i)) for layer, v in steerer.vectors.items() for i in torch.nonzero(v).flatten()}
    assert nonzero == {(u.layer, u.index) for u in units}
    enc = _ids(tok)
    base = _logits(model, enc)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with steerer.hooks(model):
        hooked = _logits(model, enc)
    with steerer.fold(model):
        folded = _logits(model, enc)
    assert (hooked - base).abs().max() > 100 * (hooked - folded).abs().max()
    assert (hooked - folded).abs().max() < 1e-4
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
