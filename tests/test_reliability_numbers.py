"""Reliability issue, items 2 and 9: numbers that overflow a dtype, and numeric flags that are silently wrong.

Every test runs the real CLI (``austeer.cli.main``) or the library on the real embedded model. "Before the
model loads" is checked by replacing the loader with one that fails the test if it is ever called.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import austeer
import austeer.models
from austeer.cli import main
from austeer.momentum import Unit
from austeer.spec import SpecError, SteerSpec, load

DATA = Path(__file__).resolve().parents[1] / "src" / "austeer" / "data"
PAIRS = DATA / "pairs" / "sentiment.jsonl"


@pytest.fixture(scope="module")
def fitted(smol, sentiment_pairs, tmp_path_factory) -> Path:
    """A spec fitted on 6 shipped pairs (every |beta| is 1 on so few pairs); tests copy it before editing."""
    model, tok = smol
    spec = austeer.fit(model, tok, sentiment_pairs[:6], site="head", k=8, alpha=3.0, progress=False)
    return spec.save(tmp_path_factory.mktemp("fitted") / "spec")


@pytest.fixture()
def no_model_load(monkeypatch):
    """Fail the test if anything loads a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(austeer.models, "load_model", refuse)


def _one_line_error(capsys, loaded: bool = False) -> str:
    """The error line; alone on stderr unless the model ``loaded`` (its progress bar comes first)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    if loaded:
        err = err.splitlines()[-1]
    assert "\n" not in err and err.startswith("austeer: error: "), err
    return err


# ---------------------------------------------------------------- item 2: gains that overflow their dtype


@pytest.mark.parametrize(
    "command",
    [
        ["export"],
        ["export", "--format", "gguf"],
        ["generate", "The movie was"],
    ],
    ids=["export", "export-gguf", "generate"],
)
def test_alpha_whose_gain_overflows_float32_is_refused_before_the_model_loads(
    fitted, tmp_path, capsys, no_model_load, command
):
    out = tmp_path / ("m.gguf" if "gguf" in command else "m")
    argv = [*command, "--steer", str(fitted), "--alpha", "1e39"]
    argv += ["--out", str(out)] if command[0] == "export" else ["--max-new-tokens", "4"]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert "spec: alpha: the gain 1 + alpha * beta" in err and "= 1e+39, not finite in float32" in err, err
    assert "largest finite value 3.403e+38" in err
    assert not out.exists()


def test_alpha_whose_gain_overflows_float16_is_refused_before_the_model_loads(fitted, capsys, no_model_load):
    assert main(["generate", "hi", "--steer", str(fitted), "--alpha", "1e5", "--dtype", "float16"]) == 2
    err = _one_line_error(capsys)
    assert "= 1e+05, not finite in float16 (largest finite value 6.55e+04)" in err, err


def test_spec_file_whose_alpha_overflows_is_refused_naming_file_and_field(fitted, tmp_path, capsys, no_model_load):
    d = Path(shutil.copytree(fitted, tmp_path / "spec"))
    obj = json.loads((d / "steer.json").read_text())
    obj["alpha"] = 1e39
    (d / "steer.json").write_text(json.dumps(obj))
    with pytest.raises(SpecError, match=r"steer\.json: alpha: the gain .* not finite in float32"):
        load(d)
    obj["alpha"] = 1e5  # finite in float32: loads, but not in a float16 model
    (d / "steer.json").write_text(json.dumps(obj))
    assert load(d).alpha == 1e5
    assert main(["generate", "hi", "--steer", str(d), "--dtype", "float16"]) == 2
    err = _one_line_error(capsys)
    assert f"{d / 'steer.json'}: alpha: the gain" in err and "not finite in float16" in err, err


def test_folded_weight_that_overflows_is_refused_and_nothing_changes(smol, tmp_path):
    """Gain 2e38 is finite in float32, but column 416 of layer 3's o_proj holds |w| = 3.2: the fold would be inf."""
    model, tok = smol
    spec = SteerSpec(units=[Unit("head", 3, 416, 1.0)], alpha=2e38)
    before = {k: v.clone() for k, v in model.state_dict().items() if "layers.3." in k}
    message = r"folding the gain 2e\+38 of head layer 3 index 416 into model\.layers\.3\.self_attn\.o_proj\.weight"
    for call in (lambda: austeer.fold(model, spec), lambda: austeer.export(model, tok, spec, tmp_path / "m")):
        with pytest.raises(SpecError, match=message + r" makes a weight -?\S+, not finite in float32"):
            call()
    assert not (tmp_path / "m").exists()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with austeer.apply(model, spec):  # hooks multiply activations, not weights: the gain itself is finite
        pass


def test_gguf_export_refuses_a_fold_that_overflows_its_storage_type(fitted, tmp_path, capsys):
    """alpha 1e5: finite gains and float32 weights, but the folded o_proj columns exceed float16's 65504."""
    out = tmp_path / "m.gguf"
    argv = ["export", "--format", "gguf", "--gguf-dtype", "f16", "--steer", str(fitted), "--out", str(out)]
    assert main([*argv, "--alpha", "1e5"]) == 2
    err = _one_line_error(capsys, loaded=True)
    assert "spec: alpha: folding the gain" in err and "attn_output.weight makes a weight" in err, err
    assert "not finite in float16 (largest finite value 6.55e+04)" in err
    assert not out.exists()
