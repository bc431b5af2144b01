"""A spec as a LoRA adapter (austeer.exports.lora): PEFT loads it and computes the hooked function.

Measured here (float32, CPU, PEFT 0.21.2): base + adapter through ``peft.PeftModel`` against austeer's hooks,
max |logit gap| / max |logit| about 1e-6 on the real SmolLM2 for head, neuron, ffn and ffn + neuron on one map
(the steering itself moves the logits by 0.1-0.2); the tests allow 1e-4.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import peft  # the dev extra installs it: these tests run in CI, never skip
import pytest
import torch
from peft.helpers import rescale_adapter_scale
from safetensors.torch import load_file

from austeer.cli import main
from austeer.core.momentum import Unit
from austeer.core.sites import fold_module, site_width, weight_of
from austeer.core.spec import SpecError, SteerSpec, fingerprint
from austeer.core.steer import apply, folded
from austeer.exports.lora import export_lora, lora_factors, vllm_max_lora_rank
from austeer.io import OutputExistsError
from tests.conftest import tiny_model

TOL = 1e-4  # relative: max |gap| / max |logit|


def _spec(model: torch.nn.Module, sites: list[str], alpha: float = 3.0) -> SteerSpec:
    """Three AUs per site in the first layer, one in the last (so the ranks differ and get padded)."""
    last = int(fingerprint(model)["n_layers"]) - 1
    units = []
    for site in sites:
        width = site_width(model, site)
        units += [Unit(site, 0, 1, 1.0), Unit(site, 0, width // 2, -0.8), Unit(site, 0, width - 1, 0.6)]
        units.append(Unit(site, last, 3 + len(units), -1.0))
    return SteerSpec(units=units, alpha=alpha, fingerprint=fingerprint(model))


@contextmanager
def _peft(model: torch.nn.Module, path: Path) -> Iterator[torch.nn.Module]:
    """``model`` wrapped with the adapter at ``path``; the adapter is removed when the block ends."""
    wrapped = peft.PeftModel.from_pretrained(model, str(path))
    try:
        yield wrapped
    finally:
        wrapped.unload()


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


def _gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _ids(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(1, int(model.config.vocab_size), (1, 8))


@pytest.fixture(scope="module")
def smol_base(smol) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids for SmolLM2 and its unsteered logits (computed once)."""
    ids = _ids(smol[0])
    return ids, _logits(smol[0], ids)


def _check_peft_equals_hooks(
    model: torch.nn.Module, spec: SteerSpec, out: Path, base: tuple[torch.Tensor, torch.Tensor] | None = None
) -> None:
    ids, base_logits = base if base is not None else (_ids(model), _logits(model, _ids(model)))
    with apply(model, spec):
        hooked = _logits(model, ids)
    with _peft(model, export_lora(model, spec, out)) as wrapped:
        adapted = _logits(wrapped, ids)
    assert _gap(adapted, hooked) <= TOL
    assert _gap(hooked, base_logits) > 100 * TOL  # the steering itself is far above the tolerance


@pytest.mark.parametrize("sites", [["head"], ["neuron"], ["ffn"], ["ffn", "neuron"]])
def test_peft_adapter_equals_hooks_on_smollm2(smol, smol_base, tmp_path, sites):
    _check_peft_equals_hooks(smol[0], _spec(smol[0], sites), tmp_path / "adapter", smol_base)
    assert torch.equal(_logits(smol[0], smol_base[0]), smol_base[1])  # unloaded: the model is as it was


