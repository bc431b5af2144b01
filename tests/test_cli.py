"""The CLI end to end on the real model: fit, generate (hook and fold agree), export, clear errors."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM

from austeer.cli import main
from tests.conftest import DATA


@pytest.mark.slow
def test_fit_generate_export(tmp_path, capsys):
    spec_dir, model_dir = tmp_path / "spec", tmp_path / "model"
    pairs = DATA / "pairs" / "sentiment.jsonl"
    assert (
        main(
            [
                "fit",
                "--pairs",
                str(pairs),
                "--site",
                "head",
                "--k",
                "8",
                "--alpha",
                "4",
                "--out",
                str(spec_dir),
                "--limit",
                "12",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    meta = json.loads((spec_dir / "steer.json").read_text())
    assert meta["k"] == 8 and meta["n_pairs"] == 12 and meta["fingerprint"]["family"] == "llama"
    capsys.readouterr()
    args = ["generate", "--steer", str(spec_dir), "--max-new-tokens", "12", "Tell me about your day."]
    assert main(args + ["--mode", "hook"]) == 0
    hooked = capsys.readouterr().out
    assert main(args + ["--mode", "fold"]) == 0
    assert capsys.readouterr().out == hooked and hooked.strip()
    assert main(args + ["--compare"]) == 0  # the unsteered answer first, then the same steered one
    unsteered, steered = capsys.readouterr().out.split("\n--- steered (8 AUs, alpha 4, ", 1)
    prompt, answer = unsteered.split("\n--- unsteered:\n", 1)
    assert prompt == "### prompt: Tell me about your day." and answer.strip()
    assert steered.split("\n", 1)[1] == hooked
    assert main(["export", "--steer", str(spec_dir), "--out", str(model_dir)]) == 0
    assert AutoModelForCausalLM.from_pretrained(model_dir).config.model_type == "llama"


def test_bad_pairs_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "positive": "y"}\n')
    assert main(["fit", "--pairs", str(bad), "--out", str(tmp_path / "s")]) == 2
    assert "bad.jsonl:1: missing field 'negative'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_eval_paired_equals_two_separate_evaluations(tmp_path, capsys):
    """``eval --paired``: its unsteered and steered halves equal plain ``eval`` runs on the same items (the layer
    replay changes nothing), and its fixed/broken counts are those of the two runs' per-item outcomes."""
    spec_dir = tmp_path / "spec"
    pairs = DATA / "pairs" / "sentiment.jsonl"
    assert main(["fit", "--pairs", str(pairs), "--site", "head", "--k", "16", "--alpha", "20", "--out", str(spec_dir),
                 "--limit", "12"]) == 0  # fmt: skip
    common = ["eval", "--task", "copa", "--split", "test", "--limit", "12", "--dtype", "float32"]
    files = {name: tmp_path / f"{name}.json" for name in ("paired", "plain", "steered")}
    assert main([*common, "--steer", str(spec_dir), "--paired", "--out", str(files["paired"])]) == 0
    assert "McNemar exact p" in capsys.readouterr().out
    assert main([*common, "--out", str(files["plain"])]) == 0
    assert main([*common, "--steer", str(spec_dir), "--out", str(files["steered"])]) == 0
    paired, plain, steered = (json.loads(f.read_text()) for f in files.values())
    assert paired["unsteered"]["metrics"] == plain["metrics"]
    assert paired["metrics"] == steered["metrics"]
    fixed = sum(not a["correct"] and b["correct"] for a, b in zip(plain["samples"], steered["samples"]))
    broken = sum(a["correct"] and not b["correct"] for a, b in zip(plain["samples"], steered["samples"]))
    assert (paired["paired"]["fixed"], paired["paired"]["broken"]) == (fixed, broken)
    assert fixed + broken > 0  # alpha 20 on 16 head AUs changes answers: the counts are not trivially zero
    assert main(["eval", "--task", "copa", "--paired"]) == 2  # --paired needs --steer


def test_every_command_that_writes_an_output_takes_force():
    from austeer.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    writers = {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}
    writers = {name: opts for name, opts in writers.items() if "--out" in opts}
    assert len(writers) >= 8 and all("--force" in opts for opts in writers.values()), writers


@pytest.mark.slow
def test_unsteered_evaluations_say_what_they_do(smol, capsys):
    """The unsteered evaluations at the start of compare/sweep/tune are announced (minutes on a large model)."""
    from austeer.evaluation.evaluate import Unsteered
    from austeer.tasks import get_task

    model, tok = smol
    base = Unsteered(model, tok, progress=True)
    base.get(get_task("copa"), "val", 3)
    base.get(get_task("copa"), "test", 2)
    base.get(get_task("copa"), "val", 3)  # memo: nothing to say
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "copa: the unsteered model on val (3 items) and the neutral-text perplexity ...",
        "copa: the unsteered model on test (2 items) ...",
    ]


def test_only_input_errors_are_one_line(tmp_path, monkeypatch, capsys):
    """A UserError (bad input) is one line and exit 2; any other error is a bug and keeps its traceback."""
    import pytest

    import austeer.core.pairs
    from austeer.errors import UserError

    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"prompt": "a", "positive": "b", "negative": "c"}\n')
    argv = ["fit", "--pairs", str(pairs), "--out", str(tmp_path / "s")]
    for error, expected in ((UserError("p.jsonl: line 1: bad"), 2), (ValueError("internal"), None)):

        def broken(*_a, _error=error, **_k):
            raise _error

        monkeypatch.setattr(austeer.core.pairs, "read_pairs", broken)
        if expected is None:
            with pytest.raises(ValueError, match="internal"):
                main(argv)
        else:
            assert main(argv) == expected
            assert capsys.readouterr().err == "austeer: error: p.jsonl: line 1: bad\n"
    assert not (tmp_path / "s").exists()
