"""The llama.cpp LoRA adapter GGUF (austeer.gguf_lora): read back with the ``gguf`` package, it has llama.cpp's
keys, names and shapes, and holds exactly :func:`austeer.lora.lora_factors`. (Running it in llama.cpp is not
done here.)"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from austeer.cli import main
from austeer.gguf_lora import base_arch, export_gguf_lora
from austeer.gguf_meta import STEER_KEY
from austeer.gguf_write import gguf_tensors
from austeer.io import OutputExistsError
from austeer.lora import lora_factors
from austeer.models import fingerprint
from austeer.momentum import Unit
from austeer.spec import SteerSpec
from tests.conftest import tiny_model


def _spec(model: torch.nn.Module) -> SteerSpec:
    """head (two AUs) and ffn + neuron (three on one map) in layer 0, neuron in the last layer: ranks 2, 3, 1."""
    last = int(fingerprint(model)["n_layers"]) - 1
    units = [Unit("head", 0, 4, 1.0), Unit("head", 0, 9, -0.5), Unit("ffn", 0, 2, 0.7)]
    units += [Unit("neuron", 0, 30, -0.9), Unit("neuron", 0, 31, 0.4), Unit("neuron", last, 5, 0.8)]
    return SteerSpec(units=units, alpha=3.0, fingerprint=fingerprint(model))


def _read(path: Path) -> tuple[dict[str, object], dict[str, tuple[list[int], str, np.ndarray]]]:
    """The file's keys and ``{name: (GGUF shape ne, type, float32 values as numpy rows)}``."""
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {}
    for t in reader.tensors:
        ne = [int(n) for n in t.shape]
        values = np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(ne[::-1])
        tensors[t.name] = (ne, t.tensor_type.name, values)
    return fields, tensors


def _check_layout(fields: dict[str, object], tensors: dict, factors: dict, arch: str, names: dict[str, str]) -> None:
    rank = 3
    assert fields["general.architecture"] == arch
    assert (fields["general.type"], fields["adapter.type"], fields["adapter.lora.alpha"]) == ("adapter", "lora", 3.0)
    assert STEER_KEY in fields
    assert len(tensors) == 2 * len(factors)
    for path, (a, b) in factors.items():
        name = names[path]
        (ne_a, _, got_a), (ne_b, _, got_b) = tensors[f"{name}.lora_a"], tensors[f"{name}.lora_b"]
        assert ne_a == [a.shape[1], rank] and ne_b == [rank, b.shape[0]]  # a.ne[1] == b.ne[0] == r
        assert np.array_equal(got_a, a.numpy()) and np.array_equal(got_b, b.numpy())


def test_smollm2_adapter_gguf_matches_its_source_gguf(smol, tmp_path):
    model = smol[0]
    spec = _spec(model)
    out = export_gguf_lora(model, spec, tmp_path / "pos.gguf")
    fields, tensors = _read(out)
    factors = lora_factors(model, spec)
    names = {
        "model.layers.0.self_attn.o_proj": "blk.0.attn_output.weight",
        "model.layers.0.mlp.down_proj": "blk.0.ffn_down.weight",
        "model.layers.29.mlp.down_proj": "blk.29.ffn_down.weight",
    }
    _check_layout(fields, tensors, factors, "llama", names)
    arch, base = base_arch(model)  # the source GGUF's tensors (read once, cached)
    assert arch == "llama" and base is not None
    for name in names.values():  # llama.cpp's check: base.ne[0] == a.ne[0], base.ne[1] == b.ne[1]
        assert base[name][0] == tensors[f"{name}.lora_a"][0][0] and base[name][1] == tensors[f"{name}.lora_b"][0][1]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_hf_model_adapter_gguf_uses_austeers_gguf_names(tmp_path, family):
    model = tiny_model(family)  # no GGUF behind it: the names of austeer's own GGUF writer
    spec = _spec(model)
    fields, tensors = _read(export_gguf_lora(model, spec, tmp_path / "a.gguf"))
    written = {hf_name.removesuffix(".weight"): (name, w) for name, hf_name, w in gguf_tensors(model)}
    factors = lora_factors(model, spec)
    _check_layout(fields, tensors, factors, family, {path: written[path][0] for path in factors})
    for path, (a, b) in factors.items():
        w = written[path][1]  # numpy rows [out, in], as llama.cpp holds the base tensor
        assert (w.shape[1], w.shape[0]) == (a.shape[1], b.shape[0])


@pytest.mark.parametrize(("dtype", "tol"), [("f16", 1e-3), ("bf16", 1e-2)])
def test_half_precision(smol, tmp_path, dtype, tol):
    model = smol[0]
    spec = _spec(model)
    _, tensors = _read(export_gguf_lora(model, spec, tmp_path / "a.gguf", dtype=dtype))
    for path, (a, _) in lora_factors(model, spec).items():
        name = "blk.29.ffn_down.weight" if "29" in path else None
        if name:
            _, kind, got = tensors[f"{name}.lora_a"]
            assert kind == dtype.upper() and np.allclose(got, a.numpy(), rtol=tol, atol=0)


def test_refusals_and_ownership(smol, tmp_path, capsys):
    model = smol[0]
    theirs = tmp_path / "theirs.gguf"
    theirs.write_bytes(b"not ours")
    with pytest.raises(OutputExistsError):
        export_gguf_lora(model, _spec(model), theirs)
    assert theirs.read_bytes() == b"not ours"
    gemma = tiny_model("gemma2")  # no GGUF and a family austeer does not write
    with pytest.raises(ValueError, match="llama and qwen2 families"):
        export_gguf_lora(
            gemma, SteerSpec([Unit("head", 0, 1, 1.0)], 2.0, fingerprint=fingerprint(gemma)), tmp_path / "g"
        )
    spec_dir = tmp_path / "res"
    SteerSpec([Unit("residual", 0, 1, 1.0)], alpha=2.0, fingerprint=fingerprint(model)).save(spec_dir)
    argv = ["export", "--steer", str(spec_dir), "--format", "gguf-lora", "--out", str(tmp_path / "o.gguf")]
    assert main([*argv, "--model", str(tmp_path / "no-such-model")]) == 2  # before the model loads
    assert "'residual'" in capsys.readouterr().err
    argv = ["export", "--steer", str(spec_dir), "--format", "gguf-lora", "--out", str(theirs)]
    assert main([*argv, "--model", str(tmp_path / "no-such-model")]) == 2
    assert "not written by austeer" in capsys.readouterr().err


def test_cli_export(tmp_path, capsys):
    model = tiny_model("qwen2")
    model.save_pretrained(tmp_path / "qwen2")
    _spec(model).save(tmp_path / "spec")
    argv = ["export", "--steer", str(tmp_path / "spec"), "--format", "gguf-lora", "--out", str(tmp_path / "a.gguf")]
    capsys.readouterr()
    assert main([*argv, "--model", str(tmp_path / "qwen2"), "--dtype", "float32", "--lora-dtype", "f16"]) == 0
    assert "--lora " in capsys.readouterr().out
    assert {t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "a.gguf").tensors} == {"F16"}
