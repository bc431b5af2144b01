"""Reliability of austeer's writes and reads: single-file outputs replace only what austeer wrote and never an
input (item 1); bad output paths fail before any work and a failed write leaves the old output (item 5); outputs
follow the umask (item 10); a spec read while it is re-saved is one version (item 3). On the real embedded model
and the shipped sentiment pairs."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import austeer
from austeer.cli import main
from tests.conftest import DATA

PAIRS = DATA / "pairs" / "sentiment.jsonl"
EVAL_ITEMS = [
    {"prompt": f"Review: {text}\nPositive or negative?", "choices": ["positive", "negative"], "answer": a}
    for text, a in [("Great film.", 0), ("Awful plot.", 1), ("Loved it.", 0), ("Boring.", 1)]
]


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The CLI's stderr ends with exactly one line ``austeer: error: ...`` (after progress bars, if the command
    got that far) and holds no traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("austeer: error: ")]
    assert len(errors) == 1 and "Traceback" not in err and err.rstrip("\n").endswith(errors[0]), err
    return errors[0]


@pytest.fixture(scope="module")
def spec_dir(sentiment_fit, tmp_path_factory) -> Path:
    return sentiment_fit("head", k=4).save(tmp_path_factory.mktemp("spec") / "s")


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


@pytest.mark.slow
def test_eval_replaces_its_own_output_only(custom, tmp_path, capsys):
    pairs, items = custom
    out = tmp_path / "result.json"
    out.write_text('{"mine": true}\n')
    assert main(eval_args(pairs, items, out)) == 2
    line = one_error_line(capsys)
    assert f"{out}: this file is not austeer's eval output" in line and "--force" in line
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
    assert f"{page}: this file is not austeer's report output" in one_error_line(capsys)
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
    with pytest.raises(OutputExistsError, match="not austeer.s report output"):
        build_report(model, tok, austeer.load(spec_dir), out, **kw)
    assert out.read_text() == "<html>edited by hand</html>"


@pytest.mark.parametrize("name", ["compare.json", "compare.md", "compare.png", "dose.json", "dose.png"])
def test_compare_refuses_files_it_did_not_write(custom, tmp_path, capsys, name):
    pairs, items = custom
    out = tmp_path / "cmp"
    out.mkdir()
    (out / name).write_text("keep")
    args = ["compare", "--task", "custom", "--pairs", str(pairs), "--eval", str(items), "--out", str(out)]
    assert main([*args, "--methods", "austeer", "--budget", "1", "--pairs-limit", "4", "--doses", "0,2"]) == 2
    assert f"{out / name}: this file is not austeer's" in one_error_line(capsys)
    assert (out / name).read_text() == "keep"


@pytest.mark.parametrize("name", ["tune.json", "tune.png", "caa.safetensors"])
def test_tune_refuses_files_it_did_not_write(tmp_path, capsys, name):
    out = tmp_path / "t"
    out.mkdir()
    (out / name).write_text("keep")
    args = ["tune", "--pairs", str(PAIRS), "--out", str(out), "--sites", "head", "--budget", "1"]
    assert main([*args, "--method", "austeer,caa"]) == 2
    assert f"{out / name}: this file is not austeer's" in one_error_line(capsys)
    assert (out / name).read_text() == "keep"


@pytest.mark.parametrize("name", ["sweep.json", "sweep.csv"])
def test_sweep_refuses_files_it_did_not_write(tmp_path, capsys, name):
    out = tmp_path / "sw"
    out.mkdir()
    (out / name).write_text("keep")
    assert main(["sweep", "--task", "copa", "--out", str(out), "--site", "head", "--k", "2", "--alpha", "1"]) == 2
    assert f"{out / name}: this file is not austeer's" in one_error_line(capsys)
    assert (out / name).read_text() == "keep"


def directory_commands(pairs: Path, items: Path) -> dict[str, list[str]]:
    """The commands whose ``--out`` is a directory of their own files, each on a tiny run (``--out`` to add)."""
    return {
        "sweep": ["sweep", "--task", "copa", "--site", "head", "--k", "2", "--alpha", "1"],
        "tune": ["tune", "--pairs", str(pairs), "--sites", "head", "--budget", "1"],
        "compare": ["compare", "--task", "custom", "--pairs", str(pairs), "--eval", str(items), "--methods", "austeer"],
    }


@pytest.mark.parametrize("command", ["sweep", "tune", "compare"])
def test_a_foreign_out_directory_is_refused_before_any_work(custom, tmp_path, capsys, no_model, command):
    """``sweep``, ``tune`` and ``compare`` refuse an ``--out`` directory holding a file they did not write: exit 2,
    one line naming the directory, before the model loads; the user's file is byte for byte kept and nothing is
    added next to it."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_bytes(b"my notes\n")
    assert main([*directory_commands(*custom)[command], "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert f"{out}: it holds 'notes.txt', which austeer did not write" in line
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_bytes() == b"my notes\n"


@pytest.mark.parametrize("command", ["sweep", "tune", "compare"])
def test_a_file_as_out_directory_is_refused_even_with_force(custom, tmp_path, capsys, no_model, command):
    """A file where ``sweep``, ``tune`` or ``compare`` put their directory is a typo: refused even with
    ``--force`` (exit 2, one line naming it, before the model loads), and the file is kept."""
    out = tmp_path / "notes.txt"
    out.write_bytes(b"my notes\n")
    assert main([*directory_commands(*custom)[command], "--out", str(out), "--force"]) == 2
    assert f"{out}: a file is in the way" in one_error_line(capsys)
    assert out.read_bytes() == b"my notes\n"


@pytest.mark.slow
def test_compare_resumes_what_it_measured_and_refuses_another_protocol(custom, tmp_path, capsys):
    """A second ``compare`` into the same ``--out`` with the same protocol keeps the methods already measured
    (an interrupted run loses nothing) and runs only the new one; another budget is refused in one line before
    any work, and ``--force`` starts it over."""
    pairs, items = custom
    out = tmp_path / "cmp"
    base = ["compare", "--task", "custom", "--pairs", str(pairs), "--eval", str(items), "--out", str(out)]
    base += ["--pairs-limit", "6", "--dtype", "float32"]
    assert main([*base, "--methods", "austeer", "--budget", "1"]) == 0
    first = json.loads((out / "compare.json").read_text())["results"]
    capsys.readouterr()
    assert main([*base, "--methods", "austeer,sadi", "--budget", "1"]) == 0
    assert "resuming" in capsys.readouterr().err
    again = json.loads((out / "compare.json").read_text())["results"]
    assert [r["method"] for r in again] == ["austeer", "sadi"] and again[0] == first[0]  # trial times too: kept
    assert main([*base, "--methods", "austeer", "--budget", "2"]) == 2
    assert "an earlier compare run with a different protocol" in one_error_line(capsys)
    assert json.loads((out / "compare.json").read_text())["results"] == again
    assert main([*base, "--methods", "austeer", "--budget", "2", "--force"]) == 0
    (redone,) = json.loads((out / "compare.json").read_text())["results"]
    assert len(redone["trials"]) == 2


def test_kinds_of_files_do_not_mix(custom, tmp_path, capsys):
    """An austeer ``compare.json`` is not an ``eval --out`` austeer may replace."""
    from austeer.io import signed_json

    pairs, items = custom
    theirs = tmp_path / "compare.json"
    theirs.write_text(signed_json({"task": "custom"}, "compare"))
    assert main(eval_args(pairs, items, theirs)) == 2
    assert f"{theirs}: this file is not austeer's eval output" in one_error_line(capsys)
    assert json.loads(theirs.read_text()) == {"written_by": "austeer:compare", "task": "custom"}


def test_fit_with_force_never_deletes_its_input(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    pairs = out / "pairs.jsonl"
    shutil.copy(PAIRS, pairs)
    assert main(["fit", "--pairs", str(pairs), "--k", "4", "--limit", "8", "--out", str(out), "--force"]) == 2
    assert f"{out}: holds an input of this command ({pairs})" in one_error_line(capsys)
    assert pairs.read_bytes() == PAIRS.read_bytes()


# -- item 5: a bad output path fails before any work; a failed write leaves the old output


def fit_args(out: Path | str, *extra: str) -> list[str]:
    return ["fit", "--pairs", str(PAIRS), "--k", "4", "--limit", "4", "--batch-size", "4", "--out", str(out), *extra]


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the command gets as far as loading the model."""
    import austeer.models.loading

    def refuse(*_, **__):
        raise AssertionError("the model was loaded: the output path should have been refused before any work")

    monkeypatch.setattr(austeer.models.loading, "load_model", refuse)


@contextmanager
def tmpfs(where: Path, options: str) -> Iterator[bool]:
    """A tmpfs mounted at ``where`` (True), or False where this process may not mount (not root, no CAP_SYS_ADMIN)."""
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield False
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


@contextmanager
def read_only_dir(where: Path) -> Iterator[Path]:
    """A directory this process cannot write into: a read-only tmpfs as root, mode 0555 otherwise."""
    if os.geteuid() != 0:
        where.mkdir()
        where.chmod(0o555)
        try:
            yield where
        finally:
            where.chmod(0o755)
        return
    with tmpfs(where, "ro,size=64k") as mounted:
        if not mounted:
            pytest.skip("root without the right to mount a read-only tmpfs: no directory it cannot write")
        yield where


def test_fit_into_a_read_only_dir_fails_before_the_fit(tmp_path, capsys, no_model):
    with read_only_dir(tmp_path / "ro") as ro:
        assert main(fit_args(ro / "spec")) == 2
        line = one_error_line(capsys)
        assert f"{ro / 'spec'}: cannot write there: {ro} is" in line
        assert ("read-only file system" if os.geteuid() == 0 else "permission denied") in line


def test_names_too_long_fail_before_the_fit_and_temp_names_stay_short(tmp_path, capsys, monkeypatch):
    import austeer.models.loading

    real = austeer.models.loading.load_model
    loads: list[int] = []
    monkeypatch.setattr(austeer.models.loading, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    assert main(fit_args(tmp_path / ("s" * 256))) == 2
    assert "is 256 bytes long; the file system allows 255" in one_error_line(capsys)
    assert main(["eval", "--task", "copa", "--limit", "2", "--out", str(tmp_path / ("e" * 251 + ".json"))]) == 2
    assert "is 256 bytes long" in one_error_line(capsys)
    assert loads == [] and list(tmp_path.iterdir()) == []
    longest = tmp_path / ("s" * 255)  # fits: the temp sibling's name no longer grows with it
    assert main(fit_args(longest)) == 0
    assert austeer.load(longest).k == 4 and [p.name for p in tmp_path.iterdir()] == [longest.name]


@pytest.mark.parametrize("out", [".", "..", "sub/.."])
def test_the_current_directory_or_above_is_refused_even_with_force(tmp_path, capsys, monkeypatch, no_model, out):
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub" if out == ".." else tmp_path)
    assert main(fit_args(out, "--force")) == 2
    assert f"{out}: is the current directory or one above it" in one_error_line(capsys)


def test_a_full_disk_keeps_the_old_spec(spec_dir, tmp_path, capsys):
    """A real full file system where this process may mount one: a 128 KiB tmpfs holds the old spec
    (without scores) but not the new one (about 550 KB of scores)."""
    with tmpfs(tmp_path / "small", "size=128k") as mounted:
        if not mounted:
            pytest.skip("no right to mount a tmpfs: test_disk_full_* below simulate the full disk instead")
        out = tmp_path / "small" / "spec"
        old = dataclasses.replace(austeer.load(spec_dir), scores={})
        old.save(out)
        assert main(fit_args(out)) == 2
        line = one_error_line(capsys)
        assert f"{out}: could not write it (No space left on device); the existing output is unchanged" in line
        assert austeer.load(out).to_json() == old.to_json()
        assert [p.name for p in out.parent.iterdir()] == ["spec"]


def test_disk_full_while_saving_a_spec_keeps_the_old_one(spec_dir, tmp_path, capsys, monkeypatch):
    """The safetensors writer fails half-way with ENOSPC (simulated): one line, the old spec as it was."""
    import austeer.core.spec

    out = tmp_path / "spec"
    old = austeer.load(spec_dir).with_k(2)
    old.save(out)

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(austeer.core.spec, "save_file", full)
    assert main(fit_args(out)) == 2
    line = one_error_line(capsys)
    assert f"{out}: could not write it (No space left on device); the existing output is unchanged" in line
    assert austeer.load(out).to_json() == old.to_json() and [p.name for p in tmp_path.iterdir()] == ["spec"]


@pytest.mark.slow
def test_disk_full_while_writing_a_file_keeps_the_old_one(custom, tmp_path, capsys, monkeypatch):
    """``eval --out``'s final write fails with ENOSPC after a few bytes (simulated): one line, the old file intact."""
    import austeer.io

    pairs, items = custom
    out = tmp_path / "result.json"
    assert main(eval_args(pairs, items, out)) == 0
    before = out.read_bytes()
    real = os.fdopen

    class Full:
        def __init__(self, fd: int, *args, **kwargs) -> None:
            self.fh = real(fd, *args, **kwargs)

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc) -> None:
            self.fh.close()

        def write(self, data: bytes) -> int:
            self.fh.write(data[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(austeer.io.os, "fdopen", Full)
    assert main(eval_args(pairs, items, out, "--split", "test")) == 2
    line = one_error_line(capsys)
    assert f"{out}: could not write it (No space left on device); the existing output is unchanged" in line
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.jsonl", "my.jsonl", "result.json"]


def test_writers_refuse_bad_paths_with_one_line(tmp_path):
    """The library writers check the same rules: a read-only folder and a name too long are one-line errors."""
    from austeer.io import OutputPathError, signed_json, write_output

    with pytest.raises(OutputPathError, match="is 300 bytes long"):
        write_output(tmp_path / ("x" * 300), signed_json({}, "eval"), "eval")
    with read_only_dir(tmp_path / "ro") as ro, pytest.raises(OutputPathError, match="cannot write there"):
        write_output(ro / "e.json", signed_json({}, "eval"), "eval")


# -- item 10: outputs follow the umask, like any file the user writes


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_outputs_follow_the_umask(spec_dir, custom, tmp_path, capsys):
    pairs, items = custom
    before = os.umask(0o027)
    try:
        spec = austeer.load(spec_dir).save(tmp_path / "spec")
        assert main(eval_args(pairs, items, tmp_path / "result.json")) == 0
    finally:
        os.umask(before)
    assert mode(spec) == 0o750
    names = (".austeer", "steer.json", "scores.safetensors")
    assert {p.name: mode(p) for p in spec.iterdir()} == {n: 0o640 for n in names}
    assert mode(tmp_path / "result.json") == 0o640
    spec = austeer.load(spec_dir).save(tmp_path / "spec")  # the session's own umask (usually 022: 755 and 644)
    assert mode(spec) == 0o777 & ~before and mode(spec / "steer.json") == 0o666 & ~before


def test_the_umask_is_read_without_changing_it():
    from austeer.io import umask

    before = os.umask(0o027)
    try:
        assert umask() == 0o027 and umask() == 0o027
    finally:
        os.umask(before)


# -- item 3: a spec read while another process re-saves it is one save, never a mix


WRITER = """
import sys, time
from pathlib import Path
import austeer, austeer.io
a, b, target, stop, exchange = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5]
if exchange == "no":
    austeer.io._exchange = lambda new, old: False  # the two-rename swap of systems without RENAME_EXCHANGE
specs = [austeer.load(a), austeer.load(b)]
print("ready", flush=True)
n = 0
while not stop.exists():
    specs[n % 2].save(target)
    n += 1
print(n)
"""


def same(x: austeer.SteerSpec, y: austeer.SteerSpec) -> bool:
    return (
        x.to_json() == y.to_json()
        and x.scores.keys() == y.scores.keys()
        and all(
            all(
                torch.equal(getattr(x.scores[s], f), getattr(y.scores[s], f))
                for f in ("pos", "neg", "total", "squares")
            )
            for s in x.scores
        )
    )


@pytest.mark.parametrize("exchange", ["yes", "no"])
def test_a_spec_saved_while_it_is_loaded_is_one_save_or_one_line(spec_dir, tmp_path, exchange):
    from austeer.core.momentum import SignCounts
    from austeer.core.spec import SpecError

    a = austeer.load(spec_dir)
    flipped = {s: SignCounts(c.neg, c.pos, -c.total, c.squares, c.n) for s, c in a.scores.items()}
    b = dataclasses.replace(a, scores=flipped).with_k(3)  # other units, other scores
    a.save(tmp_path / "a"), b.save(tmp_path / "b")
    target, stop = tmp_path / "target", tmp_path / "stop"
    a.save(target)
    env = {**os.environ, "PYTHONPATH": str(Path(austeer.__file__).parents[1])}
    args = [sys.executable, "-c", WRITER, str(tmp_path / "a"), str(tmp_path / "b"), str(target), str(stop), exchange]
    writer = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
    seen = {"a": 0, "b": 0, "refused": 0}
    last, switches = "a", 0  # a load that sees another save than the one before: a save happened in between
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and switches < 40:
            try:
                got = austeer.load(target)
            except SpecError as exc:
                assert "was replaced 8 times while it was read" in str(exc) and "\n" not in str(exc)
                seen["refused"] += 1
                continue
            assert same(got, a) or same(got, b), "a load mixed two saves"
            now = "a" if same(got, a) else "b"
            seen[now] += 1
            switches, last = switches + (now != last), now
    finally:
        stop.touch()
        saves = int(writer.communicate(timeout=60)[0].split()[-1])
    assert writer.returncode == 0 and switches >= 10, (saves, switches, seen)
    assert same(austeer.load(target), a) or same(austeer.load(target), b)
