"""The inspection report on the real embedded model: valid HTML, decodable images, real vocabulary tokens."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser

import matplotlib.image as mpimg
import pytest
import torch

from austeer.cli import main
from austeer.core.fit import fit
from austeer.core.momentum import Unit
from austeer.core.pairs import read_pairs
from austeer.core.sites import site_module
from austeer.report import build_report
from austeer.report.html import tok_html
from austeer.report.lens import directions, final_norm, unit_lens
from austeer.report.shift import prompt_shifts, read_prompts
from austeer.report.sweep import read_sweep
from tests.conftest import DATA, tiny_model

VOID = {"meta", "img", "br", "hr", "link", "input"}


class Checker(HTMLParser):
    """Collects images and token chips, and checks that every non-void element is closed in order."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: list[str] = []
        self.chips: list[str] = []
        self._chip: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "code" and a.get("class") == "tok":
            self._chip = []

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()
        if tag == "code" and self._chip is not None:
            self.chips.append("".join(self._chip))
            self._chip = None

    def handle_data(self, data):
        if self._chip is not None:
            self._chip.append(data)


def parse(page: str) -> Checker:
    c = Checker()
    c.feed(page)
    c.close()
    assert not c.errors and not c.stack, (c.errors, c.stack)
    return c


@pytest.fixture(scope="module")
def spec(smol):
    model, tok = smol
    pairs = read_pairs(DATA / "pairs" / "sentiment.jsonl")[:8]
    s = fit(model, tok, pairs, site="head", k=12, alpha=5.0, progress=False, batch_size=8)
    s.info["pairs_file"] = "sentiment.jsonl"
    return s


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    rows = [
        {
            "site": site,
            "k": k,
            "alpha": a,
            "n_steered": k,
            "metric": 0.5 + 0.001 * k * a,
            "ppl_delta": 0.0,
            "metrics": {"accuracy": 0.5 + 0.001 * k * a},
        }
        for site in ("head", "ffn")
        for k in (2, 8, 32)
        for a in (1.0, 5.0, 20.0)
    ]
    (d / "sweep.json").write_text(
        json.dumps(
            {
                "task": "copa",
                "model": "embedded:smollm2-135m-instruct",
                "metric": "accuracy",
                "baseline": {"accuracy": 0.5},
                "rows": rows,
                "best": {"site": "head", "k": 32, "alpha": 20.0},
                "test": {
                    "unsteered": {"accuracy": 0.55, "ppl": 9.5},
                    "steered": {"accuracy": 0.61, "ppl": 9.75},
                    "site": "head",
                    "k": 32,
                    "alpha": 20.0,
                    "n_steered": 32,
                },
            }
        )
    )
    return d


def vocab_chips(tok) -> set[str]:
    """The chip text of every vocabulary token, as the report renders it."""
    chips = set()
    for i in range(len(tok)):
        m = re.fullmatch(r'<code class="tok">(.*)</code>', tok_html(tok.decode([i])), re.S)
        assert m
        chips.add(m.group(1))
    return chips


@pytest.mark.slow
def test_report_is_valid_html_with_images_and_real_tokens(smol, spec, sweep_dir, tmp_path):
    model, tok = smol
    out = build_report(
        model,
        tok,
        spec,
        tmp_path / "report.html",
        spec_path="spec-dir",
        sweep=sweep_dir,
        prompts=["How was the film?"],
        n_units=3,
        n_tokens=5,
        max_new_tokens=4,
        progress=False,
    )
    page = out.read_text(encoding="utf-8")
    checker = parse(page)
    # every embedded image decodes to a real picture, and the same figures are written as PNG files
    files = sorted(p.name for p in (tmp_path / "report_files").glob("*.png"))
    assert {"beta_head.png", "location_head.png", "sweep_head.png", "sweep_ffn.png", "shift_1.png"} <= set(files)
    assert len(checker.images) == len(files)
    for src in checker.images:
        assert src.startswith("data:image/png;base64,")
        pixels = mpimg.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    # every token chip is a real vocabulary token: 3 AUs x 4 lists x 5 tokens + 2 x 5 shift rows
    from html import unescape

    chips = [unescape(c) for c in checker.chips]
    assert len(chips) == 3 * 4 * 5 + 2 * 5
    vocab = {unescape(c) for c in vocab_chips(tok)}
    assert [c for c in chips if c not in vocab] == []
    # the report names the model, the data, the spec and the library version
    import austeer

    for needle in (
        spec.model_id,
        "llama, 30 layers",
        "sentiment.jsonl (8 pairs)",
        "spec-dir",
        austeer.__version__,
        "How was the film?",
        '<td>accuracy</td><td class="num">0.5</td><td class="num">0.55</td><td class="num">0.61</td>',
    ):
        assert needle in page, needle