@pytest.mark.parametrize(
    ("family", "site"),
    [("llama", "head"), ("llama", "neuron"), ("llama", "ffn"), ("qwen2", "head"), ("qwen2", "ffn")]
    + [("gpt2", "head"), ("gpt2", "neuron")],  # GPT-2's Conv1D: fan_in_fan_out; its ffn has a bias (refused)
)
def test_peft_adapter_equals_hooks_on_tiny_families(tmp_path, family, site):
    model = tiny_model(family)
    _check_peft_equals_hooks(model, _spec(model, [site], alpha=40.0), tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is (family == "gpt2")


@pytest.mark.parametrize("scale", [0.5, -1.5, 2.0])
def test_peft_scale_is_the_spec_at_alpha_times_scale(smol, tmp_path, scale):
    model = smol[0]
    spec = _spec(model, ["head", "ffn"])  # different maps: no cross term
    ids = _ids(model)
    with apply(model, spec, alpha=spec.alpha * scale):
        hooked = _logits(model, ids)
    with _peft(model, export_lora(model, spec, tmp_path / "a")) as wrapped, rescale_adapter_scale(wrapped, scale):
        adapted = _logits(wrapped, ids)
    assert _gap(adapted, hooked) <= TOL


@pytest.mark.parametrize("sites", [["head"], ["neuron"], ["ffn"], ["ffn", "neuron"]])
def test_w_plus_ba_is_the_fold(smol, sites):
    model = smol[0]
    spec = _spec(model, sites)
    factors = lora_factors(model, spec)
    before = {path: model.get_submodule(path).weight.detach().clone() for path in factors}
    with folded(model, spec):
        for path, (a, b) in factors.items():
            fold = model.get_submodule(path).weight.detach()
            assert torch.allclose(before[path] + b @ a, fold, rtol=0, atol=1e-6 * float(fold.abs().max()))
            assert not torch.equal(fold, before[path])


def test_adapter_files(smol, tmp_path):
    model = smol[0]
    spec = _spec(model, ["head", "neuron"])
    factors = lora_factors(model, spec)
    out = export_lora(model, spec, tmp_path / "a", dtype="bf16")
    config = json.loads((out / "adapter_config.json").read_text())
    rank = 3  # three AUs in layer 0, one in the last layer, padded
    assert (config["r"], config["lora_alpha"], config["bias"], config["use_dora"]) == (rank, rank, "none", False)
    assert config["target_modules"] == [
        "model.layers.0.mlp.down_proj",
        "model.layers.0.self_attn.o_proj",
        "model.layers.29.mlp.down_proj",
        "model.layers.29.self_attn.o_proj",
    ]
    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert len(tensors) == 8
    for path, (a, b) in factors.items():
        got_a, got_b = (
            tensors[f"base_model.model.{path}.lora_A.weight"],
            tensors[f"base_model.model.{path}.lora_B.weight"],
        )
        assert got_a.dtype == got_b.dtype == torch.bfloat16
        assert torch.equal(got_a, a.bfloat16()) and torch.equal(got_b, b.bfloat16())
    a, b = factors["model.layers.29.self_attn.o_proj"]
    assert a.shape == (rank, 576) and bool((a[1:] == 0).all()) and bool((b[:, 1:] == 0).all())  # zero padding
    assert json.loads((out / "austeer_steer.json").read_text())["alpha"] == spec.alpha
    assert (vllm_max_lora_rank(rank), vllm_max_lora_rank(9), vllm_max_lora_rank(513)) == (8, 16, None)


def test_refusals(smol, tmp_path):
    model = smol[0]
    fp = fingerprint(model)
    cases = {
        "residual": SteerSpec([Unit("residual", 3, 5, 1.0)], alpha=2.0, fingerprint=fp),
        "positions": SteerSpec([Unit("head", 3, 5, 1.0)], alpha=2.0, fingerprint=fp, positions="last"),
        "empty": SteerSpec([], alpha=2.0, fingerprint=fp),
    }
    for why, spec in cases.items():
        with pytest.raises(SpecError, match=why):
            export_lora(model, spec, tmp_path / why)
        assert not (tmp_path / why).exists()
    gpt2 = tiny_model("gpt2")
    with pytest.raises(SpecError, match=r"transformer\.h\.0\.mlp\.c_proj has a bias"):
        lora_factors(gpt2, _spec(gpt2, ["ffn"]))


def test_cli_refuses_before_loading_the_model(smol, tmp_path, capsys):
    fp = fingerprint(smol[0])
    for why, spec in {
        "residual": SteerSpec([Unit("residual", 3, 5, 1.0)], alpha=2.0, fingerprint=fp),
        "positions": SteerSpec([Unit("head", 3, 5, 1.0)], alpha=2.0, fingerprint=fp, positions="last"),
        "empty": SteerSpec([], alpha=2.0, fingerprint=fp),
    }.items():
        spec.save(tmp_path / why)
        argv = ["export", "--steer", str(tmp_path / why), "--format", "lora", "--out", str(tmp_path / "out")]
        assert main([*argv, "--model", str(tmp_path / "no-such-model")]) == 2  # refused before the model loads
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and why in err and "no-such-model" not in err
        assert not (tmp_path / "out").exists()


def test_cli_export(tmp_path, capsys):
    model = tiny_model("gpt2")
    model.save_pretrained(tmp_path / "gpt2")
    capsys.readouterr()  # its progress bar
    _spec(model, ["ffn"]).save(tmp_path / "ffn")
    argv = ["export", "--format", "lora", "--model", str(tmp_path / "gpt2"), "--dtype", "float32"]
    assert main([*argv, "--steer", str(tmp_path / "ffn"), "--out", str(tmp_path / "out")]) == 2  # biased ffn
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' loading bar
    assert last.startswith("austeer: error: spec: site 'ffn'") and "has a bias" in last
    assert not (tmp_path / "out").exists()
    _spec(model, ["head", "neuron"]).save(tmp_path / "spec")
    assert main([*argv, "--steer", str(tmp_path / "spec"), "--out", str(tmp_path / "out")]) == 0
    assert "--max-lora-rank 8" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["r"] == 3


def test_never_replaces_what_austeer_did_not_write(smol, tmp_path):
    model = smol[0]
    spec = _spec(model, ["head"])
    out = export_lora(model, spec, tmp_path / "a")
    export_lora(model, spec.with_alpha(1.0), out)  # its own adapter: replaced
    assert json.loads((out / "austeer_steer.json").read_text())["alpha"] == 1.0
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("keep")
    with pytest.raises(OutputExistsError):
        export_lora(model, spec, tmp_path / "b")
    assert (tmp_path / "b" / "notes.txt").read_text() == "keep"


def test_fold_module_paths_come_from_the_family_table(smol):
    model = smol[0]
    factors = lora_factors(model, _spec(model, ["head"]))
    module, _ = fold_module(model, "head", 0)
    assert model.get_submodule(next(iter(factors))) is module
    assert tuple(weight_of(module).shape) == (576, 576)
