"""Issue 12, items 2-6 (spec files): one test per behaviour, on the embedded model and the shipped pairs."""

from __future__ import annotations

import json
import math
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch

import austeer
from austeer.cli import main
from austeer.core.fit import EvidenceWarning
from austeer.core.momentum import Unit
from austeer.core.pairs import PairsFormatError, read_pairs
from austeer.core.spec import SpecError, SteerSpec, load
from austeer.serving.batched import RowSteer, row_gains

DATA = Path(__file__).resolve().parents[1] / "src" / "austeer" / "data"
PAIRS = DATA / "pairs" / "sentiment.jsonl"


@pytest.fixture(scope="module")
def fitted(smol, sentiment_pairs, tmp_path_factory) -> Path:
    """A spec fitted on 6 shipped pairs and saved (read-only: tests copy it before editing)."""
    model, tok = smol
    spec = austeer.fit(model, tok, sentiment_pairs[:6], site="head", k=8, alpha=3.0, progress=False)
    return spec.save(tmp_path_factory.mktemp("fitted") / "spec")


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / "spec"))


def _edit(directory: Path, change) -> Path:
    path = directory / "steer.json"
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))
    return directory


def _every_path(model, tok, spec: SteerSpec, tmp_path: Path) -> list[str]:
    """The error message of each steering path (hook, fold, export, batched rows) for ``spec``."""
    messages = []
    calls = [
        lambda: austeer.apply(model, spec).__enter__(),
        lambda: austeer.fold(model, spec),
        lambda: austeer.export(model, tok, spec, tmp_path / "m"),
        lambda: row_gains(model, [None, RowSteer(spec)]),
    ]
    for call in calls:
        with pytest.raises(SpecError) as err:
            call()
        messages.append(str(err.value))
    return messages


# ---------------------------------------------------------------- item 2: units in range, once


def test_spec_file_with_layer_minus_one_is_refused_with_file_and_field(fitted, tmp_path):
    d = _edit(_copy(fitted, tmp_path), lambda o: o["units"][3].update(layer=-1))
    with pytest.raises(SpecError, match=r"steer\.json: units\[3\]\.layer: -1 is out of range 0\.\.29$"):
        load(d)
    d = _edit(d, lambda o: o["units"][3].update(layer=0, index=576))
    with pytest.raises(SpecError, match=r"steer\.json: units\[3\]\.index: 576 is out of range 0\.\.575"):
        load(d)


def test_built_spec_with_negative_layer_is_refused(smol):
    model, _ = smol
    with pytest.raises(SpecError, match=r"units\[0\]\.layer: expected an integer >= 0, found -1"):
        SteerSpec(units=[Unit("head", -1, 5, 1.0)], alpha=2.0)
    fp = austeer.core.spec.fingerprint(model)
    with pytest.raises(SpecError, match=r"units\[0\]\.layer: -1 is out of range 0\.\.29"):
        SteerSpec(units=[Unit("head", -1, 5, 1.0)], alpha=2.0, fingerprint=fp)


def test_hook_fold_export_and_rows_reject_the_same_out_of_range_unit(smol, tmp_path):
    model, tok = smol
    for unit, field in ((Unit("head", 30, 5, 1.0), "layer: 30"), (Unit("ffn", 2, 576, 1.0), "index: 576")):
        spec = SteerSpec(units=[Unit("head", 1, 1, 0.5), unit], alpha=2.0)  # no fingerprint: checked on the model
        messages = _every_path(model, tok, spec, tmp_path)
        assert len(set(messages)) == 1 and f"units[1].{field} is out of range" in messages[0]
    assert not (tmp_path / "m").exists()


def test_duplicate_units_are_refused_built_and_loaded(fitted, tmp_path):
    with pytest.raises(SpecError, match=r"units\[1\]: head layer 3 index 7 is listed twice \(also units\[0\]\)"):
        SteerSpec(units=[Unit("head", 3, 7, 0.5), Unit("head", 3, 7, 0.5)], alpha=2.0)
    d = _edit(_copy(fitted, tmp_path), lambda o: o["units"].append(dict(o["units"][0])))
    with pytest.raises(SpecError, match=r"steer\.json: units\[8\]: .* is listed twice \(also units\[0\]\)"):
        load(d)