def test_lens_matches_the_weights(smol, spec):
    model, tok = smol
    unit = next(u for u in spec.units if u.site == "head")
    w_o = site_module(model, "head", unit.layer).weight
    d = directions(model, "head", unit.layer)[unit.index]
    assert torch.equal(d, w_o[:, unit.index].float())
    # RMSNorm: lens = W_U (norm.weight * d) up to a positive scale, so the top token is the same
    manual = model.lm_head.weight @ (final_norm(model).weight * d)
    lens = unit_lens(model, tok, unit, spec.scores["head"], n_tokens=5)
    assert [t.id for t in lens.promoted] == manual.topk(5).indices.tolist()
    assert [t.id for t in lens.suppressed] == (-manual).topk(5).indices.tolist()
    assert all(t.text == tok.decode([t.id]) and 0 <= t.id < len(tok) for t in lens.promoted + lens.block_promoted)
    assert lens.block == f"layer {unit.layer} head {unit.index // 64}"
    # an ffn AU is a residual coordinate: its lens is the norm-scaled unembedding column
    ffn = unit_lens(model, tok, Unit("ffn", 3, 7, 1.0), None, n_tokens=3)
    col = model.lm_head.weight[:, 7] * final_norm(model).weight[7]
    assert [t.id for t in ffn.promoted] == col.topk(3).indices.tolist()


def test_steering_moves_the_next_token_distribution(smol, spec):
    model, tok = smol
    [shift] = prompt_shifts(
        model, tok, spec.with_alpha(20.0), ["Tell me about your day."], max_new_tokens=2, n_tokens=4, progress=False
    )
    assert shift.kl > 0.001
    assert all(t.p_after > t.p_before for t in shift.rises) and all(t.p_after < t.p_before for t in shift.falls)
    [same] = prompt_shifts(
        model, tok, spec.with_alpha(0.0), ["Tell me about your day."], max_new_tokens=2, n_tokens=4, progress=False
    )
    assert abs(same.kl) < 1e-6 and same.steered == same.unsteered


def test_bad_inputs_are_clear_errors(tmp_path):
    bad = tmp_path / "sweep.json"
    bad.write_text(json.dumps({"metric": "accuracy", "rows": [{"site": "head", "alpha": 1, "metric": 0.5}]}))
    with pytest.raises(ValueError, match=r"sweep.json: rows\[0\]\.k missing"):
        read_sweep(tmp_path)
    with pytest.raises(FileNotFoundError, match="sweep.json"):
        read_sweep(tmp_path / "nowhere")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Hi"}\n{"text": "no prompt"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: expected an object with a string field 'prompt'"):
        read_prompts(prompts)
    prompts.write_text('{"prompt": "Hi"}\n\n{"prompt": "Bye"}\n')
    assert read_prompts(prompts) == ["Hi", "Bye"]


@pytest.mark.slow
def test_cli_inspect(spec, sweep_dir, tmp_path, capsys):
    spec_dir = spec.save(tmp_path / "spec")
    out = tmp_path / "r.html"
    assert (
        main(
            [
                "inspect",
                "--steer",
                str(spec_dir),
                "--out",
                str(out),
                "--sweep",
                str(sweep_dir / "sweep.json"),
                "--top",
                "2",
                "--k",
                "6",
            ]
        )
        == 0
    )
    page = out.read_text()
    parse(page)
    assert "6 atomic units" in page and (tmp_path / "r_files" / "sweep_head.png").is_file()
    assert (
        main(
            [
                "inspect",
                "--steer",
                str(spec_dir),
                "--out",
                str(tmp_path / "x.html"),
                "--sweep",
                str(tmp_path / "missing"),
            ]
        )
        == 2
    )
    assert "missing/sweep.json does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


@pytest.mark.parametrize("name", ["llama", "gemma3_text", "gpt2", "gpt_neox", "phi3"])
def test_lens_directions_are_what_the_au_writes(name):
    """On tiny models of other families (GPT-2's transposed Conv1D, GQA, head_dim * heads != hidden)."""
    from austeer.core.sites import fold_module, site_width
    from austeer.report.lens import block_of, lens_logits

    model = tiny_model(name)
    d_model = int(model.config.hidden_size)
    for site in ("head", "neuron", "ffn"):
        dirs = directions(model, site, 1)
        assert dirs.shape == (site_width(model, site), d_model)
        if site == "ffn":
            assert torch.equal(dirs, torch.eye(d_model))
            continue
        mod, _ = fold_module(model, site, 1)
        with torch.no_grad():
            x = torch.zeros(1, 1, dirs.shape[0])
            x[0, 0, 5] = 1.0
            written = (mod(x) - mod(torch.zeros_like(x)))[0, 0]
        torch.testing.assert_close(dirs[5], written.float())
    logits = lens_logits(model, directions(model, "head", 0)[:3])
    assert logits.shape == (3, model.config.vocab_size) and torch.isfinite(logits).all()
    idx, label = block_of(model, Unit("head", 1, 17, 1.0))
    assert 17 in idx and len(idx) == site_width(model, "head") // model.config.num_attention_heads


def test_report_of_a_hand_written_spec_without_scores(smol, tmp_path):
    """A spec with no stored scores (ffn AUs, block = the whole layer): the report still builds and says so."""
    from austeer.core.spec import SteerSpec

    model, tok = smol
    spec = SteerSpec(units=[Unit("ffn", 3, 7, 1.0), Unit("ffn", 3, 100, -0.75)], alpha=2.0)
    out = build_report(model, tok, spec, tmp_path / "hand.html", n_units=2, n_tokens=3, progress=False)
    checker = parse(out.read_text())
    assert "This spec has no stored scores" in out.read_text()
    figures = sorted(p.name for p in (tmp_path / "hand_files").glob("*.png"))
    assert figures == ["heterogeneity_1.png", "location_ffn.png"]
    assert len(checker.images) == 2 and len(checker.chips) == 2 * 4 * 3
