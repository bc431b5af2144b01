"""Tables (Markdown) and plots (PNG) of comparisons, dose-response curves and frontiers.

Example:
    >>> print(fmt_config({"site": "head", "k": 8, "alpha": 4.0}))
    site=head k=8 alpha=4
    >>> margin(0.60, 0.50, 100)  # unpaired: 60% against 50% on 100 items, z 1.4 (austeer.stats)
    1.4
    >>> paired(Result("m", {}, 0, 0.0, {}, 0.0, 0.0, "-", test_correct=[1, 1, 0, 1]), [0, 1, 0, 0])
    '2/0 | 0.5'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from austeer.evaluation.compare import Comparison, DoseRow, FrontierRow, Result
from austeer.io import write_output
from austeer.methods import METHODS
from austeer.stats import discordant, margin, mcnemar

#: the configuration keys a table shows: what every method shows (:attr:`~austeer.methods.base.Method.shown`)
SHOWN: tuple[str, ...] = tuple(dict.fromkeys(k for m in METHODS.values() for k in m.shown))


def fmt_config(config: dict[str, Any]) -> str:
    """The hyperparameters of a configuration, short."""
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items() if k in SHOWN)


def settings_line(c: Comparison) -> str:
    """The protocol of a comparison in one sentence (pairs, budget, val and test items, ppl bound)."""
    s = c.settings
    return (
        f"{s['pairs']} pairs, budget {s['budget']} configurations per method, "
        f"{int(c.baseline_val.get('n_items', s['val_limit'] or 0))} val items, "
        f"{_n_test(c)} test items, eligible configs keep ppl within x{s['max_ppl_ratio']} "
        f"(unsteered val ppl {c.baseline_val['ppl']:.2f}, test ppl {c.baseline_test['ppl']:.2f})"
    )


def table(c: Comparison) -> str:
    """Markdown table: method, choice, steered activations, val and test metric, its significance against the
    unsteered model (two-proportion z; McNemar's paired test: items fixed/broken and p), ppl change, folding;
    and, where the comparison measured it, the capability panel's pooled accuracy change and fixed/broken."""
    m = c.metric
    n = _n_test(c)
    cap = any(r.capability for r in c.results)
    lines = [
        f"| method | chosen on val | steered activations | val {m} | test {m} | z | fixed/broken | p | "
        "test ppl change | fold |" + (" capability change (fixed/broken, p) |" if cap else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|" + ("---:|" if cap else ""),
        f"| none | - | 0 | {c.baseline_val[m]:.3f} | {c.baseline_test[m]:.3f} | - | - | - | 0 | - |"
        + (" 0 |" if cap else ""),
    ]
    for r in c.results:
        lines.append(
            f"| {r.method} | {fmt_config(r.config)}{' (none within the ppl bound)' if _ineligible(c, r) else ''} | "
            f"{r.n_steered} | {r.val:.3f} | {r.test_metric:.3f} | "
            f"{margin(r.test_metric, c.baseline_test[m], n):+.1f} | {paired(r, c.baseline_correct)} | "
            f"{r.ppl_delta:+.2f} | {r.fold.split(':')[0]} |" + (f" {capability_cell(r)} |" if cap else "")
        )
    return "\n".join(lines)


def capability_cell(r: Result) -> str:
    """``-0.020 (3/5, p 0.73)``: the capability panel's pooled accuracy change under ``r``'s choice, items
    fixed/broken and McNemar's p (``-`` where it was not measured)."""
    if not r.capability:
        return "-"
    cap = r.capability
    change = 0.0 - cap["drop"]  # 0.0 - 0.0 is +0.0: no "-0.000" for an unchanged panel
    return f"{change:+.3f} ({cap['fixed']}/{cap['broken']}, p {cap['p']:.2g})"


def paired(r: Result, baseline_correct: Sequence[int]) -> str:
    """``fixed/broken | p`` of McNemar's exact test of ``r`` against the unsteered model on the same test items
    (see :mod:`austeer.stats`); ``- | -`` without per-item outcomes (behaviour tasks, older results)."""
    if not r.test_correct or len(r.test_correct) != len(baseline_correct):
        return "- | -"
    fixed, broken = discordant(baseline_correct, r.test_correct)
    return f"{fixed}/{broken} | {mcnemar(fixed, broken):.2g}"


def _n_test(c: Comparison) -> int:
    return int(c.baseline_test.get("n_items", c.settings.get("test_limit", 0)))


def _ineligible(c: Comparison, r: Result) -> bool:
    """Whether no configuration ``r`` tried kept the perplexity within the comparison's bound."""
    bound = c.settings.get("max_ppl_ratio")
    return bound is not None and bool(r.trials) and all(t.ppl_ratio > bound for t in r.trials)


def summary_table(comps: Sequence[Comparison]) -> str:
    """One Markdown row per task: the test metric of every method, its steered activations in brackets.

    The best steering method of each task is in bold; ``sig`` is its margin over the unsteered model as
    the z of a two-proportion test (see :func:`~austeer.stats.margin`): below 2 it is within noise;
    ``fixed/broken`` and ``p`` are McNemar's paired test on the same items (see :func:`paired`). A dagger
    marks a method none of whose tried configurations kept the perplexity within the bound.
    """
    methods = list(dict.fromkeys(r.method for c in comps for r in c.results))
    lines = [
        "| task | metric | n test | none | " + " | ".join(methods) + " | best | sig | fixed/broken | p |",
        "|---|---|---:|---:|" + "---:|" * len(methods) + "---|---:|---:|---:|",
    ]
    for c in comps:
        by = {r.method: r for r in c.results}
        base = c.baseline_test[c.metric]
        best = c.best_steering()
        cells = []
        for m in methods:
            r = by.get(m)
            cell = "-" if r is None else f"{r.test_metric:.3f} ({r.n_steered}){' †' if _ineligible(c, r) else ''}"
            cells.append(f"**{cell}**" if r is not None and r is best else cell)
        n = _n_test(c)
        sig = f"{margin(best.test_metric, base, n):+.1f}" if best else "-"
        name = best.method if best else "-"
        test = paired(best, c.baseline_correct) if best else "- | -"
        lines.append(
            f"| {c.task} | {c.metric} | {n} | {base:.3f} | " + " | ".join(cells) + f" | {name} | {sig} | {test} |"
        )
    return "\n".join(lines)


def merged(comps: Sequence[Comparison]) -> list[Comparison]:
    """One comparison per task from every run of it whose unsteered model answered as the first run on the largest
    test set did (the same items, the same outcomes; a run in another dtype may answer otherwise, and is left out):
    each method's result from the run that gave it the largest budget of configurations (the first such run in
    ``comps``), so no method is shown from the run where it happened to do best.

    Example:
        >>> few = Comparison("copa", "accuracy", {"budget": 4}, {}, {}, [Result("austeer", {}, 8, 0, {}, 0.85, 0, "")])
        >>> many = replace(few, settings={"budget": 16}, results=[Result("austeer", {}, 32, 0, {}, 0.82, 0, "")])
        >>> [(r.method, r.test_metric) for c in merged([few, many]) for r in c.results]
        [('austeer', 0.82)]
    """
    out = []
    for task in dict.fromkeys(c.task for c in comps):
        runs = [c for c in comps if c.task == task]
        n = max(len(c.baseline_correct) for c in runs)
        ref = next(c for c in runs if len(c.baseline_correct) == n)
        runs = [c for c in runs if c.baseline_correct == ref.baseline_correct]  # another dtype answers otherwise
        best: dict[str, tuple[int, Result]] = {}
        for c in runs:
            budget = int(c.settings.get("budget", 0))
            for r in c.results:
                if r.method not in best or budget > best[r.method][0]:
                    best[r.method] = (budget, r)
        out.append(replace(runs[0], results=[r for _, r in best.values()]))
    return out


def dose_table(rows: Sequence[DoseRow]) -> str:
    """Markdown table of dose-response points: a row per curve (site, and where the gains act), a column per
    number of steered AUs (``all``: every AU of the site), each cell ``metric (neutral ppl)``.

    Example:
        >>> rows = [DoseRow("head", 0, False, 10.0, 0.74, 15.1, {}), DoseRow("head", 32, False, 10.0, 0.82, 15.8, {})]
        >>> print(dose_table(rows))
        | site | 0 | 32 |
        |---|---:|---:|
        | head | 0.740 (15.1) | 0.820 (15.8) |
    """

    def column(r: DoseRow) -> str:
        return "all" if r.all else str(r.k)

    columns = list(dict.fromkeys(column(r) for r in sorted(rows, key=lambda r: (r.all, r.k))))
    cells = {(r.curve, column(r)): f"{r.metric:.3f} ({r.ppl:.3g})" for r in rows}
    lines = [f"| site | {' | '.join(columns)} |", "|---|" + "---:|" * len(columns)]
    for curve in dict.fromkeys(r.curve for r in rows):
        lines.append(f"| {curve} | " + " | ".join(cells.get((curve, c), "-") for c in columns) + " |")
    return "\n".join(lines)


def frontier_table(rows: Sequence[FrontierRow], metric: str) -> str:
    """Markdown table of frontier points: method, strength, ``metric`` with its standard error, neutral and
    continuation perplexity; and, where the points keep per-item outcomes, the paired test against the
    unsteered row (``none``): items fixed / broken and McNemar's p.

    Example:
        >>> print(frontier_table([FrontierRow("caa", 1.0, 0, 0.5, {"n_items": 100, "ppl": 15.0})], "positive_rate"))
        | method | strength | positive_rate ± se | ppl | cont_ppl |
        |---|---:|---:|---:|---:|
        | caa | 1 | 0.500 ± 0.050 | 15.00 | nan |
        >>> none = FrontierRow("none", 0, 0, 0.5, {"ppl": 15.0}, [0, 1])
        >>> caa = FrontierRow("caa", 1, 0, 1.0, {"ppl": 16.0}, [1, 1])
        >>> print(frontier_table([none, caa], "positive_rate").splitlines()[-1])
        | caa | 1 | 1.000 ± nan | 16.00 | nan | 1 / 0 (p = 1) |
    """
    base = next((r.correct for r in rows if r.method == "none" and r.correct), None)
    paired = base is not None and any(r.correct for r in rows if r.method != "none")
    head = f"| method | strength | {metric} ± se | ppl | cont_ppl |"
    lines = [head + " fixed / broken (McNemar p) |" if paired else head]
    lines.append("|---|---:|---:|---:|---:|" + ("---:|" if paired else ""))
    for r in rows:
        v, m = r.metric, r.metrics
        se = (v * (1 - v) / m["n_items"]) ** 0.5 if m.get("n_items") else float("nan")
        cont = m.get("cont_ppl", float("nan"))
        line = f"| {r.method} | {r.strength:g} | {v:.3f} ± {se:.3f} | {m['ppl']:.2f} | {cont:.2f} |"
        if paired:
            if r.method != "none" and r.correct and base is not None and len(r.correct) == len(base):
                fixed, broken = discordant(base, r.correct)
                line += f" {fixed} / {broken} (p = {mcnemar(fixed, broken):.2g}) |"
            else:
                line += " - |"
        lines.append(line)
    return "\n".join(lines)


def plot_comparison(c: Comparison, out: str | Path, force: bool = False) -> Path:
    """Bar chart of the test metric per method, annotated with the number of steered activations; where the
    comparison measured the capability panel, beside it each method's change of the test metric (paired 95%
    interval) against its two costs: the neutral perplexity change and the panel's accuracy change."""
    costs = any(r.capability for r in c.results)
    fig, axes = _subplots(1, 3 if costs else 1, figsize=(16, 3.8) if costs else (7, 3.5), squeeze=False)
    ax = axes[0][0]
    names = ["none"] + [r.method for r in c.results]
    vals = [c.baseline_test[c.metric]] + [r.test_metric for r in c.results]
    counts = [0] + [r.n_steered for r in c.results]
    bars = ax.bar(names, vals, color=["grey"] + ["C0" if n == "austeer" else "C1" for n in names[1:]])
    for bar, n in zip(bars, counts, strict=True):
        ax.annotate(f"{n}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(f"test {c.metric}")
    ax.set_title(f"{c.task}: test {c.metric} (numbers: steered activations)")
    if costs:
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        _plot_costs(c, axes[0][1], axes[0][2])
    return _save(fig, out, force)


def _plot_costs(c: Comparison, by_ppl: Any, by_capability: Any) -> None:
    """Each method's change of the test metric (y, paired 95% interval) against its test perplexity change
    (``by_ppl``) and against the capability panel's accuracy change (``by_capability``, paired 95% interval)."""
    panel = 0
    for r in c.results:
        change, half = _change(c, r)
        style = {"fmt": "o", "color": "C0" if r.method.startswith("austeer") else "C1", "markersize": 4, "capsize": 2}
        points = [(by_ppl, r.ppl_delta, 0.0)]
        if r.capability:
            cap = r.capability
            panel = max(panel, int(cap["n"]))
            points.append((by_capability, -cap["drop"], 1.96 * _paired_se(cap["fixed"], cap["broken"], cap["n"])))
        for ax, x, x_half in points:
            ax.errorbar([x], [change], xerr=[x_half], yerr=[half], **style)
            ax.annotate(r.method, (x, change), xytext=(3, 3), textcoords="offset points", fontsize=7)
    for ax in (by_ppl, by_capability):
        ax.axhline(0.0, color="grey", linestyle="--", linewidth=0.8)
        ax.axvline(0.0, color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylabel(f"change of test {c.metric}")
    by_ppl.set_xlabel("test perplexity change (neutral text)")
    by_ppl.set_title("effect against perplexity cost")
    by_capability.set_xlabel(f"change of capability panel accuracy ({panel} items)")
    by_capability.set_title("effect against capability cost")


def plot_confirm(data: dict[str, Any], out: str | Path, fresh_from: int = 200, force: bool = False) -> Path:
    """A confirmatory test (``scripts/evidence.py --stages confirm``): the accuracy (95% interval) of the
    unsteered and the steered model on the items seen before, the fresh ones and all (all alone when none was
    seen; ``fresh_from``: used when ``data`` does not record its own)."""
    base, steered = data["unsteered"]["correct"], data["steered"]["correct"]
    fresh_from = data.get("fresh_from", fresh_from)
    groups = {"seen": slice(0, fresh_from), "fresh": slice(fresh_from, None), "all": slice(None)}
    if not fresh_from:
        groups = {"all": slice(None)}
    fig, ax = _subplots(figsize=(6, 3.2))
    for j, (label, outcomes) in enumerate((("unsteered", base), ("steered", steered))):
        xs, ys, es = [], [], []
        for i, part in enumerate(groups.values()):
            v = outcomes[part]
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
    return _save(fig, out, force)


def plot_overview(comps: Sequence[Comparison], out: str | Path, force: bool = False) -> Path:
    """One panel per comparison (task): every method's change of the test metric over the unsteered model
    with its 95% interval (paired, from the per-item outcomes where the results keep them), zero dashed;
    AUSteer and its variants in blue, the other methods in orange."""
    rows = max((len(c.results) for c in comps), default=0)
    cols = max(len(comps), 1)
    fig, axes = _subplots(1, cols, figsize=(2.8 * cols, 0.3 * rows + 1.3), squeeze=False)
    for ax, c in zip(axes.flat, comps, strict=False):
        for y, r in enumerate(c.results):
            change, half = _change(c, r)
            colour = "C0" if r.method.startswith("austeer") else "C1"
            ax.errorbar([change], [y], xerr=[half], fmt="o", color=colour, markersize=4, capsize=2)
        ax.axvline(0.0, color="grey", linestyle="--", linewidth=0.8)
        ax.set_yticks(range(len(c.results)), [r.method for r in c.results], fontsize=8)
        ax.set_ylim(rows - 0.5, -0.5)
        ax.set_title(f"{c.task}\n{_n_test(c)} items, unsteered {c.baseline_test[c.metric]:.2f}", fontsize=9)
        ax.set_xlabel(f"change of test {c.metric}", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    return _save(fig, out, force)


def _change(c: Comparison, r: Result) -> tuple[float, float]:
    """``r``'s test metric minus the unsteered one, and the half-width of its 95% interval: from the paired
    outcomes where both are kept, else as two independent proportions."""
    n, base = _n_test(c), c.baseline_test[c.metric]
    change = r.test_metric - base
    if r.test_correct and len(r.test_correct) == len(c.baseline_correct) == n:
        se = _paired_se(*discordant(c.baseline_correct, r.test_correct), n)
    else:
        se = ((r.test_metric * (1 - r.test_metric) + base * (1 - base)) / n) ** 0.5 if n else 0.0
    return change, 1.96 * se


def _paired_se(fixed: int, broken: int, n: int) -> float:
    """The standard error of a paired change of accuracy over ``n`` items, ``fixed`` and ``broken`` of them.

    Example:
        >>> round(_paired_se(12, 2, 100), 4)
        0.0361
    """
    return ((fixed + broken) - (fixed - broken) ** 2 / n) ** 0.5 / n if n else 0.0


def _dose_axis(rows: Sequence[DoseRow]) -> str:
    """The x label of a dose plot: "last point: all" only where a curve ends with every AU of its site.

    Example:
        >>> _dose_axis([DoseRow("head", 204, False, 10.0, 0.8, 15.0, {})])
        'steered AUs (top-k by |beta|)'
    """
    return "steered AUs (top-k by |beta|" + ("; last point: all)" if any(r.all for r in rows) else ")")


def plot_dose(rows: Sequence[DoseRow], task: str, metric: str, out: str | Path, force: bool = False) -> Path:
    """Test metric (left) and neutral-text perplexity (right) against the number of steered AUs."""
    fig, (ax, ax_ppl) = _subplots(1, 2, figsize=(9, 3.5))
    _site_curves(ax, rows, "metric", "o")
    _site_curves(ax_ppl, rows, "ppl", "o")
    for a in (ax, ax_ppl):
        a.set_xscale("symlog", linthresh=1)
        a.set_xlabel(_dose_axis(rows))
    ax.set_ylabel(metric)
    _log_axis(ax_ppl, [r.ppl for r in rows])
    ax_ppl.set_ylabel("neutral-text perplexity")
    ax.set_title(f"{task}: dose-response (alpha {rows[0].alpha:g})" if rows else task)
    ax_ppl.set_title("damage")
    ax.legend()
    return _save(fig, out, force)


def _log_axis(ax: Any, values: Sequence[float]) -> None:
    """A log-scale y axis; within two decades its labels are plain numbers (15.4, 200), not 1.54 x 10^1."""
    from matplotlib.ticker import LogFormatter

    ax.set_yscale("log")
    finite = [v for v in values if v > 0 and v < float("inf")]
    if finite and max(finite) / min(finite) < 100:
        ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _site_curves(ax: Any, rows: Sequence[DoseRow], y: str, marker: str) -> None:
    """One line per curve (site, and where its gains act): dose-response rows' ``y`` (``metric`` or ``ppl``)
    against their ``k``."""
    for curve in dict.fromkeys(r.curve for r in rows):
        pts = sorted((r.k, getattr(r, y)) for r in rows if r.curve == curve)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=curve)


def plot_dose_grid(curves: Mapping[str, tuple[Sequence[DoseRow], str]], out: str | Path, force: bool = False) -> Path:
    """One small dose-response panel per task (``curves``: task -> (rows, metric)), side by side."""
    cols = min(4, max(len(curves), 1))
    nrows = (len(curves) + cols - 1) // cols
    fig, axes = _subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
    for ax, (task, (rows, metric)) in zip(axes.flat, curves.items(), strict=False):
        _site_curves(ax, rows, "metric", ".")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_title(f"{task} ({metric})", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(curves) :]:
        ax.axis("off")
    if curves:
        axes.flat[0].legend(fontsize=7)
    fig.supxlabel(_dose_axis([r for rows, _ in curves.values() for r in rows]), fontsize=9)
    return _save(fig, out, force)


def plot_frontier(
    rows: Sequence[FrontierRow], task: str, metric: str, x: str, out: str | Path, force: bool = False
) -> Path:
    """Effect (``metric``) against the increase of ``x`` (``ppl`` or ``cont_ppl``), one curve per method (a
    method with one row is one point)."""
    base = next(r for r in rows if r.method == "none")
    fig, ax = _subplots(figsize=(6, 4))
    ax.scatter([0.0], [base.metric], color="black", zorder=3, label="unsteered")
    for name in [m for m in dict.fromkeys(r.method for r in rows) if m != "none"]:
        pts = sorted((r.strength, r.metrics[x] - base.metrics[x], r.metric) for r in rows if r.method == name)
        ax.plot([p[1] for p in pts], [p[2] for p in pts], marker="o", label=name)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel(f"increase of {x} over the unsteered model")
    ax.set_ylabel(metric)
    ax.set_title(f"{task}: effect against damage")
    ax.legend(fontsize=8)
    return _save(fig, out, force)


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kwargs: Any) -> tuple[Any, Any]:
    """:func:`austeer.report.plots.subplots`, imported when a figure is drawn (the tables need no matplotlib)."""
    from austeer.report.plots import subplots

    return subplots(nrows, ncols, figsize=figsize, **kwargs)


def _save(fig: Any, out: str | Path, force: bool) -> Path:
    """Write ``fig`` as a signed PNG to ``out``: an existing file is replaced only when austeer wrote it, unless
    ``force`` (:func:`austeer.io.write_output`)."""
    from austeer.report.plots import to_png

    fig.tight_layout()
    return write_output(out, to_png(fig, tight=False), "figure", force)
