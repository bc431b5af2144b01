"""The generated section of docs/COMPARISON.md from the results of ``scripts/evidence.py``: the confirmatory
tables and plots, the comparisons, the dose-response and frontier tables and plots, per model.

    python scripts/evidence.py --render-only     # (re)writes the section from docs/results/<model>/
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results"

DOC = ROOT / "docs" / "COMPARISON.md"


def markers(model: str) -> tuple[str, str]:
    """The lines around ``model``'s generated section of COMPARISON.md (one section per model)."""
    return (
        f"<!-- BEGIN GENERATED (scripts/evidence.py {model}) -->",
        f"<!-- END GENERATED (scripts/evidence.py {model}) -->",
    )


#: the kinds of results ``scripts/evidence.py`` writes, each ``<kind>_<task>[<label>].json`` in a model's folder
KINDS = ("confirm", "compare", "dose", "frontier")


def read_results(where: Path) -> dict[str, list[tuple[Path, dict[str, Any]]]]:
    """Every result file of one model's folder by kind (:data:`KINDS`), each with its path, in name order: the one
    reader of the results that COMPARISON.md and RESULTS.md render (a confirm file without its steered half is an
    unfinished run and is left out)."""
    found = {kind: [(p, json.loads(p.read_text())) for p in sorted(where.glob(f"{kind}_*.json"))] for kind in KINDS}
    found["confirm"] = [(p, d) for p, d in found["confirm"] if "steered" in d]
    return found


def rendered_models() -> list[str]:
    """The models whose section COMPARISON.md holds."""
    text = DOC.read_text(encoding="utf-8")
    return re.findall(r"<!-- BEGIN GENERATED \(scripts/evidence\.py (\S+)\) -->", text)


def _acc_line(name: str, base: list[int], steered: list[int]) -> str:
    from austeer.stats import discordant, mcnemar

    n = len(base)
    a, b = sum(base) / n, sum(steered) / n
    se = (b * (1 - b) / n) ** 0.5
    fixed, broken = discordant(base, steered)
    p = mcnemar(fixed, broken)
    return f"| {name} | {n} | {a:.3f} | {b:.3f} ± {se:.3f} | {b - a:+.3f} | {fixed} / {broken} | {p:.3g} |"


def confirm_table(data: dict[str, Any], fresh_from: int) -> list[str]:
    """The confirmatory test's description and table (seen, fresh and all items; all only when no item was
    seen before). ``fresh_from``: used when the file does not record its own."""
    base, steered = data["unsteered"]["correct"], data["steered"]["correct"]
    c = data["config"]
    fresh_from = data.get("fresh_from", fresh_from)
    note = (data.get("note") or "").strip()
    note = note if not note or note.endswith(".") else note + "."
    if fresh_from and note:  # the note says where the configuration came from and why items were seen
        seen = f"Items 0-{fresh_from - 1} were evaluated with steering before this run, items {fresh_from}+ never: "
    elif fresh_from:
        seen = (
            f"Items 0-{fresh_from - 1} were the test items of the earlier exploratory sweep that chose the "
            f"configuration on val; items {fresh_from}+ were never evaluated before. "
        )
    else:
        seen = "No test item of this task was evaluated with steering before this run. "
    rows = (
        [
            _acc_line(f"seen (0-{fresh_from - 1})", base[:fresh_from], steered[:fresh_from]),
            _acc_line(f"**fresh ({fresh_from}+)**", base[fresh_from:], steered[fresh_from:]),
        ]
        if fresh_from
        else []
    )
    return [
        f"**Confirmatory test** ({data['task']}, {data['dtype']}): one configuration fixed before this run "
        f"(site {c['site']}, k={c['k']}, alpha={c['alpha']:g}, {c['pairs']} pairs), the unsteered and the steered "
        f"model on every test item. {seen}{note + ' ' if note else ''}"
        f"Neutral-text ppl {data['unsteered']['metrics']['ppl']:.2f} -> {data['steered']['metrics']['ppl']:.2f}.\n",
        "| items | n | unsteered | steered ± se | change | fixed / broken | McNemar p |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        _acc_line("**all**" if not fresh_from else "all", base, steered),
        "",
    ]


def render_confirm(data: dict[str, Any], where: Path, fresh_from: int) -> list[str]:
    """The confirmatory table and its plot."""
    lines = confirm_table(data, fresh_from)
    img = plot_confirm(data, where / f"confirm_{data['task']}.png", fresh_from)
    lines.append(f"![confirmatory test]({img.relative_to(DOC.parent)})\n")
    return lines


