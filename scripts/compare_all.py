"""Run the comparison, the dose-response curve and (behaviour tasks) the frontier; write docs/COMPARISON.md.

Each task's raw results go to ``docs/img/compare_<task>.json`` (rewritten atomically after each stage),
plots to ``docs/img/compare_<task>_*.png``; the generated part of ``docs/COMPARISON.md`` (between the
``BEGIN/END GENERATED`` markers) is rebuilt from every JSON present, so tasks can be run one at a time:

    python scripts/compare_all.py --tasks boolq --budget 3 --val-limit 30 --test-limit 100
    python scripts/compare_all.py --render-only
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from austeer.evaluation.compare import UNPROMPTED_DEFAULTS, DoseRow, FrontierRow
from austeer.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
DOC = ROOT / "docs" / "COMPARISON.md"
BEGIN, END = "<!-- BEGIN GENERATED (scripts/compare_all.py) -->", "<!-- END GENERATED -->"

#: each method's frontier configuration and strengths, as the methods declare them (Method.frontier)
FRONTIER_CONFIGS: dict[str, dict[str, Any]] = {n: m.frontier.config for n, m in METHODS.items() if m.frontier}
FRONTIER_STRENGTHS: dict[str, Sequence[float]] = {n: m.frontier.strengths for n, m in METHODS.items() if m.frontier}


def save(path: Path, data: dict[str, Any]) -> None:
    from austeer.core.spec import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def run_task(name: str, args: argparse.Namespace, model: Any, tok: Any, ref: Any) -> None:
    from austeer.cli.argtypes import parse_doses
    from austeer.evaluation.compare import Comparison, compare, dose_response, frontier, sites_for
    from austeer.evaluation.evaluate import Unsteered
    from austeer.methods.base import gather
    from austeer.tasks import get_task

    task = get_task(name)
    path = IMG / f"compare_{name}.json"
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"task": name}
    eval_kw: dict[str, Any] = {"ref_model": ref} if task.kind == "behaviour" else {}
    if args.max_new_tokens:
        eval_kw["max_new_tokens"] = args.max_new_tokens
    pairs = task.pairs(model, tok, limit=args.pairs_limit)
    methods = args.methods.split(",") + (["calibration"] if task.kind == "mc" else [])
    sites = sites_for(methods, args.sites.split(","))  # one pass for the methods and the dose-response
    evidence = gather(model, tok, pairs, sites, batch_size=args.batch_size)
    unsteered = Unsteered(model, tok, progress=True)  # the unsteered evaluations (and ppl) of this task, once each
    if "compare" in args.stages:
        c = compare(
            model,
            tok,
            task,
            methods,
            budget=args.budget,
            val_limit=args.val_limit,
            test_limit=args.test_limit,
            batch_size=args.batch_size,
            evidence=evidence,
            eval_kw=eval_kw,
            unsteered=unsteered,
        )
        data["compare"] = c.to_json()
        save(path, data)
    if "dose" in args.stages:
        alpha = args.dose_alpha or (Comparison.from_json(data["compare"]).chosen_alpha() if "compare" in data else 4.0)
        doses = parse_doses(args.doses)
        rows = dose_response(
            model,
            tok,
            task,
            evidence,
            args.sites.split(","),
            doses,
            alpha,
            limit=args.dose_limit,
            batch_size=args.batch_size,
            eval_kw=eval_kw,
            unsteered=unsteered,
        )
        old = data.get("dose", {})
        if old.get("limit") == args.dose_limit and old.get("alpha") == alpha:  # add doses to an earlier run
            new = {(r.site, r.k) for r in rows}
            kept = [DoseRow(**r) for r in old["rows"] if (r["site"], r["k"]) not in new]
            rows = sorted(kept + rows, key=_dose_key)
        data["dose"] = {"limit": args.dose_limit, "alpha": alpha, "rows": [asdict(r) for r in rows]}
        save(path, data)
    if "frontier" in args.stages and task.kind == "behaviour":
        chosen = {m: FRONTIER_CONFIGS[m] for m in args.frontier_methods.split(",")}
        points = frontier(
            model,
            tok,
            task,
            evidence,
            chosen,
            FRONTIER_STRENGTHS,
            limit=args.frontier_limit,
            batch_size=args.batch_size,
            eval_kw=eval_kw,
            unsteered=unsteered,
        )
        data["frontier"] = {"limit": args.frontier_limit, "configs": chosen, "rows": [asdict(r) for r in points]}
        save(path, data)


def _dose_key(row: DoseRow) -> tuple[int, int]:
    order = ["head", "ffn", "neuron", "residual"]
    return (order.index(row.site) if row.site in order else len(order), int(row.k))


def _metric(data: dict[str, Any]) -> str:
    from austeer.tasks import get_task

    return str(data.get("compare", {}).get("metric") or get_task(data["task"]).metric)


def render() -> None:
    from austeer.evaluation.compare import Comparison
    from austeer.io import write_between
    from austeer.report.comparison import (
        dose_table,
        frontier_table,
        plot_comparison,
        plot_dose,
        plot_frontier,
        settings_line,
        summary_table,
        table,
    )

    parts = []
    for path in sorted(IMG.glob("compare_*.json")):
        data = json.loads(path.read_text())
        name = data["task"]
        parts.append(f"### {name}\n")
        if "compare" in data:
            comp = Comparison.from_json(data["compare"])
            parts.append(f"{settings_line(comp)}.\n")
            parts.append(table(comp) + "\n")
            img = plot_comparison(comp, IMG / f"compare_{name}.png", force=True)
            parts.append(f"![{name} comparison](img/{img.name})\n")
        if "dose" in data:
            d = data["dose"]
            metric = _metric(data)
            dose_rows = [DoseRow(**r) for r in d["rows"]]
            img = plot_dose(dose_rows, name, metric, IMG / f"compare_{name}_dose.png", force=True)
            where = f"test, first {d['limit']} items, alpha {d['alpha']:g}"
            parts.append(f"Dose-response ({where}; each cell: {metric} (neutral-text perplexity)):\n")
            parts.append(dose_table(dose_rows) + "\n")
            parts.append(f"![{name} dose-response](img/{img.name})\n")
        if "frontier" in data:
            f = data["frontier"]
            metric = _metric(data)
            for x in ("ppl", "cont_ppl"):
                out = IMG / f"compare_{name}_frontier_{x}.png"
                img = plot_frontier([FrontierRow(**r) for r in f["rows"]], name, metric, x, out, force=True)
                parts.append(f"![{name} frontier ({x})](img/{img.name})\n")
            parts.append(f"Frontier points (test, first {f['limit']} items):\n")
            parts.append(frontier_table([FrontierRow(**r) for r in f["rows"]], metric) + "\n")
    datas = [json.loads(p.read_text()) for p in sorted(IMG.glob("compare_*.json"))]
    comps = [Comparison.from_json(d["compare"]) for d in datas if "compare" in d]
    if comps:
        parts[:0] = ["### All tasks\n", summary_table(comps) + "\n"]
    write_between(DOC, BEGIN, END, "\n".join(parts))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tasks", default="boolq,copa,winogrande,svamp,mawps,sentiment,detox")
    p.add_argument("--methods", default=",".join(UNPROMPTED_DEFAULTS))
    p.add_argument("--stages", default="compare,dose,frontier")
    p.add_argument("--budget", type=int, default=8)
    p.add_argument("--pairs-limit", type=int, default=200)
    p.add_argument("--val-limit", type=int, default=100)
    p.add_argument("--test-limit", type=int, default=300)
    p.add_argument("--sites", default="head,ffn,neuron")
    p.add_argument("--doses", default="0,2,8,32,100,200,500,1000,5000,all")
    p.add_argument("--dose-alpha", type=float, default=None, help="default: the alpha AUSteer chose on val")
    p.add_argument("--dose-limit", type=int, default=200)
    p.add_argument("--frontier-limit", type=int, default=60)
    p.add_argument("--frontier-methods", default=",".join(FRONTIER_CONFIGS))
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args()
    if not args.render_only:
        from austeer.models.loading import load_model

        model, tok = load_model()
        tasks = args.tasks.split(",")
        ref = load_model()[0] if any(t in ("sentiment", "detox") for t in tasks) else None
        for name in tasks:
            run_task(name, args, model, tok, ref)
            render()
    render()


if __name__ == "__main__":
    main()
