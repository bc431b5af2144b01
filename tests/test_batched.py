"""Per-row steering on the real embedded model: mixed batches equal one-by-one generation."""

from __future__ import annotations

import pytest
import torch

from austeer.core.collect import encode
from austeer.core.fit import score
from austeer.core.momentum import select
from austeer.core.pairs import format_prompt
from austeer.core.spec import SteerSpec
from austeer.run.generate import generate, steered
from austeer.serving.batched import RowRequest, RowSteer, apply_rows, generate_rows, run_rows
from tests.conftest import hook_count

PROMPTS = [
    "Write one sentence about your weekend.",
    "How was the movie?",
    "Describe the food at the new restaurant in a few words.",
    "What do you think about Mondays?",
]


@pytest.fixture(scope="module")
def specs(smol, sentiment_pairs):
    model, tok = smol
    counts = score(model, tok, sentiment_pairs[:20], ["head", "ffn"], batch_size=20, progress=False)
    head = SteerSpec(units=select({"head": counts["head"]}, 32), alpha=5.0)
    ffn = SteerSpec(units=select({"ffn": counts["ffn"]}, 16), alpha=-8.0)
    return head, ffn


@pytest.mark.slow
def test_mixed_batch_equals_one_by_one(smol, specs):
    model, tok = smol
    head, ffn = specs
    steers = [None, RowSteer(head), RowSteer(ffn), RowSteer(head, alpha=8.0), None]
    prompts = PROMPTS + [PROMPTS[0]]
    batched = generate_rows(model, tok, prompts, steers, max_new_tokens=14)
    alone = []
    for prompt, s in zip(prompts, steers):
        spec, alpha = (s.spec, s.alpha) if s is not None else (None, None)
        with steered(model, spec, "hook", alpha):
            alone.append(generate(model, tok, [prompt], max_new_tokens=14)[0])
    assert batched == alone
    # steering really changed the steered rows (the comparison above is not vacuous)
    plain = generate(model, tok, prompts[1:4], max_new_tokens=14)
    assert sum(a != b for a, b in zip(plain, alone[1:4])) >= 2
    assert batched[0] == batched[4]


@pytest.mark.slow
def test_row_logits_match_single_spec_hooks(smol, specs):
    model, tok = smol
    head, ffn = specs
    steers = [RowSteer(ffn), None, RowSteer(head)]
    texts = [format_prompt(tok, p) for p in PROMPTS[:3]]
    enc = encode(tok, texts, padding_side="left")
    with torch.inference_mode():
        with apply_rows(model, steers):
            mixed = model(**enc).logits[:, -1]
        for r, s in enumerate(steers):
            # same batch, every row steered like row r: row r must be bit-identical
            with steered(model, None if s is None else s.spec):
                uniform = model(**enc).logits[:, -1]
            assert torch.equal(mixed[r], uniform[r])
            # that prompt alone (no padding): equal up to floating batch effects
            single = encode(tok, [texts[r]])
            with steered(model, None if s is None else s.spec):
                one = model(**single).logits[0, -1]
            assert torch.allclose(mixed[r], one, atol=1e-3, rtol=1e-4)
    assert not torch.allclose(mixed[0], uniform[0], atol=1e-2)  # row 0 (ffn) differs from the head steering
    assert hook_count(model) == 0


def test_hooks_removed_on_error(smol, specs):
    model, tok = smol
    enc = encode(tok, ["a", "b c"], padding_side="left")
    with pytest.raises(RuntimeError):
        with apply_rows(model, [RowSteer(specs[0])] * 3):  # 3 gains for a batch of 2
            model(**enc)
    assert hook_count(model) == 0


