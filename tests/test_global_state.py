"""No library call changes global state it does not own: the tokenizer's settings, torch's RNG, matplotlib's
backend (docs/ARCHITECTURE.md, habits)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import warnings

import pytest
import torch
from tokenizers.processors import TemplateProcessing

from austeer.core.collect import encode, shared_prefix_activations
from austeer.run.generate import generate


@pytest.fixture
def bracketing_tok(smol):
    """A copy of the SmolLM2 tokenizer without a chat template whose post-processor adds two special tokens."""
    tok = copy.deepcopy(smol[1])
    tok.chat_template = None
    start, end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    specials = [("<|im_start|>", start), ("<|im_end|>", end)]
    tok._tokenizer.post_processor = TemplateProcessing(single="<|im_start|> $A <|im_end|>", special_tokens=specials)
    return tok


@pytest.mark.parametrize("side", ["left", "right"])
def test_encode_cuts_and_pads_like_the_tokenizer_without_touching_it(bracketing_tok, side):
    tok = bracketing_tok
    texts = ["one two three four five six", "hi", "alpha beta gamma delta"]
    tok.truncation_side, tok.padding_side = "left", side
    ref = tok(texts, padding=True, truncation=True, max_length=4, return_tensors="pt", add_special_tokens=True)
    tok.truncation_side, tok.padding_side = "right", "left" if side == "right" else "right"
    with pytest.warns(UserWarning, match="truncated on the left"):
        got = encode(tok, texts, max_length=4, padding_side=side)
    assert torch.equal(got["input_ids"], ref["input_ids"]) and torch.equal(got["attention_mask"], ref["attention_mask"])
    assert got["input_ids"][0].tolist()[0] == tok.convert_tokens_to_ids("<|im_start|>")  # special tokens kept
    assert (tok.truncation_side, tok.padding_side) == ("right", "left" if side == "right" else "right")


def test_library_calls_leave_the_tokenizer_settings_alone(smol):
    model, tok = smol
    before = (tok.padding_side, tok.truncation_side)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encode(tok, ["a b c d e", "f"], max_length=3, padding_side="right")
        shared_prefix_activations(model, tok, [("Say yes: yes", "Say yes: no")], ["head"], max_length=6)
    generate(model, tok, ["Hi"], max_new_tokens=2)
    assert (tok.padding_side, tok.truncation_side) == before


@pytest.mark.slow
def test_seeded_sampling_repeats_and_leaves_the_global_rng_alone(smol):
    model, tok = smol
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    a = generate(model, tok, ["Tell me a story."], max_new_tokens=6, do_sample=True, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = generate(model, tok, ["Tell me a story."], max_new_tokens=6, do_sample=True, seed=7)
    assert a == b and torch.equal(torch.random.get_rng_state(), state)


_PLOT = """
import sys, matplotlib, torch
from austeer.report.comparison import plot_dose
from austeer.evaluation.compare import DoseRow
from austeer.core.momentum import Unit
from austeer.report.plots import beta_heatmap
png = beta_heatmap(torch.rand(4, 16) - 0.5, [Unit("head", 1, 3, 1.0)], "head", head_dim=8)
rows = [DoseRow("head", k, False, 1.0, 0.5, 10.0, {}) for k in (1, 2)]
plot_dose(rows, "demo", "accuracy", sys.argv[1])
print(png[:4] == b"\\x89PNG", matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""


@pytest.mark.slow
def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    env = {**os.environ, "MPLBACKEND": "svg"}
    out = tmp_path / "dose.png"
    proc = subprocess.run([sys.executable, "-c", _PLOT, str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["True", "svg", "False"] and out.read_bytes()[:4] == b"\x89PNG"