# ---------------------------------------------------------------- item 3: no NaN or inf anywhere


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_alpha_is_refused_by_every_path(smol, tmp_path, value):
    model, tok = smol
    spec = SteerSpec(units=[Unit("head", 1, 1, 0.5)], alpha=2.0)
    with pytest.raises(SpecError, match="alpha: expected a finite number"):
        austeer.export(model, tok, spec, tmp_path / "m", alpha=value)
    assert not (tmp_path / "m").exists()
    with pytest.raises(SpecError, match="alpha: expected a finite number"):
        spec.with_alpha(value)
    with pytest.raises(SpecError, match="alpha: expected a finite number"):
        SteerSpec(units=[Unit("head", 1, 1, 0.5)], alpha=value)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("alpha", "NaN", r"steer\.json: alpha: expected a finite number, found nan"),
        ("beta", "1e6", r"steer\.json: units\[0\]\.beta: 1000000\.0 is out of range \[-1, 1\]"),
        ("beta", "Infinity", r"steer\.json: units\[0\]: beta: expected a finite number in \[-1, 1\], found inf"),
        ("info", '{"note": [1, -Infinity]}', r"steer\.json: info: expected an object \(its numbers finite\)"),
    ],
)
def test_spec_file_with_non_finite_or_huge_numbers_is_refused(fitted, tmp_path, field, value, message):
    d = _copy(fitted, tmp_path)
    obj = json.loads((d / "steer.json").read_text())
    if field == "beta":
        obj["units"][0]["beta"] = "__X__"
    else:
        obj[field] = "__X__"
    (d / "steer.json").write_text(json.dumps(obj).replace('"__X__"', value))
    with pytest.raises(SpecError, match=message):
        load(d)


def test_cli_refuses_non_finite_alpha_and_non_positive_counts(fitted, tmp_path, capsys):
    cases = [
        ["fit", "--pairs", str(PAIRS), "--out", str(tmp_path / "s"), "--alpha", "nan"],
        ["fit", "--pairs", str(PAIRS), "--out", str(tmp_path / "s"), "--k", "0"],
        ["fit", "--pairs", str(PAIRS), "--out", str(tmp_path / "s"), "--limit", "0"],
        ["fit", "--pairs", str(PAIRS), "--out", str(tmp_path / "s"), "--limit", "-1"],
        ["fit", "--pairs", str(PAIRS), "--out", str(tmp_path / "s"), "--max-length", "0"],
        ["fit", "--pairs", str(PAIRS), "--out", str(tmp_path / "s"), "--batch-size", "0"],
        ["generate", "hi", "--steer", str(fitted), "--alpha", "nan"],
        ["generate", "hi", "--steer", str(fitted), "--k", "-2"],
        ["export", "--steer", str(fitted), "--out", str(tmp_path / "m"), "--alpha", "inf"],
    ]
    for argv in cases:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2, argv
        assert f"error: argument {argv[-2]}: " in capsys.readouterr().err, argv
    assert not (tmp_path / "s").exists() and not (tmp_path / "m").exists()


# ---------------------------------------------------------------- item 4: degenerate fits


def test_pair_with_identical_answers_is_a_file_line_error(tmp_path):
    lines = PAIRS.read_text().splitlines()[:3]
    same = json.loads(lines[1])
    same["negative"] = same["positive"]
    lines[1] = json.dumps(same)
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(PairsFormatError, match=r"p\.jsonl:2: positive and negative are identical"):
        read_pairs(f)


def test_fit_refuses_non_positive_k_and_lengths(smol, sentiment_pairs):
    model, tok = smol
    for kwargs in ({"k": 0}, {"k": -3}, {"max_length": 0}, {"batch_size": 0}):
        with pytest.raises(ValueError, match=f"{next(iter(kwargs))} must be >= 1"):
            austeer.fit(model, tok, sentiment_pairs[:2], progress=False, **kwargs)


