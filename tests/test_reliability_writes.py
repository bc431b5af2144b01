"""Reliability of austeer's writes and reads: single-file outputs replace only what austeer wrote and never an
input (item 1); bad output paths fail before any work and a failed write leaves the old output (item 5); outputs
follow the umask (item 10); a spec read while it is re-saved is one version (item 3). On the real embedded model
and the shipped sentiment pairs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import austeer
from austeer.cli import main
from tests.conftest import DATA

PAIRS = DATA / "pairs" / "sentiment.jsonl"
EVAL_ITEMS = [
    {"prompt": f"Review: {text}\nPositive or negative?", "choices": ["positive", "negative"], "answer": a}
    for text, a in [("Great film.", 0), ("Awful plot.", 1), ("Loved it.", 0), ("Boring.", 1)]
]


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The CLI's stderr: exactly one line ``austeer: error: ...``, no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("austeer: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def spec_dir(smol, sentiment_pairs, tmp_path_factory) -> Path:
    model, tok = smol
    spec = austeer.fit(model, tok, sentiment_pairs[:8], site="head", k=4, progress=False)
    return spec.save(tmp_path_factory.mktemp("spec") / "s")


@pytest.fixture
def custom(tmp_path) -> tuple[Path, Path]:
    """A pairs file and an eval file of a custom task (4 items: 2 val, 2 test)."""
    pairs, items = tmp_path / "my.jsonl", tmp_path / "e.jsonl"
    shutil.copy(PAIRS, pairs)
    items.write_text("".join(json.dumps(it) + "\n" for it in EVAL_ITEMS))
    return pairs, items


def eval_args(pairs: Path, items: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--task", "custom", "--pairs", str(pairs), "--eval", str(items), "--out", str(out), *extra]


# -- item 1: a single-file output replaces only what austeer wrote, never an input


def test_eval_never_writes_over_its_input(custom, capsys):
    pairs, items = custom
    before, mode = pairs.read_bytes(), pairs.stat().st_mode
    for extra in ((), ("--force",)):
        assert main(eval_args(pairs, items, pairs, *extra)) == 2
        line = one_error_line(capsys)
        assert f"{pairs}: is an input of this command" in line and "even with --force" in line
    assert pairs.read_bytes() == before and pairs.stat().st_mode == mode


def test_eval_replaces_its_own_output_only(custom, tmp_path, capsys):
    pairs, items = custom
    out = tmp_path / "result.json"
    out.write_text('{"mine": true}\n')
    assert main(eval_args(pairs, items, out)) == 2
    line = one_error_line(capsys)
    assert f"{out}: this file was not written by austeer" in line and "--force" in line
    assert out.read_text() == '{"mine": true}\n'
    assert main(eval_args(pairs, items, out, "--force")) == 0
    first = json.loads(out.read_text())
    assert first["written_by"] == "austeer:eval" and first["metrics"]["n_items"] == 2
    assert main(eval_args(pairs, items, out, "--split", "test")) == 0  # its own output: replaced
    assert json.loads(out.read_text())["split"] == "test"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.jsonl", "my.jsonl", "result.json"]


def test_inspect_keeps_a_browsers_saved_page(spec_dir, tmp_path, capsys):
    """A page saved by a browser: ``saved.html`` and ``saved_files/`` holding only images."""
    page, files = tmp_path / "saved.html", tmp_path / "saved_files"
    files.mkdir()
    (files / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\nnot ours")
    page.write_text("<html>my page</html>")
    assert main(["inspect", "--steer", str(spec_dir), "--out", str(page)]) == 2
    assert f"{page}: this file was not written by austeer" in one_error_line(capsys)
    page.unlink()
    assert main(["inspect", "--steer", str(spec_dir), "--out", str(page)]) == 2
    assert f"{files}: it is not 'figures' output austeer wrote" in one_error_line(capsys)
    assert (files / "logo.png").read_bytes() == b"\x89PNG\r\n\x1a\nnot ours"
    assert not page.exists()


def test_report_replaces_its_own_report_and_refuses_others(smol, spec_dir, tmp_path):
    from austeer.io import OutputExistsError
    from austeer.report import build_report

    model, tok = smol
    out = tmp_path / "r.html"
    kw = {"n_units": 1, "n_tokens": 2, "progress": False}
    build_report(model, tok, austeer.load(spec_dir), out, **kw)
    build_report(model, tok, austeer.load(spec_dir), out, **kw)  # austeer's own report and figures: replaced
    assert 'content="austeer:report"' in out.read_text()
    out.write_text("<html>edited by hand</html>")
    with pytest.raises(OutputExistsError, match="not written by austeer"):
        build_report(model, tok, austeer.load(spec_dir), out, **kw)
    assert out.read_text() == "<html>edited by hand</html>"


@pytest.mark.parametrize("name", ["compare.json", "compare.md", "compare.png", "dose.json", "dose.png"])
def test_compare_refuses_files_it_did_not_write(custom, tmp_path, capsys, name):
    pairs, items = custom
    out = tmp_path / "cmp"
    out.mkdir()
    (out / name).write_text("keep")
    args = ["compare", "--task", "custom", "--pairs", str(pairs), "--eval", str(items), "--out", str(out)]
    assert main([*args, "--methods", "austeer", "--budget", "1", "--pairs-limit", "4"]) == 2
    assert f"{out / name}: this file was not written by austeer" in one_error_line(capsys)
    assert (out / name).read_text() == "keep"


@pytest.mark.parametrize("name", ["tune.json", "tune.png", "caa.safetensors"])
def test_tune_refuses_files_it_did_not_write(tmp_path, capsys, name):
    out = tmp_path / "t"
    out.mkdir()
    (out / name).write_text("keep")
    assert main(["tune", "--pairs", str(PAIRS), "--out", str(out), "--sites", "head", "--budget", "1"]) == 2
    assert f"{out / name}: this file was not written by austeer" in one_error_line(capsys)
    assert (out / name).read_text() == "keep"


def test_fit_with_force_never_deletes_its_input(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    pairs = out / "pairs.jsonl"
    shutil.copy(PAIRS, pairs)
    assert main(["fit", "--pairs", str(pairs), "--k", "4", "--limit", "8", "--out", str(out), "--force"]) == 2
    assert f"{out}: holds an input of this command ({pairs})" in one_error_line(capsys)
    assert pairs.read_bytes() == PAIRS.read_bytes()
