"""The committed documents are a function of the committed results: docs/COMPARISON.md's generated sections and
docs/RESULTS.md re-render from docs/results/ byte for byte, and every figure they show is drawn from them."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import matplotlib.image as mpimg

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


def test_every_figure_a_section_shows_is_drawn_from_the_results(tmp_path: Path) -> None:
    model = "embedded:qwen2.5-coder-1.5b-instruct"
    results = tmp_path / "results"
    shutil.copytree(RESULTS / "qwen2.5-coder-1.5b-instruct", results / "qwen2.5-coder-1.5b-instruct")
    for png in results.rglob("*.png"):
        png.unlink()
    section = comparison_section(model, results, tmp_path)
    shown = re.findall(r"!\[[^]]*\]\(([^)]+)\)", section)
    assert len(shown) == len({*shown}) >= 10
    for name in shown:
        image = mpimg.imread(tmp_path / name)
        assert image.shape[0] > 200 and image.shape[1] > 400 and image.std() > 0, name
    assert sorted(str(p.relative_to(tmp_path)) for p in results.rglob("*.png")) == sorted(shown)
