"""Property tests of the two readers of user files: ``read_pairs`` and the spec loader ``load``.

The only allowed outcomes are a valid result or the one clean error (a ``ValueError`` subclass whose
message names the file); never another exception type, never a silently wrong spec.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from austeer.core.momentum import SignCounts, select
from austeer.core.pairs import PairsFormatError, read_pairs
from austeer.core.spec import SpecError, SteerSpec, check_units, load, make_fingerprint

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="austeer-fuzz-"))


# ---------------------------------------------------------------- pairs


def _read_pairs_or_clean_error(path: Path) -> None:
    try:
        pairs = read_pairs(path)
    except PairsFormatError as exc:
        assert str(exc).startswith(str(path)), str(exc)
        return
    assert pairs
    for p in pairs:
        assert all(isinstance(v, str) and v.strip() for v in (p.prompt, p.positive, p.negative))
        assert p.system is None or isinstance(p.system, str)
        assert p.positive != p.negative
        "".join((p.prompt, p.positive, p.negative, p.system or "")).encode("utf-8")


@FUZZ
@given(st.binary(max_size=300))
def test_pairs_random_bytes(data):
    d = _workdir()
    try:
        (d / "p.jsonl").write_bytes(data)
        _read_pairs_or_clean_error(d / "p.jsonl")
    finally:
        shutil.rmtree(d)


pair_like = st.fixed_dictionaries(
    {},
    optional={
        "prompt": json_values | st.text(max_size=6),
        "positive": json_values | st.text(max_size=6),
        "negative": json_values | st.sampled_from(["a", "b", " "]),
        "system": json_values,
    },
)


@pytest.mark.slow
@FUZZ
@given(st.lists(pair_like | json_values, min_size=0, max_size=4), st.sampled_from(["\n", "\r\n", "\n\n"]))
def test_pairs_random_json_lines(objects, sep):
    d = _workdir()
    try:
        (d / "p.jsonl").write_text(sep.join(json.dumps(o) for o in objects), encoding="utf-8")
        _read_pairs_or_clean_error(d / "p.jsonl")
    finally:
        shutil.rmtree(d)


# ---------------------------------------------------------------- spec directories


def _valid_spec(directory: Path) -> Path:
    """A small saved spec (3 layers, two sites of width 8) fitted on 5 synthetic pairs."""
    gen = torch.Generator().manual_seed(0)
    counts = {}
    for site in ("head", "ffn"):
        c = SignCounts.zeros(3, 8)
        c.update(torch.randn(5, 3, 8, generator=gen))
        counts[site] = c
    fp = make_fingerprint("llama", 3, {"head": 8, "ffn": 8, "neuron": 16})
    spec = SteerSpec(select(counts, 6), 4.0, "m", fp, 5, ["head", "ffn"], counts)
    return spec.save(directory / "spec")


def _load_or_clean_error(directory: Path) -> None:
    try:
        spec = load(directory)
    except SpecError as exc:
        assert str(exc).startswith(str(directory)), str(exc)
        return
    # a loaded spec is always valid: structure, its own fingerprint, and every k it can be resized to
    spec.validate(beta_range=True)
    spec.check_fits(spec.fingerprint)
    json.dumps(spec.to_json(), allow_nan=False)
    for k in (1, 5, 100):
        if spec.scores:
            resized = spec.with_k(k)
            check_units(resized.units, resized.alpha, beta_range=True)
            resized.check_fits(spec.fingerprint)


@pytest.fixture(scope="module")
def valid_dir(tmp_path_factory) -> Path:
    return _valid_spec(tmp_path_factory.mktemp("fuzz"))


def _with(valid_dir: Path, steer: bytes | None = None, scores: bytes | None = None) -> Path:
    d = _workdir() / "spec"
    shutil.copytree(valid_dir, d)
    if steer is not None:
        (d / "steer.json").write_bytes(steer)
    if scores is not None:
        (d / "scores.safetensors").write_bytes(scores)
    return d


def test_the_valid_spec_loads(valid_dir):
    _load_or_clean_error(valid_dir)
    assert load(valid_dir).k == 6


@FUZZ
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_spec_random_steer_json(valid_dir, data):
    d = _with(valid_dir, steer=data)
    try:
        _load_or_clean_error(d)
    finally:
        shutil.rmtree(d.parent)


def _paths(obj, prefix=()):
    """Every path into a JSON value (dict keys and list indices)."""
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _paths(value, (*prefix, i))


numbers = st.sampled_from([-1, 0, 1, 2, 7, 8, 29, 10**30, -0.5, 1.5, 1e6, float("nan"), float("inf"), True, "3"])


@FUZZ
@given(st.data())
def test_spec_mutated_steer_json(valid_dir, data):
    obj = json.loads((valid_dir / "steer.json").read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(obj) if p]
        path = data.draw(st.sampled_from(paths))
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["replace", "number", "delete", "duplicate"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(parent[path[-1]])
        else:
            parent[path[-1]] = data.draw(numbers if action == "number" else json_values)
    d = _with(valid_dir, steer=json.dumps(obj).encode())
    try:
        _load_or_clean_error(d)
    finally:
        shutil.rmtree(d.parent)


@FUZZ
@given(st.data())
def test_spec_mutated_scores_bytes(valid_dir, data):
    raw = bytearray((valid_dir / "scores.safetensors").read_bytes())
    action = data.draw(st.sampled_from(["truncate", "flip", "random"]))
    if action == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    elif action == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    else:
        raw = bytearray(data.draw(st.binary(max_size=200)))
    d = _with(valid_dir, scores=bytes(raw))
    try:
        _load_or_clean_error(d)
    finally:
        shutil.rmtree(d.parent)


def test_a_pair_count_beyond_int64_is_a_clean_error(valid_dir):
    """Found by the fuzzer in CI: ``n_pairs`` of 10**30 reached the int64 sign counts and raised OverflowError."""
    obj = json.loads((valid_dir / "steer.json").read_text())
    obj["n_pairs"] = 10**30
    d = _with(valid_dir, steer=json.dumps(obj).encode())
    try:
        with pytest.raises(SpecError, match="n_pairs: expected an integer from 0 to 2"):
            load(d)
    finally:
        shutil.rmtree(d.parent)