def plot_confirm(data: dict[str, Any], out: Path, fresh_from: int) -> Path:
    """Accuracy (95% interval) of the unsteered and the steered model on seen, fresh and all items."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    base, steered = data["unsteered"]["correct"], data["steered"]["correct"]
    fresh_from = data.get("fresh_from", fresh_from)
    groups = {"seen": slice(0, fresh_from), "fresh": slice(fresh_from, None), "all": slice(None)}
    if not fresh_from:
        groups = {"all": slice(None)}
    fig = Figure(figsize=(6, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for j, (label, outcomes_) in enumerate((("unsteered", base), ("steered", steered))):
        xs, ys, es = [], [], []
        for i, part in enumerate(groups.values()):
            v = outcomes_[part]
            p = sum(v) / len(v)
            xs.append(i + (j - 0.5) * 0.3)
            ys.append(p)
            es.append(1.96 * (p * (1 - p) / len(v)) ** 0.5)
        ax.bar(xs, ys, 0.3, yerr=es, capsize=3, label=label)
    ax.set_xticks(range(len(groups)), [f"{k} ({len(base[v])})" for k, v in groups.items()])
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("accuracy")
    c = data["config"]
    ax.set_title(f"{data['task']}: AUSteer {c['site']} k={c['k']} alpha={c['alpha']:g} (fixed in advance)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def where_of(out: Path, model: str) -> Path:
    return out / model.replace("embedded:", "").replace("/", "_")


def render(model: str, fresh_from: int) -> None:
    from austeer.evaluation.compare import Comparison
    from austeer.io import write_between
    from austeer.report.comparison import merged, plot_comparison, plot_overview, settings_line, summary_table, table

    where = where_of(OUT, model)
    parts = [f"## {model}\n"]
    results = read_results(where)
    runs = results["compare"]
    if runs:
        tasks = merged([Comparison.from_json(data) for _, data in runs])
        img = plot_overview(tasks, where / "overview.png", force=True)
        unsteered = [c.task for c in tasks if all(r.n_steered == 0 for r in c.results)]
        only = (
            f" On {', '.join(unsteered)} only methods that steer nothing were compared (steering: the dose-response "
            "and confirmatory tests below)."
            if unsteered
            else ""
        )
        parts += [
            "**Overview**: every method compared on each task, on the same test items; each method's result from "
            "the run that gave it the most configurations to choose from on val (the runs are below). Bold: the "
            "best steering method; `sig`: its z against the unsteered model; `fixed/broken`, `p`: McNemar's "
            f"paired test.{only} Plot: each method's change over the unsteered model with its paired 95% "
            "interval.\n",
            summary_table(tasks) + "\n",
            f"![overview]({img.relative_to(DOC.parent)})\n",
        ]
    for _, data in results["confirm"]:
        parts += render_confirm(data, where, fresh_from)
    for path, data in runs:
        comp = Comparison.from_json(data)
        minutes = data.get("seconds", 0) / 60
        cap = data.get("capability_run")
        cap_line = (
            f"; capability change: {cap['items_per_task']} val items of each other shipped multiple-choice task, "
            f"each method's choice rebuilt from the same pairs in {cap['dtype']} ({cap['seconds'] / 60:.0f} min, "
            "`evidence.py --stages capability`)"
            if cap
            else ""
        )
        parts.append(
            f"**Comparison** ({comp.task}, {data.get('dtype', '')}, {minutes:.0f} min): {settings_line(comp)}"
            f"{'; pairs read with their shared prompt once' if data.get('share_prefix') else ''}{cap_line}.\n"
        )
        parts.append(table(comp) + "\n")
        img = plot_comparison(comp, where / f"{path.stem}.png", force=True)
        parts.append(f"![{comp.task} comparison]({img.relative_to(DOC.parent)})\n")
    for path, data in results["dose"]:
        parts += render_dose(data, where, path.stem)
    for path, data in results["frontier"]:
        parts += render_frontier(data, where, path.stem)
    write_between(DOC, *markers(model), "\n".join(parts))


def render_dose(data: dict[str, Any], where: Path, stem: str) -> list[str]:
    """The dose-response plot and its points per site."""
    from austeer.evaluation.compare import DoseRow
    from austeer.report.comparison import dose_table, plot_dose
    from austeer.tasks import get_task

    rows = [DoseRow(**r) for r in data["rows"]]
    task, st = data["task"], data["settings"]
    img = plot_dose(rows, task, get_task(task).metric, where / f"{stem}.png", force=True)
    n = int(rows[0].metrics.get("n_items", 0)) if rows else 0
    lines = [
        f"**Dose-response** ({task}, {data['dtype']}, {data.get('seconds', 0) / 60:.0f} min): the top-k AUs of each "
        f"site (ranked on {st['pairs']} pairs) steered at alpha {st['alpha']:g}, {n} test items; "
        "k = 0 is the unsteered model; each cell: metric (neutral-text perplexity).\n",
        dose_table(rows),
        "",
        f"![{task} dose-response]({img.relative_to(DOC.parent)})\n",
    ]
    return lines


def render_frontier(data: dict[str, Any], where: Path, stem: str) -> list[str]:
    """The frontier plots (neutral and continuation perplexity) and its points with their standard errors."""
    from austeer.evaluation.compare import FrontierRow
    from austeer.report.comparison import frontier_table, plot_frontier
    from austeer.tasks import get_task

    task, limit = data["task"], data["settings"]["limit"]
    metric = get_task(task).metric
    rows = [FrontierRow(**r) for r in data["rows"]]
    minutes = data.get("seconds", 0) / 60
    st = data["settings"]
    n = st["pairs"]
    file = Path(st.get("pairs_file") or "").name
    source = f"the first {n} written pairs of `{file}`" if file else f"the task's pairs from its first {n} pair prompts"
    lines = [
        f"**Frontier** ({task}, {data['dtype']}, {minutes:.0f} min): each method at a fixed configuration "
        f"({', '.join(f'{m} {c}' for m, c in data['configs'].items())}) over its strengths, first {limit} test "
        f"items, steering from {source}; `prompt` steers nothing (strength = worked "
        "examples after the task's instruction: 0 or 3).\n"
    ]
    for x in ("ppl", "cont_ppl"):
        img = plot_frontier(rows, task, metric, x, where / f"{stem}_{x}.png", force=True)
        lines.append(f"![{task} frontier ({x})]({img.relative_to(DOC.parent)})\n")
    return [*lines, frontier_table(rows, metric), ""]
