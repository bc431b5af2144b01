"""Reliability issue, items 2 and 9: numbers that overflow a dtype, and numeric flags that are silently wrong.

Every test runs the real CLI (``austeer.cli.main``) or the library on the real embedded model. "Before the
model loads" is checked by replacing the loader with one that fails the test if it is ever called.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import re
import shutil
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import austeer
import austeer.models.loading
from austeer.cli import build_parser, main
from austeer.cli.argtypes import INT_MAX, Either, Number, NumberList
from austeer.core.momentum import Unit
from austeer.core.spec import SpecError, SteerSpec, load

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

    monkeypatch.setattr(austeer.models.loading, "load_model", refuse)


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


@pytest.mark.slow
def test_gguf_export_refuses_a_fold_that_overflows_its_storage_type(fitted, tmp_path, capsys):
    """alpha 1e5: finite gains and float32 weights, but the folded o_proj columns exceed float16's 65504."""
    out = tmp_path / "m.gguf"
    argv = ["export", "--format", "gguf", "--gguf-dtype", "f16", "--steer", str(fitted), "--out", str(out)]
    assert main([*argv, "--alpha", "1e5"]) == 2
    err = _one_line_error(capsys, loaded=True)
    assert "spec: alpha: folding the gain" in err and "attn_output.weight makes a weight" in err, err
    assert "not finite in float16 (largest finite value 6.55e+04)" in err
    assert not out.exists()


# ---------------------------------------------------------------- item 9: every numeric flag is typed


@functools.cache
def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _numeric_flags() -> list[tuple[str, str, Any]]:
    """``(subcommand, flag, argtype)`` for every flag whose type is one of :mod:`austeer.cli.argtypes`."""
    return [
        (name, action.option_strings[-1], action.type)
        for name, p in _subparsers().items()
        for action in p._actions
        if action.option_strings and isinstance(action.type, Number | Either | NumberList)
    ]


FLAGS = _numeric_flags()


@functools.cache
def _required(command: str) -> tuple[str, ...]:
    """The smallest argv that satisfies ``command``'s required arguments (values are never read)."""
    argv = []
    for action in _subparsers()[command]._actions:
        value = str(action.choices[0]) if action.choices else "x"
        if not action.option_strings:
            argv.append(value)
        elif action.required:
            argv += [action.option_strings[-1], value]
    return tuple(argv)


def test_every_numeric_flag_uses_a_typed_argtype():
    """A flag with a bare int/float type, or a number default but no argtype, would escape the tests below."""
    untyped = [
        (name, action.option_strings)
        for name, p in _subparsers().items()
        for action in p._actions
        if action.type in (int, float)
        or (
            isinstance(action.default, int | float)
            and not isinstance(action.default, bool)
            and not isinstance(action.type, Number | Either | NumberList)
        )
    ]
    assert not untyped
    assert len(FLAGS) >= 40 and {"fit", "sweep", "serve", "control-vector", "inspect", "compare"} <= {
        f[0] for f in FLAGS
    }


def _exact(text: str) -> int | float:
    """The value ``text`` denotes: an int for an integer literal, else the nearest float (inf beyond range)."""
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)


def _number_ok(t: Number, text: str) -> bool:
    try:
        value = _exact(text) if t.integer else float(text)  # 10**400 as a float is inf
    except ValueError:  # not a number at all
        return False
    if t.integer and not isinstance(value, int):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    high = t.high if t.high is not None else (INT_MAX if t.integer else None)
    if t.low is not None and (value < t.low or (t.low_open and value == t.low)):
        return False
    return high is None or not (value > high or (t.high_open and value == high))


def _parsed(argtype: Any, text: str) -> tuple[bool, Any]:
    """Whether the argtype declares ``text`` legitimate (its kind and bounds, not a list of flags), and its value."""
    if isinstance(argtype, Either):
        ok = [c for c in argtype.choices if _number_ok(c, text)]
        return (True, _parsed(ok[0], text)[1]) if ok else (False, None)
    if isinstance(argtype, NumberList):
        ok, value = _parsed(argtype.item, text)
        return ok, [value]
    ok = _number_ok(argtype, text)
    return ok, (_exact(text) if argtype.integer else float(text)) if ok else None