def test_fit_on_one_pair_warns_that_ties_choose_the_units(smol, sentiment_pairs):
    model, tok = smol
    with pytest.warns(EvidenceWarning, match=r"top-8 cut falls among \d+ AUs that tie on \|beta\| and z-score"):
        spec = austeer.fit(model, tok, sentiment_pairs[:1], site="head", k=8, progress=False)
    assert all(abs(u.beta) == 1.0 for u in spec.units)


def test_fit_with_all_zero_betas_warns(smol, sentiment_pairs):
    model, tok = smol
    with pytest.warns(EvidenceWarning, match="every beta is 0 over 2 pairs"):
        austeer.fit(model, tok, sentiment_pairs[:2], site="head", k=4, max_length=1, progress=False)


def test_fit_on_enough_pairs_does_not_warn(smol, sentiment_pairs):
    model, tok = smol
    with warnings.catch_warnings():
        warnings.simplefilter("error", EvidenceWarning)
        austeer.fit(model, tok, sentiment_pairs[:8], site="head", k=4, progress=False)


# ---------------------------------------------------------------- item 5: the fingerprint cannot be switched off


def test_deleting_the_fingerprint_does_not_turn_the_model_check_off(fitted, tmp_path):
    d = _edit(_copy(fitted, tmp_path), lambda o: o.pop("fingerprint"))
    with pytest.raises(SpecError, match=r"steer\.json: fingerprint: missing"):
        load(d)


def test_edited_fingerprint_fails_its_digest(fitted, tmp_path):
    d = _edit(_copy(fitted, tmp_path), lambda o: o["fingerprint"].update(n_layers=40))
    with pytest.raises(SpecError, match=r"steer\.json: fingerprint\.digest: '[0-9a-f]+' does not match"):
        load(d)


def test_model_fingerprint_is_compared_in_full(smol, fitted):
    model, _ = smol
    spec = load(fitted)
    fp = austeer.core.spec.fingerprint(model)
    spec.check_fits(fp)
    with pytest.raises(austeer.core.spec.SpecMismatchError, match="site 'ffn' of width 576, the model's is 64"):
        spec.check_fits(dict(fp, widths=dict(fp["widths"], ffn=64)))  # a site the spec does not steer


# ---------------------------------------------------------------- item 6 (spec files): one clear error each


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3", r"steer\.json: expected a JSON object, found int"),
        ('{"alpha": 1, "units": [], "fingerprint": [1]}', r"steer\.json: fingerprint: expected the model fingerprint"),
        ('{"alpha": 1, "units": 5}', r"steer\.json: units: expected a list of units, found 5"),
        ('{"alpha": 1, "units": [{"site": "head", "layer": 1.5}]}', r"steer\.json: units\[0\]: layer: expected an int"),
    ],
)
def test_malformed_steer_json_names_file_and_field(fitted, tmp_path, text, message):
    d = _copy(fitted, tmp_path)
    (d / "steer.json").write_text(text)
    with pytest.raises(SpecError, match=message):
        load(d)


def _corrupt(kind: str, path: Path) -> None:
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "pickled":
        path.write_bytes(pickle.dumps({"head.pos": torch.zeros(2)}))
    elif kind == "garbage":
        path.write_bytes(b"\x00\xff" * 64)
    elif kind == "missing key":
        from safetensors.torch import load_file, save_file

        t = load_file(str(path))
        del t["head.neg"]
        save_file(t, str(path))


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated", "not a readable safetensors file"),
        ("pickled", "not a readable safetensors file"),
        ("garbage", "not a readable safetensors file"),
        ("missing key", r"head\.neg: missing \(expected head\.pos, head\.neg, head\.total, head\.squares\)"),
    ],
)
def test_corrupt_scores_file_names_file_and_field(fitted, tmp_path, kind, message):
    d = _copy(fitted, tmp_path)
    _corrupt(kind, d / "scores.safetensors")
    with pytest.raises(SpecError, match=r"scores\.safetensors: " + message):
        load(d)