@pytest.mark.slow
def test_run_rows_budgets_stops_deltas_and_seeds(smol, specs):
    model, tok = smol
    head, _ = specs
    text = format_prompt(tok, "List three colours, separated by commas.")
    full = run_rows(model, tok, [RowRequest(text, max_new_tokens=16)])[0]
    assert full.completion_tokens > 4
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
    deltas: dict[int, list[str]] = {0: [], 1: [], 2: [], 3: []}
    reqs = [
        RowRequest(text, max_new_tokens=16),
        RowRequest(text, max_new_tokens=3),
        RowRequest(text, max_new_tokens=16, stop=(stop,)),
        RowRequest(text, RowSteer(head), max_new_tokens=16, temperature=0.9, top_p=0.95, seed=7),
    ]
    out = run_rows(model, tok, reqs, on_delta=lambda r, d: deltas[r].append(d))
    assert out[0].text == full.text and out[0].finish_reason == full.finish_reason
    assert out[1].finish_reason == "length" and out[1].completion_tokens == 3
    assert out[2].finish_reason == "stop" and out[2].text == full.text[: full.text.find(stop)]
    for r, res in enumerate(out):
        assert "".join(deltas[r]) == res.text
    assert out[0].prompt_tokens == len(tok(text, add_special_tokens=False).input_ids)
    # a seeded sampled row gives the same text in another batch composition
    again = run_rows(model, tok, [reqs[3], RowRequest(format_prompt(tok, "Hi"), max_new_tokens=5)])
    assert again[0].text == out[3].text
    other = run_rows(model, tok, [RowRequest(text, RowSteer(head), 16, temperature=0.9, top_p=0.95, seed=8)])
    assert other[0].text != out[3].text


def test_cancel_and_bad_input(smol):
    model, tok = smol
    text = format_prompt(tok, "Tell me a long story about a dragon.")
    seen: list[str] = []
    out = run_rows(
        model, tok, [RowRequest(text, max_new_tokens=40)], lambda r, d: seen.append(d), lambda r: len(seen) >= 2
    )
    assert out[0].completion_tokens < 40
    with pytest.raises(ValueError, match="one per row"):
        generate_rows(model, tok, ["a", "b"], [None])
    with pytest.raises(ValueError, match="temperature"):
        run_rows(model, tok, [RowRequest(text, temperature=-1.0)])
    with pytest.raises(ValueError, match="max_new_tokens"):
        run_rows(model, tok, [RowRequest(text, max_new_tokens=0)])


# -- batch invariance in the serving dtype (docs/SERVING.md, "Exactness")

PROBE = "Describe Mondays."
#: companions of other token lengths than the probe (so the probe's row is padded or pads the others)
COMPANIONS = ["Hi!", "Write a long and detailed story about a dragon who learns to paint.", "How was the movie?"]


@pytest.mark.slow
def test_mixed_batches_equal_one_by_one_in_float32(smol, specs):
    """In float32 (``austeer serve``'s ``--dtype auto`` on a CPU without avx512_bf16/amx_bf16, and the
    ``--dtype float32`` its start-up note names elsewhere) every row of a mixed batch, greedy or seeded, steered or
    not, answers as it does alone; ``auto`` carries that note exactly when it resolves to another dtype."""
    from austeer.models.loading import resolve_dtype
    from austeer.serving.batched import batch_note

    dtype = resolve_dtype("auto")[0]
    assert (batch_note(dtype) is None) == (dtype == torch.float32)
    assert next(smol[0].parameters()).dtype == torch.float32
    model, tok = smol
    head, ffn = specs
    probe = format_prompt(tok, PROBE)
    others = [format_prompt(tok, p) for p in COMPANIONS]
    rows = [
        RowRequest(probe, max_new_tokens=20),
        RowRequest(probe, RowSteer(head), max_new_tokens=20),
        RowRequest(probe, max_new_tokens=20, temperature=0.8, seed=3),
    ]
    alone = [run_rows(model, tok, [r])[0].text for r in rows]
    mixes = [
        [rows[0], RowRequest(others[0], max_new_tokens=20)],
        [RowRequest(others[1], RowSteer(ffn), max_new_tokens=6), rows[0], rows[1], RowRequest(others[2])],
        [RowRequest(o, max_new_tokens=20) for o in others] + rows,
        [rows[2], RowRequest(others[1], max_new_tokens=20, temperature=1.0, seed=4)],
    ]
    for mix in mixes:
        out = run_rows(model, tok, mix)
        for req, res in zip(mix, out):
            for i, row in enumerate(rows):
                if req is row:
                    assert res.text == alone[i], (i, [r.text[-30:] for r in mix])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_serve_says_when_batched_answers_may_differ(dtype):
    """bfloat16 (``--dtype auto`` on a GPU or a bf16 CPU): the server says at start-up that answers may depend
    on the batch and how to get ones that do not; float32: nothing to say."""
    import signal
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "austeer", "serve", "--port", "0", "--dtype", dtype]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("listening on "):
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    notes = [line for line in seen if line.startswith("austeer serve: note: ")]
    if dtype == "float32":
        assert not notes, seen
    else:
        assert len(notes) == 1, seen
        assert "in bfloat16 a request may be answered differently when batched" in notes[0]
        assert "--dtype float32" in notes[0]
