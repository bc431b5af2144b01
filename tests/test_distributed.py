"""Discovery over 2 processes (gloo, CPU) gives exactly the single-process counts and selection."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from austeer.cli import main
from austeer.core.distributed import batch_plan, score_shard, shard
from austeer.core.fit import score
from austeer.core.momentum import select
from austeer.core.spec import load
from tests.conftest import DATA

PAIRS = DATA / "pairs" / "sentiment.jsonl"


def _assert_same(spec_counts, ref_counts, units, k):
    for site, ref in ref_counts.items():
        got = spec_counts[site]
        assert got.n == ref.n
        assert torch.equal(got.pos, ref.pos) and torch.equal(got.neg, ref.neg)  # integers: exactly equal
        # the float sums only differ by the order of additions
        assert torch.allclose(got.total, ref.total, rtol=1e-9, atol=1e-9)
        assert torch.allclose(got.squares, ref.squares, rtol=1e-9, atol=1e-9)
    assert units == select(ref_counts, k)


@pytest.mark.slow
def test_fit_nproc_2_equals_single_process(smol, sentiment_pairs, tmp_path):
    model, tok = smol
    out = tmp_path / "spec"
    # 24 pairs, batches of 8: 3 batches, rank 0 gets 2 and rank 1 gets 1
    argv = ["fit", "--pairs", str(PAIRS), "--limit", "24", "--site", "head,ffn", "--k", "24", "--batch-size", "8"]
    argv += ["--dtype", "float32"]  # the reference is the float32 fixture (the CLI's default is auto)
    argv += ["--nproc", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    spec = load(out)
    assert spec.n_pairs == 24 and spec.info["processes"] == 2
    pairs = sentiment_pairs[:24]
    ref = score(model, tok, pairs, ["head", "ffn"], batch_size=8, progress=False)
    _assert_same(spec.scores, ref, spec.units, 24)
    # the shards really split the work: one rank alone sees fewer pairs
    plan = batch_plan(tok, pairs, 8)
    assert sum(len(b) for b in shard(plan, 0, 2)) == 16 and sum(len(b) for b in shard(plan, 1, 2)) == 8


@pytest.mark.slow
def test_torchrun_entry_point(smol, sentiment_pairs, tmp_path):
    model, tok = smol
    out = tmp_path / "spec"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "austeer"]
    cmd += ["fit", "--pairs", str(PAIRS), "--limit", "12", "--k", "8", "--batch-size", "4", "--out", str(out)]
    cmd += ["--dtype", "float32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "over 2 processes" in proc.stdout
    spec = load(out)
    ref = score(model, tok, sentiment_pairs[:12], ["head"], batch_size=4, progress=False)
    _assert_same(spec.scores, ref, spec.units, 8)


@pytest.mark.slow
@pytest.mark.parametrize("share_prefix", [False, True])
def test_shards_add_up_to_score(smol, sentiment_pairs, share_prefix):
    model, tok = smol
    pairs = sentiment_pairs[:10]
    ref = score(model, tok, pairs, ["head"], batch_size=3, progress=False, share_prefix=share_prefix)
    parts = [score_shard(model, tok, pairs, ["head"], r, 3, batch_size=3, share_prefix=share_prefix) for r in range(3)]
    total = {"head": parts[0]["head"] + parts[1]["head"] + parts[2]["head"]}
    assert [p["head"].n for p in parts] == [4, 3, 3]  # batches of 3, 3, 3, 1: rank 0 gets the first and the last
    _assert_same(total, ref, select(total, 8), 8)


def test_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # a typed flag: argparse refuses it, before anything loads
        main(["fit", "--pairs", str(PAIRS), "--nproc", "0", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "--nproc: expected an integer >= 1, got '0'" in capsys.readouterr().err
    assert main(["fit", "--pairs", str(tmp_path / "missing.jsonl"), "--nproc", "2", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="rank"):
        shard([1, 2], 2, 2)
