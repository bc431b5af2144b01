"""Issue 12, items 1, 6 and 7: austeer never deletes what it did not write, user errors are one line, long texts
are cut to the model's context. On the real embedded model and the shipped sentiment pairs."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import austeer
from austeer.cli import main
from tests.conftest import DATA

PAIRS = DATA / "pairs" / "sentiment.jsonl"


def fit_args(out: Path, *extra: str, pairs: Path | str = PAIRS) -> list[str]:
    return ["fit", "--pairs", str(pairs), "--k", "4", "--limit", "8", "--batch-size", "8", "--out", str(out), *extra]


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The CLI's stderr: exactly one line ``austeer: error: ...``, no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("austeer: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def spec_dir(sentiment_fit, tmp_path_factory) -> Path:
    return sentiment_fit("head", k=4).save(tmp_path_factory.mktemp("spec") / "s")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


# -- item 1: --out replaces only what austeer wrote


def test_fit_refuses_a_directory_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "d"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.txt").write_text("keep")
    assert main(fit_args(out)) == 2
    line = one_error_line(capsys)
    assert str(out) in line and "--force" in line
    assert (out / "thesis.txt").read_text() == "keep" and (out / "sub").is_dir()
    assert main(fit_args(out, "--force")) == 0  # the user insists
    assert (out / "steer.json").is_file() and not (out / "thesis.txt").exists()


@pytest.mark.slow
def test_fit_replaces_its_own_spec_and_leaves_nothing_beside_it(tmp_path):
    out = tmp_path / "d"
    assert main(fit_args(out)) == 0
    assert main(fit_args(out, "--site", "ffn")) == 0
    assert austeer.load(out).sites == ["ffn"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_fit_refuses_a_file_even_with_force(tmp_path, capsys):
    target = tmp_path / "notes"
    target.write_text("keep")
    for extra in ((), ("--force",)):
        assert main(fit_args(target, *extra)) == 2
        assert str(target) in one_error_line(capsys)
    assert target.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]  # no hidden .notes.old-PID


def test_export_refuses_the_spec_it_reads_and_foreign_dirs(spec_dir, tmp_path, capsys):
    assert main(["export", "--steer", str(spec_dir), "--out", str(spec_dir)]) == 2
    line = one_error_line(capsys)
    assert f"{spec_dir}: is an input of this command" in line
    assert (spec_dir / "scores.safetensors").is_file()
    foreign = tmp_path / "model"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("keep")
    assert main(["export", "--steer", str(spec_dir), "--out", str(foreign)]) == 2
    assert str(foreign) in one_error_line(capsys)
    assert (foreign / "thesis.txt").read_text() == "keep"


def test_inspect_refuses_a_figure_folder_it_did_not_write(spec_dir, tmp_path, capsys):
    figures = tmp_path / "r_files"
    figures.mkdir()
    (figures / "thesis.txt").write_text("keep")
    assert main(["inspect", "--steer", str(spec_dir), "--out", str(tmp_path / "r.html")]) == 2
    assert str(figures) in one_error_line(capsys)
    assert (figures / "thesis.txt").read_text() == "keep" and not (tmp_path / "r.html").exists()


def test_a_killed_swap_is_repaired_by_the_next_run(spec_dir, tmp_path):
    """A run killed between moving the old output aside and the new one in: the next run restores the old one
    (so it is never lost) and removes the killed run's temp dir, then writes as usual."""
    from austeer.io import _host, recover

    out = tmp_path / "d"
    pid, host = dead_pid(), _host()
    backup = tmp_path / f".d.old-{pid}-{host}-abcd1234"
    half = tmp_path / f".d.tmp-{pid}-{host}-abcd1234"
    subprocess.run(["cp", "-r", str(spec_dir), str(backup)], check=True)
    half.mkdir()
    (half / "steer.json").write_text("{")
    recover(out)
    assert austeer.load(out).k == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


@pytest.mark.slow
def test_leftovers_of_a_killed_run_are_removed_by_the_next_fit(tmp_path):
    from austeer.io import _host

    out = tmp_path / "d"
    assert main(fit_args(out)) == 0
    pid = dead_pid()
    (tmp_path / f".d.tmp-{pid}-{_host()}-zz_00000").mkdir()
    (tmp_path / f".d.old-{pid}-{_host()}-00000000").mkdir()
    assert main(fit_args(out)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_the_swap_without_exchange_also_replaces(spec_dir, tmp_path, monkeypatch):
    """Where ``renameat2(RENAME_EXCHANGE)`` is missing the two-rename swap runs; the result is the same."""
    import austeer.io

    monkeypatch.setattr(austeer.io, "_exchange", lambda a, b: False)
    spec = austeer.load(spec_dir)
    out = spec.save(tmp_path / "d")
    spec.with_k(2).save(out)
    assert austeer.load(out).k == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


# -- item 6: one line, exit 2, naming the path


def test_pairs_that_are_not_utf8_name_file_and_line(tmp_path, capsys):
    bad = tmp_path / "pairs.jsonl"
    bad.write_bytes(PAIRS.read_bytes().splitlines(keepends=True)[0] + b'{"prompt": "caf\xe9"}\n')
    assert main(fit_args(tmp_path / "out", pairs=bad)) == 2
    assert f"{bad}:2: not UTF-8" in one_error_line(capsys)


def test_pairs_that_are_a_directory(tmp_path, capsys):
    assert main(fit_args(tmp_path / "out", pairs=tmp_path)) == 2
    assert f"{tmp_path}: is a directory" in one_error_line(capsys)


@pytest.mark.parametrize("kind", ["missing", "empty", "relative"])
def test_model_paths_are_checked_without_the_network(kind, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    model = {"missing": str(tmp_path / "no" / "model"), "empty": str(tmp_path), "relative": "no_such_dir"}[kind]
    assert main(fit_args(tmp_path / "out", "--model", model)) == 2
    line = one_error_line(capsys)
    assert f"error: {model}: " in line
    assert ("config.json" if kind == "empty" else "no such file or directory") in line


# -- item 7: texts longer than the context are cut on the left, with a warning


@pytest.mark.slow
def test_texts_longer_than_the_context_are_cut_on_the_left(smol, monkeypatch):
    from austeer.core.collect import last_token_activations
    from austeer.run.generate import generate

    model, tok = smol
    monkeypatch.setattr(model.config, "max_position_embeddings", 64)
    text = "The film was long. " * 100 + "It was great"
    with pytest.warns(UserWarning, match="truncated on the left"):
        got = last_token_activations(model, tok, [text], ["head"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = last_token_activations(model, tok, [text], ["head"], max_length=64)
    torch.testing.assert_close(got["head"], want["head"])
    with pytest.warns(UserWarning, match="truncated on the left to its last 60"):
        [answer] = generate(model, tok, [text], max_new_tokens=4)
    assert isinstance(answer, str)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a text that fits: no warning
        last_token_activations(model, tok, ["It was great"], ["head"])
