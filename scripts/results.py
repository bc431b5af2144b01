#!/usr/bin/env python
"""Regenerate docs/RESULTS.md: per task, vanilla vs AUSteer (best validation config) on test.

Runs (or resumes) one sweep per task into runs/results/<model>/<task>/ with the bounded budget of
:data:`PLAN` (sized for a shared 2-core CPU), then writes docs/RESULTS.md from every sweep.json found.

    python scripts/results.py                                  # SmolLM2, all seven tasks
    python scripts/results.py --model embedded:gemma3-270m     # the same for Gemma-3-270M
    python scripts/results.py --tasks copa,boolq               # a subset
    python scripts/results.py --write-only                     # only rewrite docs/RESULTS.md

Sweeps are resumable: rerunning skips every finished (site, k, alpha) row and finished test evaluation.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "results"
DOC = ROOT / "docs" / "RESULTS.md"
MODELS = ("embedded:smollm2-135m-instruct", "embedded:gemma3-270m")

#: per task: pairs, val and test items, grid and generation budget (bounded for a shared 2-core CPU)
PLAN: dict[str, dict[str, Any]] = {
    "copa": {"pairs": 300, "val": 100, "test": 300, "sites": ["head", "ffn"], "k": [2, 8, 32], "alpha": [5, 15]},
    "winogrande": {"pairs": 300, "val": 100, "test": 300, "sites": ["head", "ffn"], "k": [2, 8, 32], "alpha": [5, 15]},
    "boolq": {
        "pairs": 200,
        "val": 100,
        "test": 400,
        "sites": ["head", "ffn"],
        "k": [2, 8, 32, 100],
        "alpha": [1, 5, 15],
    },
    "sentiment": {"pairs": 16, "val": 12, "test": 24, "sites": ["head"], "k": [8, 32], "alpha": [5], "new": 16},
    "svamp": {"pairs": 48, "val": 8, "test": 24, "sites": ["head"], "k": [8, 32], "alpha": [5], "new": 20},
    "mawps": {"pairs": 48, "val": 8, "test": 16, "sites": ["head"], "k": [8, 32], "alpha": [5], "new": 20},
    "detox": {"pairs": 16, "val": 8, "test": 16, "sites": ["head"], "k": [8, 32], "alpha": [5], "new": 16},
}


def short(model: str) -> str:
    return model.split(":", 1)[-1].replace("/", "_")


def run(model_name: str, tasks: list[str]) -> None:
    import torch

    from austeer.evaluation.sweep import sweep
    from austeer.models.loading import load_model
    from austeer.tasks import get_task

    torch.manual_seed(0)
    model, tok = load_model(model_name)
    ref = None
    for name in tasks:
        plan = PLAN[name]
        task = get_task(name)
        if task.kind == "behaviour" and ref is None:
            ref, _ = load_model(model_name)
        if task.kind == "behaviour" and "new" in plan:
            task.max_new_tokens = plan["new"]
        start = time.perf_counter()
        print(f"== {name} ({model_name})", flush=True)
        state = sweep(
            model,
            tok,
            task,
            RUNS / short(model_name) / name,
            sites=plan["sites"],
            ks=plan["k"],
            alphas=plan["alpha"],
            model_id=model_name,
            pairs_limit=plan["pairs"],
            val_limit=plan["val"],
            test_limit=plan["test"],
            max_new_tokens=plan.get("new"),
            ref_model=ref if task.kind == "behaviour" else None,
        )
        t = state["test"]
        print(
            f"   {task.metric}: vanilla {t['unsteered'][task.metric]:.3f} -> AUSteer {t['steered'][task.metric]:.3f} "
            f"({t['site']} k={t['k']} alpha={t['alpha']:g}) in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
        write_doc()


def sweeps(models: tuple[str, ...] = MODELS) -> dict[str, dict[str, dict[str, Any]]]:
    """Each model's finished sweeps by task: from runs/results/ where a sweep ran here, else the copy kept in
    docs/results/<model>/<task>.json."""
    from austeer.report.evidence import read_sweeps

    found = {}
    for model in models:
        ran = {p.parent.name: p for p in (RUNS / short(model)).glob("*/sweep.json")}
        found[model] = read_sweeps(DOC.parent / "results" / short(model), ran)
    return found


def write_doc() -> None:
    """docs/RESULTS.md (:func:`austeer.report.evidence.results_doc`), after keeping every sweep next to it
    (runs/ is not versioned)."""
    from austeer.core.spec import atomic_write_text
    from austeer.report.evidence import results_doc

    found = sweeps()
    for model, states in found.items():
        for name, st in states.items():
            atomic_write_text(DOC.parent / "results" / short(model) / f"{name}.json", json.dumps(st, indent=1) + "\n")
    machine = (
        f"Last written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()} "
        f"({platform.system()}), Python {platform.python_version()}, float32 on the CPU."
    )
    atomic_write_text(DOC, results_doc(found, DOC.parent / "results", DOC.parent, machine))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=MODELS[0])
    p.add_argument("--tasks", default=",".join(PLAN))
    p.add_argument("--write-only", action="store_true")
    args = p.parse_args(argv)
    if not args.write_only:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        unknown = [t for t in tasks if t not in PLAN]
        if unknown:
            print(f"unknown task(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        run(args.model, tasks)
    write_doc()
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
