"""The documents generated from committed results: one reader of a model's results folder and one renderer of
every table and plot that ``docs/COMPARISON.md`` (a section per model) and ``docs/RESULTS.md`` show.

The results are what ``scripts/evidence.py`` writes (``<kind>_<task>[<label>].json`` in
``docs/results/<model>/``, :data:`KINDS`) and what ``scripts/results.py``'s sweeps keep
(``docs/results/<model>/<task>.json``). Rendering is a function of those files alone: the committed documents
re-render identically from them (``tests/test_report.py`` checks it), and ``plots=False`` gives the text without
drawing a figure.

Example:
    >>> from pathlib import Path
    >>> found = read_results(Path("docs/results/qwen2.5-coder-1.5b-instruct"))
    >>> [p.name for p, _ in found["confirm"]]
    ['confirm_boolq.json', 'confirm_copa.json', 'confirm_svamp.json']
    >>> model = "embedded:qwen2.5-coder-1.5b-instruct"
    >>> comparison_section(model, Path("docs/results"), Path("docs"), plots=False).splitlines()[0]
    '## embedded:qwen2.5-coder-1.5b-instruct'
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from austeer.evaluation.compare import Comparison, DoseRow, FrontierRow
from austeer.report.comparison import (
    dose_table,
    frontier_table,
    margin,
    merged,
    plot_comparison,
    plot_confirm,
    plot_dose,
    plot_dose_grid,
    plot_frontier,
    plot_overview,
    settings_line,
    summary_table,
    table,
)
from austeer.stats import discordant, mcnemar
from austeer.tasks import TASKS, get_task

#: the kinds of results ``scripts/evidence.py`` writes, each ``<kind>_<task>[<label>].json`` in a model's folder
KINDS = ("confirm", "compare", "dose", "frontier")

#: the model whose results RESULTS.md summarises across tasks (its comparisons ran on every task)
SMALL = "smollm2-135m-instruct"


def markers(model: str) -> tuple[str, str]:
    """The lines around ``model``'s generated section of COMPARISON.md (one section per model)."""
    return (
        f"<!-- BEGIN GENERATED (scripts/evidence.py {model}) -->",
        f"<!-- END GENERATED (scripts/evidence.py {model}) -->",
    )


def rendered_models(doc: Path) -> list[str]:
    """The models whose section the COMPARISON.md at ``doc`` holds."""
    return re.findall(r"<!-- BEGIN GENERATED \(scripts/evidence\.py (\S+)\) -->", doc.read_text(encoding="utf-8"))


def folder_of(results: Path, model: str) -> Path:
    """A model's folder under ``results``: ``embedded:qwen2.5-coder-1.5b-instruct`` ->
    ``results/qwen2.5-coder-1.5b-instruct``."""
    return results / model.replace("embedded:", "").replace("/", "_")


def read_results(where: Path) -> dict[str, list[tuple[Path, dict[str, Any]]]]:
    """Every result file of one model's folder by kind (:data:`KINDS`), each with its path, in name order: the one
    reader of the results that COMPARISON.md and RESULTS.md render (a confirm file without its steered half is an
    unfinished run and is left out)."""
    found = {kind: [(p, json.loads(p.read_text())) for p in sorted(where.glob(f"{kind}_*.json"))] for kind in KINDS}
    found["confirm"] = [(p, d) for p, d in found["confirm"] if "steered" in d]
    return found


def _acc_line(name: str, base: list[int], steered: list[int]) -> str:
    n = len(base)
    a, b = sum(base) / n, sum(steered) / n
    se = (b * (1 - b) / n) ** 0.5
    fixed, broken = discordant(base, steered)
    p = mcnemar(fixed, broken)
    return f"| {name} | {n} | {a:.3f} | {b:.3f} ± {se:.3f} | {b - a:+.3f} | {fixed} / {broken} | {p:.3g} |"


def confirm_table(data: dict[str, Any], fresh_from: int = 200) -> list[str]:
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
        if 0 < fresh_from < len(base)  # a run on fewer items than were seen has no fresh row
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


