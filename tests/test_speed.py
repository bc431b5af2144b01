"""Speed defaults: ``--dtype auto`` resolution (without the hardware), the CLI's one-time dtype note, and the
unsteered evaluations computed once per run (counted calls)."""

from __future__ import annotations

import argparse

import pytest
import torch

import austeer.evaluation.evaluate
from austeer.evaluation.compare import compare, dose_response
from austeer.evaluation.evaluate import Unsteered
from austeer.models.loading import auto_dtype, cpu_flags, resolve_dtype
from austeer.tasks import get_task


def test_auto_dtype_from_flags():
    assert auto_dtype("cpu", {"fpu", "avx2", "avx512f", "avx512_bf16"})[0] is torch.bfloat16
    assert auto_dtype("cpu", {"amx_tile", "amx_bf16"})[0] is torch.bfloat16
    assert auto_dtype("cpu", {"fpu", "avx2", "avx512f", "avx512_vnni"})[0] is torch.float32  # AVX-512 alone: no
    assert auto_dtype("cpu", set())[0] is torch.float32
    assert auto_dtype("cuda", cuda_bf16=True)[0] is torch.bfloat16
    assert auto_dtype("cuda", cuda_bf16=False)[0] is torch.float32
    assert auto_dtype("mps", {"avx512_bf16"})[0] is torch.float32
    assert resolve_dtype("bfloat16") == (torch.bfloat16, "requested")
    assert resolve_dtype("auto", device="cpu") == auto_dtype("cpu", cpu_flags())


def test_cpu_flags_reads_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse2 avx512_bf16\n\nprocessor\t: 1\nflags: fpu\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx512_bf16"}
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(arm) == {"fp", "asimd", "bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_cli_resolves_auto_once_and_says_so(capsys):
    from austeer.cli.common import load_from_args

    args = argparse.Namespace(model=None, dtype="auto", device=None, device_map=None)
    model, _, _ = load_from_args(args)
    want = resolve_dtype("auto", device="cpu")[0]
    assert next(model.parameters()).dtype is want and args.dtype == str(want).removeprefix("torch.")
    assert f"dtype auto -> {args.dtype}" in capsys.readouterr().err
    load_from_args(args)  # a second load of the same run (a reference copy): same dtype, no second note
    assert "dtype auto" not in capsys.readouterr().err


@pytest.mark.slow
def test_unsteered_baselines_are_evaluated_once(smol, monkeypatch):
    model, tok = smol
    task = get_task("copa")
    calls = {"ppl": 0}
    real = austeer.evaluation.evaluate.perplexity

    def counted(*a, **kw):
        calls["ppl"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(austeer.evaluation.evaluate, "perplexity", counted)
    unsteered = Unsteered(model, tok)
    c = compare(
        model, tok, task, ["austeer"], budget=1, pairs_limit=4, val_limit=3, test_limit=3, progress=False,
        unsteered=unsteered,
    )  # fmt: skip
    # unsteered: val + test (one perplexity); steered: one val trial + the test of the choice
    assert unsteered.evaluations == 2 and calls["ppl"] == 3
    assert c.baseline_val["ppl"] == c.baseline_test["ppl"] == unsteered.ppl
    from austeer.methods.base import gather

    evidence = gather(model, tok, task.pairs(model, tok, limit=4), ["head"], progress=False)
    rows = dose_response(model, tok, task, evidence, ["head"], [0, 2], limit=3, progress=False, unsteered=unsteered)
    # the dose-response's unsteered test (dose 0) is the comparison's: only dose 2 is evaluated
    assert unsteered.evaluations == 2 and calls["ppl"] == 4
    assert rows[0].metrics == c.baseline_test
