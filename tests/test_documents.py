"""The committed documents are a function of the committed results: docs/COMPARISON.md's generated sections and
docs/RESULTS.md re-render from docs/results/ byte for byte, and every figure they show is drawn from them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from austeer.report.evidence import comparison_section, markers, read_sweeps, rendered_models, results_doc

DOCS = Path(__file__).resolve().parents[1] / "docs"
RESULTS = DOCS / "results"


def test_comparison_md_re_renders_identically_from_the_committed_results() -> None:
    text = (DOCS / "COMPARISON.md").read_text(encoding="utf-8")
    models = rendered_models(DOCS / "COMPARISON.md")
    assert models == ["embedded:smollm2-135m-instruct", "embedded:qwen2.5-coder-1.5b-instruct"]
    for model in models:
        begin, end = markers(model)
        committed = text.split(begin, 1)[1].split(end, 1)[0]
        assert committed == "\n" + comparison_section(model, RESULTS, DOCS, plots=False) + "\n", model


def test_results_md_re_renders_identically_from_the_committed_results() -> None:
    committed = (DOCS / "RESULTS.md").read_text(encoding="utf-8")
    machine = re.search(r"^Last written .*$", committed, re.M)
    assert machine is not None
    models = ("embedded:smollm2-135m-instruct", "embedded:gemma3-270m")
    sweeps = {m: read_sweeps(RESULTS / m.split(":")[1]) for m in models}
    assert len(sweeps[models[0]]) == 7  # every task's sweep of the small model is kept
    assert results_doc(sweeps, RESULTS, DOCS, machine.group(0), plots=False) == committed


def test_results_md_figure_re_draws_as_committed(tmp_path: Path) -> None:
    sweeps = {"embedded:smollm2-135m-instruct": read_sweeps(RESULTS / "smollm2-135m-instruct")}
    results_doc(sweeps, RESULTS, tmp_path, "", plots=True)
    drawn, committed = mpimg.imread(tmp_path / "img" / "dose_all.png"), mpimg.imread(DOCS / "img" / "dose_all.png")
    assert drawn.shape == committed.shape and abs(drawn - committed).mean() <= 0.002


@pytest.mark.parametrize("model", ["embedded:smollm2-135m-instruct", "embedded:qwen2.5-coder-1.5b-instruct"])
def test_every_figure_a_section_shows_re_draws_as_committed(model: str, tmp_path: Path) -> None:
    """Each figure of a model's COMPARISON.md section, drawn again from the results alone, is the committed one
    (the same pixels up to a mean difference of 0.002: a changed label or point differs by more, a renderer's
    anti-aliasing by less)."""
    folder = model.split(":")[1]
    results = tmp_path / "results"
    shutil.copytree(RESULTS / folder, results / folder, ignore=shutil.ignore_patterns("*.png"))
    section = comparison_section(model, results, tmp_path)
    shown = re.findall(r"!\[[^]]*\]\(([^)]+)\)", section)
    assert len(shown) == len({*shown}) >= 10
    assert sorted(str(p.relative_to(tmp_path)) for p in results.rglob("*.png")) == sorted(shown)
    for name in shown:
        drawn, committed = mpimg.imread(tmp_path / name), mpimg.imread(DOCS / name)
        assert drawn.shape == committed.shape and abs(drawn - committed).mean() <= 0.002, name


@pytest.mark.slow
def test_evidence_stages_resume_their_own_run_and_refuse_another_before_the_model_loads(tmp_path: Path) -> None:
    """``scripts/evidence.py`` keeps a results file only for the run that wrote it (task, model, dtype, protocol):
    the same command again measures nothing, another alpha is one line before the model loads and leaves the file
    as it was, ``--force`` starts it over."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "evidence.py"
    base = [sys.executable, str(script), "--model", "embedded:smollm2-135m-instruct", "--dtype", "float32"]
    base += ["--stages", "dose", "--tasks", "copa", "--sites", "head", "--doses", "0,2", "--pairs-limit", "8"]
    base += ["--test-limit", "4", "--out", str(tmp_path)]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *extra], capture_output=True, text=True, timeout=600)

    first = run("--alpha", "5")
    assert first.returncode == 0, first.stderr[-2000:]
    path = tmp_path / "smollm2-135m-instruct" / "dose_copa.json"
    written = path.read_text()
    assert [r["k"] for r in json.loads(written)["rows"]] == [0, 2]
    again = run("--alpha", "5")
    assert again.returncode == 0 and "dose copa: done" in again.stdout and path.read_text() == written
    other = run("--alpha", "7")
    assert other.returncode == 2 and path.read_text() == written
    line = other.stderr.strip().splitlines()[-1]
    assert line.startswith("evidence.py: ") and "different protocol" in line and "--force" in line
    assert "Loading" not in other.stderr  # refused before the model loads
    forced = run("--alpha", "7", "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert json.loads(path.read_text())["settings"]["alpha"] == 7.0


@pytest.mark.slow
def test_evidence_compare_stage_starts_a_new_file_and_resumes_it(tmp_path: Path) -> None:
    """The compare stage writes a comparison where none was (every method asked for, calibration added on a
    multiple-choice task), and the same command again measures nothing."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "evidence.py"
    base = [sys.executable, str(script), "--model", "embedded:smollm2-135m-instruct", "--dtype", "float32"]
    base += ["--stages", "compare", "--tasks", "copa", "--methods", "au-add", "--budget", "1", "--pairs-limit", "8"]
    base += ["--val-limit", "4", "--test-limit", "4", "--out", str(tmp_path)]
    first = subprocess.run(base, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    path = tmp_path / "smollm2-135m-instruct" / "compare_copa.json"
    written = path.read_text()
    results = json.loads(written)["results"]
    assert [r["method"] for r in results] == ["au-add", "calibration"]
    assert all(len(r["test_correct"]) == 4 for r in results)
    again = subprocess.run(base, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "compare copa: done" in again.stdout and path.read_text() == written


@pytest.mark.slow
def test_evidence_capability_reuses_what_another_comparison_of_the_task_measured(tmp_path: Path) -> None:
    """The capability stage measures a comparison's choices on the panel once: a second comparison of the same task
    whose method chose the same configuration on the same pairs takes that measurement (and says where from)
    without answering the panel again."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "evidence.py"
    folder = tmp_path / "smollm2-135m-instruct"
    folder.mkdir()
    committed = json.loads((RESULTS / "smollm2-135m-instruct" / "compare_copa.json").read_text())
    committed["results"] = [{**r, "capability": None} for r in committed["results"] if r["method"] == "austeer"]
    committed.pop("capability_run", None)  # a comparison whose capability was not yet measured
    (folder / "compare_copa_again.json").write_text(json.dumps(committed))
    committed["capability_run"] = {"dtype": "float32", "items_per_task": 2, "seconds": 5.0}  # a run stopped early
    (folder / "compare_copa.json").write_text(json.dumps(committed))
    base = [sys.executable, str(script), "--model", "embedded:smollm2-135m-instruct", "--dtype", "float32"]
    base += ["--stages", "capability", "--tasks", "copa", "--panel-items", "2", "--out", str(tmp_path)]
    first = subprocess.run(base, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "capability panel" in first.stderr  # its progress: the panel answered
    measured = json.loads((folder / "compare_copa.json").read_text())["results"][0]["capability"]
    assert measured["n"] == 4 and "measured_in" not in measured  # 2 BoolQ + 2 WinoGrande items
    rerun = subprocess.run(base, capture_output=True, text=True, timeout=600)  # the resumed file is finished
    assert rerun.returncode == 0 and "capability copa: done" in rerun.stdout, rerun.stderr[-2000:]
    again = subprocess.run([*base, "--label", "_again"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "done from other comparisons' measurements" in again.stdout
    assert "capability panel" not in again.stderr  # the panel was not answered
    reused = json.loads((folder / "compare_copa_again.json").read_text())["results"][0]["capability"]
    assert reused == {**measured, "measured_in": "compare_copa.json"}


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--stages", "compare", "--tasks", "copa,nosuchtask"], "unknown task 'nosuchtask'"),
        (["--stages", "compare", "--tasks", "copa", "--methods", "austeer,nosuchmethod"], "nosuchmethod"),
        (["--stages", "dose", "--tasks", "copa", "--sites", "head,nosuchsite"], "unknown site 'nosuchsite'"),
        (["--stages", "frontier", "--tasks", "sentiment", "--strengths", "calibration=1"], "calibration"),
        (["--stages", "nosuchstage", "--tasks", "copa"], "nosuchstage"),
        (["--stages", "compare", "--tasks", "copa", "--pairs-file", "p.jsonl"], "--pairs-file steers the frontier"),
        (["--stages", "capability", "--tasks", "copa"], "no such comparison to measure capability under"),
        (["--stages", "compare", "--tasks", "copa", "--doses", "0,2"], "--doses is read by the dose stage only"),
        (["--stages", "frontier", "--tasks", "sentiment", "--base-from", "d.json"], "--base-from is read by the dose"),
        (
            ["--stages", "frontier", "--tasks", "sentiment", "--prompt-point", "--pairs-limit", "2"],
            "--pairs-limit is 2",
        ),
    ],
)
def test_evidence_names_bad_input_in_one_line_before_the_model_loads(
    tmp_path: Path, flags: list[str], named: str
) -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "evidence.py"
    cmd = [sys.executable, str(script), "--model", "embedded:smollm2-135m-instruct", *flags, "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("evidence.py: ") and named in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ('{"task": "copa", "results": [', "not a comparison austeer wrote"),
        ('{"task": "copa", "rows": []}', "not a comparison austeer wrote"),
        ('{"task": "copa", "settings": {}, "results": [], "capability_run": 3}', "not a comparison austeer wrote"),
        (
            '{"task": "copa", "settings": {}, "results": [], "capability_run": {"dtype": "bfloat16", '
            '"items_per_task": 50, "seconds": 3.0}}',
            "its capability was measured as {'dtype': 'bfloat16', 'items_per_task': 50}",
        ),
    ],
)
def test_evidence_capability_refuses_another_comparison_before_the_model_loads(
    tmp_path: Path, content: str, named: str
) -> None:
    """A broken comparison, or one whose capability was measured another way, is one line and is left as it was."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "evidence.py"
    folder = tmp_path / "smollm2-135m-instruct"
    folder.mkdir()
    (folder / "compare_copa.json").write_text(content)
    cmd = [sys.executable, str(script), "--model", "embedded:smollm2-135m-instruct", "--dtype", "float32"]
    cmd += ["--stages", "capability", "--tasks", "copa", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and named in proc.stderr, proc.stderr[-2000:]
    assert (folder / "compare_copa.json").read_text() == content and len(list(folder.iterdir())) == 1


def test_confirm_table_of_a_run_on_fewer_items_than_were_seen_has_no_fresh_row() -> None:
    """A confirm run with ``--test-limit`` below ``fresh_from`` (a quick check) prints its table: the all row only."""
    from austeer.report.evidence import confirm_table

    data = json.loads((RESULTS / "qwen2.5-coder-1.5b-instruct" / "confirm_copa.json").read_text())
    for side in ("unsteered", "steered"):
        data[side] = {**data[side], "correct": data[side]["correct"][:3]}
    rows = [line for line in confirm_table(data, 200) if line.startswith("| ") and "items" not in line]
    assert len(rows) == 1 and rows[0].startswith("| all | 3 |")


@pytest.mark.slow
def test_evidence_dose_steers_from_the_pairs_file_and_keeps_it_in_its_protocol(smol, tmp_path, monkeypatch) -> None:
    """``--pairs-file`` on the dose stage fits from the written pairs, never the task's own (sentiment's are
    sampled from the model: a run that read them would call the task's ``pairs``), and the file is part of the
    run's protocol: the same stage without it is another run, refused before anything is measured."""
    from austeer.errors import UserError
    from austeer.evaluation.evidence import EvidenceRun, run_stages
    from austeer.tasks.behaviour import BehaviourTask

    def sampled(*args, **kwargs):
        raise AssertionError("the dose stage read the task's pairs, not the pairs file")

    monkeypatch.setattr(BehaviourTask, "pairs", sampled)
    written = Path(__file__).resolve().parents[1] / "src" / "austeer" / "data" / "pairs" / "sentiment.jsonl"
    settings = dict(model="embedded:smollm2-135m-instruct", dtype="float32", method="au-add", sites=("head",))
    run = EvidenceRun(**settings, doses=(2,), pairs_limit=4, test_limit=2, max_new_tokens=4, pairs_file=str(written))
    out = run_stages(run, ["dose"], ["sentiment"], tmp_path, *smol)[("dose", "sentiment")]
    assert out["settings"]["pairs_file"] == str(written) and [r["k"] for r in out["rows"]] == [2]
    with pytest.raises(UserError, match="different protocol"):
        run_stages(
            EvidenceRun(**settings, doses=(2,), pairs_limit=4, test_limit=2), ["dose"], ["sentiment"], tmp_path, *smol
        )


@pytest.mark.slow
def test_evidence_capability_after_compare_reads_the_pairs_once(smol, tmp_path, monkeypatch) -> None:
    """``--stages compare,capability`` on a new comparison: the capability stage is not refused for want of the file
    compare is about to write, measures the panel under every choice, and takes the pairs compare read from the
    run's memo instead of reading them again (on BoolQ's 300 pairs, about half an hour)."""
    import austeer.evaluation.compare as compare_module
    import austeer.methods.base as base
    from austeer.evaluation.evidence import EvidenceRun, run_stages

    reads: list[list[str]] = []

    def counted(model, tokenizer, pairs, sites, *args, **kwargs):
        reads.append(list(sites))
        return gather(model, tokenizer, pairs, sites, *args, **kwargs)

    gather = base.gather
    monkeypatch.setattr(base, "gather", counted)
    monkeypatch.setattr(compare_module, "gather", counted)
    run = EvidenceRun(
        model="embedded:smollm2-135m-instruct", dtype="float32", methods=("au-add",), budget=1, pairs_limit=6,
        val_limit=2, test_limit=2, panel_items=2,
    )  # fmt: skip
    out = run_stages(run, ["compare", "capability"], ["copa"], tmp_path, *smol)
    assert [r["method"] for r in out[("capability", "copa")]["results"]] == ["au-add", "calibration"]
    assert all(r["capability"]["n"] == 4 for r in out[("capability", "copa")]["results"])  # BoolQ and WinoGrande
    assert len(reads) == 1  # once, by compare