def comparison_section(model: str, results: Path, doc_dir: Path, fresh_from: int = 200, plots: bool = True) -> str:
    """``model``'s generated section of COMPARISON.md (in ``doc_dir``) from its folder under ``results``: the
    overview, the confirmatory tests, every comparison, dose-response and frontier, with their plots (drawn into
    the folder when ``plots``)."""
    where = folder_of(results, model)

    def shown(img: Path) -> Path:
        return img.relative_to(doc_dir)

    parts = [f"## {model}\n"]
    found = read_results(where)
    runs = found["compare"]
    if runs:
        tasks = merged([Comparison.from_json(data) for _, data in runs])
        img = where / "overview.png"
        if plots:
            plot_overview(tasks, img, force=True)
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
            f"![overview]({shown(img)})\n",
        ]
    for _, data in found["confirm"]:
        parts += confirm_table(data, fresh_from)
        img = where / f"confirm_{data['task']}.png"
        if plots:
            plot_confirm(data, img, fresh_from, force=True)
        parts.append(f"![confirmatory test]({shown(img)})\n")
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
        img = where / f"{path.stem}.png"
        if plots:
            plot_comparison(comp, img, force=True)
        parts.append(f"![{comp.task} comparison]({shown(img)})\n")
    for path, data in found["dose"]:
        img = where / f"{path.stem}.png"
        parts += _dose(data, shown(img), img if plots else None)
    for path, data in found["frontier"]:
        imgs = {x: where / f"{path.stem}_{x}.png" for x in ("ppl", "cont_ppl")}
        parts += _frontier(data, {x: shown(p) for x, p in imgs.items()}, imgs if plots else None)
    return "\n".join(parts)


def _dose(data: dict[str, Any], shown: Path, draw: Path | None) -> list[str]:
    """The dose-response plot and its points per site."""
    rows = [DoseRow(**r) for r in data["rows"]]
    task, st = data["task"], data["settings"]
    if draw is not None:
        plot_dose(rows, task, get_task(task).metric, draw, force=True)
    n = int(rows[0].metrics.get("n_items", 0)) if rows else 0
    return [
        f"**Dose-response** ({task}, {data['dtype']}, {data.get('seconds', 0) / 60:.0f} min): the top-k AUs of each "
        f"site (ranked on {st['pairs']} pairs) steered at alpha {st['alpha']:g}, {n} test items; "
        "k = 0 is the unsteered model; each cell: metric (neutral-text perplexity).\n",
        dose_table(rows),
        "",
        f"![{task} dose-response]({shown})\n",
    ]


def _frontier(data: dict[str, Any], shown: Mapping[str, Path], draw: Mapping[str, Path] | None) -> list[str]:
    """The frontier plots (neutral and continuation perplexity) and its points with their standard errors."""
    task, st = data["task"], data["settings"]
    metric = get_task(task).metric
    rows = [FrontierRow(**r) for r in data["rows"]]
    n, file = st["pairs"], Path(st.get("pairs_file") or "").name
    source = f"the first {n} written pairs of `{file}`" if file else f"the task's pairs from its first {n} pair prompts"
    lines = [
        f"**Frontier** ({task}, {data['dtype']}, {data.get('seconds', 0) / 60:.0f} min): each method at a fixed "
        f"configuration ({', '.join(f'{m} {c}' for m, c in data['configs'].items())}) over its strengths, first "
        f"{st['limit']} test items, steering from {source}; `prompt` steers nothing (strength = worked "
        "examples after the task's instruction: 0 or 3).\n"
    ]
    for x, img in shown.items():
        if draw is not None:
            plot_frontier(rows, task, metric, x, draw[x], force=True)
        lines.append(f"![{task} frontier ({x})]({img})\n")
    return [*lines, frontier_table(rows, metric), ""]


# -- RESULTS.md


def _pct(x: float | None, pct: bool) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}" if pct else f"{x:.2f}"


RESULTS_HEAD = [
    "# Results",
    "",
    "Generated by `python scripts/results.py` (do not edit by hand). Per task: the unsteered model",
    "(vanilla) and AUSteer with the configuration that was best on the validation split, both on the same",
    "test items. Every number below was measured by that script on the machine named at the bottom;",
    "splits, prompts, pairs and scoring are described in [EVALUATION.md](EVALUATION.md).",
    "",
    "Columns: *metric* is the task's primary metric in percent (MC and math: the paper's greedy exact",
    "match; detox: share of non-toxic continuations; sentiment: share of positive continuations);",
    "*choice acc.* is the restricted-choice accuracy (MC only); *k* is the number of steered AUs (the",
    "number of activations rescaled at each token position); *ppl* is the perplexity on the fixed",
    "neutral text set, vanilla -> steered; *cont. ppl* is the perplexity of the generated continuations",
    "under the unsteered model (behaviour tasks), vanilla -> steered.",
    "",
    "The budget is deliberately small (a shared 2-core CPU, no GPU): few pairs, small validation and",
    "test sets and a small grid, listed per task under the table. With test sets this small, a",
    "difference of a few points is within noise: one item is 100/n points (6.2 points with 16 items).",
    "",
]