def _check(command: str, flag: str, argtype: Any, text: str) -> None:
    argv = [command, f"{flag}={text}", *_required(command)]  # "=": "-1e5" is a value, not an option
    ok, want = _parsed(argtype, text)
    if ok:
        got = getattr(_subparsers()[command].parse_args(argv[1:]), flag.lstrip("-").replace("-", "_"))
        assert got == want and type(got) is type(want), (argv, got)
        return
    err = io.StringIO()
    with (
        patch.object(austeer.models.loading, "load_model", _refuse),
        redirect_stderr(err),
        pytest.raises(SystemExit) as exit_,
    ):
        main(argv)
    assert exit_.value.code == 2, argv
    line = err.getvalue()
    assert line.count("\n") == 1 and line.startswith(f"austeer: error: argument {flag}: "), (argv, line)


def _refuse(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the model was loaded")


BAD = ["nan", "inf", "-inf", "0", "-1", "-0.5", "1e400", str(10**400), "2.5", "1e3", "", "ten"]


@pytest.mark.parametrize("command,flag,argtype", FLAGS, ids=[f"{c}{f}" for c, f, _ in FLAGS])
def test_numeric_flag_refuses_bad_values_in_one_line_before_the_model_loads(command, flag, argtype):
    for text in BAD:
        _check(command, flag, argtype, text)


TEXTS = st.one_of(
    st.sampled_from(BAD),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-400, max_value=400).map(lambda e: f"1e{e}"),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FLAGS), TEXTS)
def test_numeric_flags_accept_exactly_what_their_argtype_declares(flag, text):
    _check(*flag, text)


def test_the_issue_examples_are_refused_before_the_model_loads(fitted, tmp_path, capsys, no_model_load):
    out = tmp_path / "sweep"
    sweep, cv = ["sweep", "--task", "copa", "--out", str(out)], ["control-vector", "--pairs", str(PAIRS), "--out", "c"]
    cases = [
        ([*sweep, "--val-limit", "-1"], "argument --val-limit: expected an integer >= 1"),
        (["inspect", "--steer", str(fitted), "--out", "r.html", "--max-prompts", "-1"], "argument --max-prompts"),
        ([*cv, "--layer", "29.7"], "argument --layer: expected a fraction of the depth >= 0 and < 1 or a whole"),
        ([*cv, "--layer", "-1"], "argument --layer: expected a fraction"),
        ([*sweep, "--alpha", "1,nan"], "argument --alpha: item 2 of '1,nan': expected a finite number"),
        ([*sweep, "--alpha", "1e39"], "--alpha 1e+39: the gain 1 + alpha * beta reaches 1e+39, not finite in float32"),
        (["compare", "--task", "copa", "--out", str(out), "--batch-size", "0"], "argument --batch-size: expected"),
    ]
    for argv, needle in cases:
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        assert code == 2, argv
        err = _one_line_error(capsys)
        assert needle in err, (argv, err)
    assert not out.exists()


def test_output_under_a_file_names_the_file_before_the_model_loads(fitted, tmp_path, capsys, no_model_load):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    for argv in (
        ["fit", "--pairs", str(PAIRS), "--out", str(blocker / "spec")],
        ["export", "--steer", str(fitted), "--out", str(blocker / "m")],
        ["eval", "--task", "copa", "--out", str(blocker / "e.json")],
    ):
        assert main(argv) == 2
        err = _one_line_error(capsys)
        assert f"{blocker} is a file, not a directory" in err and "File exists" not in err, err
    assert blocker.read_text() == "keep me"


def test_spec_without_scores_names_its_directory(fitted, tmp_path, capsys, no_model_load):
    d = Path(shutil.copytree(fitted, tmp_path / "spec"))
    (d / "scores.safetensors").unlink()
    assert main(["generate", "hi", "--steer", str(d), "--k", "4"]) == 2
    assert f"{d}: this spec has no stored scores" in _one_line_error(capsys)


def test_control_vector_layer_beyond_the_model_says_how_many_layers(tmp_path, capsys):
    out = tmp_path / "c.gguf"
    argv = ["control-vector", "--pairs", str(PAIRS), "--out", str(out), "--limit", "2", "--layer", "100"]
    assert main(argv) == 2
    err = _one_line_error(capsys, loaded=True)
    assert "layer 100 is out of range: the model has 30 layers (valid 0..29" in err, err
    assert not out.exists()
