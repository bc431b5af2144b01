"""The CLI end to end on the real model: fit, generate (hook and fold agree), export, clear errors."""

from __future__ import annotations

import json

from transformers import AutoModelForCausalLM

from austeer.cli import main
from tests.conftest import DATA


def test_fit_generate_export(tmp_path, capsys):
    spec_dir, model_dir = tmp_path / "spec", tmp_path / "model"
    pairs = DATA / "pairs" / "sentiment.jsonl"
    assert main(["fit", "--pairs", str(pairs), "--site", "head", "--k", "8", "--alpha", "4", "--out", str(spec_dir),
                 "--limit", "12", "--batch-size", "4"]) == 0
    meta = json.loads((spec_dir / "steer.json").read_text())
    assert meta["k"] == 8 and meta["n_pairs"] == 12 and meta["fingerprint"]["family"] == "llama"
    capsys.readouterr()
    args = ["generate", "--steer", str(spec_dir), "--max-new-tokens", "12", "Tell me about your day."]
    assert main(args + ["--mode", "hook"]) == 0
    hooked = capsys.readouterr().out
    assert main(args + ["--mode", "fold"]) == 0
    assert capsys.readouterr().out == hooked and hooked.strip()
    assert main(args + ["--compare"]) == 0
    assert "--- unsteered:" in capsys.readouterr().out
    assert main(["export", "--steer", str(spec_dir), "--out", str(model_dir)]) == 0
    assert AutoModelForCausalLM.from_pretrained(model_dir).config.model_type == "llama"


def test_bad_pairs_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "positive": "y"}\n')
    assert main(["fit", "--pairs", str(bad), "--out", str(tmp_path / "s")]) == 2
    assert "bad.jsonl:1: missing field 'negative'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