def sweep_lines(model: str, states: Mapping[str, dict[str, Any]]) -> list[str]:
    """RESULTS.md's section of one model's sweeps (``states``: each task's ``sweep.json`` with its test)."""
    if not states:
        return [f"## {model}", "", f"Not run yet: `python scripts/results.py --model {model}`.", ""]
    deltas = [s["test"]["steered"][s["metric"]] - s["test"]["unsteered"][s["metric"]] for s in states.values()]
    summary = (
        f"AUSteer's best validation configuration raised the test metric on {sum(d > 1e-9 for d in deltas)} "
        f"of {len(deltas)} tasks, left it unchanged on {sum(abs(d) <= 1e-9 for d in deltas)} and lowered it "
        f"on {sum(d < -1e-9 for d in deltas)}."
    )
    lines = [
        f"## {model}",
        "",
        "| task | metric | n test | vanilla | AUSteer | change | site | k | alpha | choice acc. | ppl | cont. ppl |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in states.items():
        t, m = s["test"], s["metric"]
        u, st = t["unsteered"], t["steered"]
        choice = (
            f"{_pct(u['choice_accuracy'], True)} -> {_pct(st['choice_accuracy'], True)}"
            if "choice_accuracy" in u
            else "-"
        )
        cont = f"{u['cont_ppl']:.2f} -> {st['cont_ppl']:.2f}" if "cont_ppl" in u else "-"
        lines.append(
            f"| {name} | {m} | {int(u['n_items'])} | {_pct(u[m], True)} | {_pct(st[m], True)} | "
            f"{100 * (st[m] - u[m]):+.1f} | {t['site']} | {t['n_steered']} | {t['alpha']:g} | {choice} | "
            f"{u['ppl']:.2f} -> {st['ppl']:.2f} | {cont} |"
        )
    lines += ["", summary, "", "Budget and validation per task (val metric unsteered, then per configuration):", ""]
    for name, s in states.items():
        cfg = s["settings"]
        rows = ", ".join(
            f"{r['site']} k={r['k']} a={r['alpha']:g}: {100 * r['metric']:.1f} (ppl {r['ppl_delta']:+.2f})"
            for r in s["rows"]
        )
        lines.append(
            f"- **{name}**: {s.get('n_pairs', cfg['pairs_limit'])} pairs, {int(s['baseline']['n_items'])} val items, "
            f"{cfg['test_limit']} test items at most, max new tokens {cfg['max_new_tokens']}; "
            f"val vanilla {100 * s['baseline'][s['metric']]:.1f}; {rows}."
        )
    for name, s in states.items():
        u, st = s["test"]["unsteered"], s["test"]["steered"]
        key = "mean_compound" if "mean_compound" in u else "mean_toxicity"
        if key in u:
            lines.append(f"- **{name}** {key} on test: vanilla {u[key]:.3f} -> AUSteer {st[key]:.3f}.")
    return [*lines, ""]


def read_sweeps(where: Path, found: Mapping[str, Path] | None = None) -> dict[str, dict[str, Any]]:
    """One model's finished sweeps (``sweep.json`` states with their test) by task, in the tasks' order: the copy
    kept in ``where/<task>.json``, or the file ``found`` names for the task (a sweep that ran here)."""
    paths = {t: (found or {}).get(t, where / f"{t}.json") for t in TASKS}
    states = {t: json.loads(p.read_text()) for t, p in paths.items() if p.exists()}
    return {t: s for t, s in states.items() if "test" in s}


def evidence_lines(results: Path) -> list[str]:
    """RESULTS.md's summary of every model's held-out evidence but the small model's (``results/<model>/``: the
    confirmatory tests, comparisons, doses and frontiers; their full tables are in COMPARISON.md)."""
    lines: list[str] = []
    for folder in sorted(p for p in results.iterdir() if p.is_dir() and p.name != SMALL):
        found = read_results(folder)
        comps = [Comparison.from_json(d) for _, d in found["compare"]]
        if not any(found.values()):
            continue
        lines += [f"## embedded:{folder.name} (scripts/evidence.py)", ""]
        for _, data in found["confirm"]:
            lines += confirm_table(data, 200)
        if comps:
            lines += ["Comparison (every method, same evidence, same test items; tables in COMPARISON.md):", ""]
            lines += [summary_table(comps), ""]
        for p, d in found["dose"]:
            st, metric = d["settings"], get_task(d["task"]).metric
            where = f"{st['pairs']} pairs; {metric} (ppl); `{p.name}`"
            lines += [f"Dose-response, {d['task']} (alpha {st['alpha']:g}, {where}):", ""]
            lines += [dose_table([DoseRow(**r) for r in d["rows"]]), ""]
        for p, d in found["frontier"]:
            lines += [f"Frontier, {d['task']} (first {d['settings']['limit']} test items; `{p.name}`):", ""]
            lines += [frontier_table([FrontierRow(**r) for r in d["rows"]], get_task(d["task"]).metric), ""]
    return lines


def small_model_lines(results: Path, doc_dir: Path, plots: bool = True) -> list[str]:
    """RESULTS.md's cross-task summary of the small model's comparisons and doses (``results/<SMALL>/``), with the
    dose-response plot of every task (``doc_dir/img/dose_all.png``)."""
    where = results / SMALL
    read = {kind: {t: where / f"{kind}_{t}.json" for t in TASKS} for kind in ("compare", "dose")}
    found = {k: {t: json.loads(p.read_text()) for t, p in paths.items() if p.exists()} for k, paths in read.items()}
    if not found["compare"]:
        return []
    comps = [Comparison.from_json(d) for d in found["compare"].values()]
    curves = {t: ([DoseRow(**r) for r in d["rows"]], get_task(t).metric) for t, d in found["dose"].items()}
    lines = [
        "## Does steering less achieve more? AUSteer against the baselines (SmolLM2-135M-Instruct)",
        "",
        "Every method with the same pairs, the same validation budget and the same test items; test metric",
        "of the configuration each method chose on validation, with the number of steered activations in",
        "brackets. *best* is the best steering method (calibration does not steer), *sig* the z of a",
        "two-proportion test of it against the unsteered model (below 2: within noise); a dagger marks a",
        "method none of whose tried configurations kept the neutral-text perplexity within 2x. Protocol,",
        "per-task tables, frontiers and a reading of them: [COMPARISON.md](COMPARISON.md).",
        "",
        summary_table(comps),
        "",
        *_reading(comps),
        "",
    ]
    if curves:
        img = doc_dir / "img" / "dose_all.png"
        if plots:
            plot_dose_grid(curves, img, force=True)
        lines += [
            "Dose-response: test metric against the number of steered AUs (top-k by |beta|, from 0 to all of",
            "the site), at the alpha AUSteer chose on validation, one curve per site:",
            "",
            f"![dose-response, all tasks](img/{img.name})",
            "",
        ]
    return lines


def _reading(comps: list[Comparison]) -> list[str]:
    """Counts read off the summary table (the hand-written reading is in COMPARISON.md)."""
    noise: list[str] = []
    ours: list[str] = []
    calib: list[str] = []
    mc: list[str] = []
    clear: list[str] = []
    for c in comps:
        best = c.best_steering()
        if best is None:  # only calibration was compared: nothing steered to read
            continue
        base, n = c.baseline_test[c.metric], int(c.baseline_test["n_items"])
        z = margin(best.test_metric, base, n)
        noise += [c.task] if abs(z) < 2 else []
        ours += [c.task] if best.method == "austeer" else []
        clear += [c.task] if best.method == "austeer" and z >= 2 else []
        cal = [r for r in c.results if r.method == "calibration"]
        mc += [c.task] if cal else []
        calib += [c.task] if cal and cal[0].test_metric >= best.test_metric else []
    return [
        f"Reading: the best steering method is within noise of the unsteered model on {len(noise)} of "
        f"{len(comps)} tasks ({', '.join(noise) or 'none'}); AUSteer is the best steering method on "
        f"{len(ours)} ({', '.join(ours) or 'none'}); answer-bias calibration, which steers nothing, matches or "
        f"beats the best steering method on {len(calib)} of {len(mc)} multiple-choice tasks. "
        + (
            f"AUSteer beats every other steering method and the unsteered model beyond noise on {', '.join(clear)}"
            if clear
            else "At this scale and budget the claim that steering fewer AUs achieves more is not reproduced"
        )
        + " (details and caveats: [COMPARISON.md](COMPARISON.md#reading)).",
    ]


def results_doc(
    sweeps: Mapping[str, Mapping[str, dict[str, Any]]], results: Path, doc_dir: Path, machine: str, plots: bool = True
) -> str:
    """docs/RESULTS.md: every model's sweeps (``sweeps``: model -> task -> sweep state), the held-out evidence
    under ``results``, the small model's comparisons, and the ``machine`` lines (where and when it was written)."""
    lines = list(RESULTS_HEAD)
    for model, states in sweeps.items():
        lines += sweep_lines(model, states)
    lines += evidence_lines(results)
    lines += small_model_lines(results, doc_dir, plots)
    lines += [
        "## Machine",
        "",
        machine,
        "Raw sweeps (every validation row with all its metrics, the test metrics) are copied to",
        "`docs/results/<model>/<task>.json`; the best specs are in `runs/results/<model>/<task>/best/`.",
        "",
    ]
    return "\n".join(lines)
