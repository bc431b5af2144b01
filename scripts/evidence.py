"""Held-out evidence for AUSteer on a model that can do the tasks (default: the embedded Qwen2.5-Coder-1.5B).

Stages (each resumable: results go to ``docs/results/<model>/<stage>_<task>.json`` as soon as they exist,
finished pieces are skipped on a rerun):

- ``confirm``: a **confirmatory** test of one configuration fixed in advance (default: head, k=32,
  alpha=10 on 300 pairs, the best validation choice of an earlier bf16 sweep that saw only the first 200
  COPA test items). The unsteered and the steered model answer every test item; the file keeps each item's
  outcome so the paired test (McNemar) can be read on the items the earlier run never saw.
- ``compare``: ``austeer.compare`` with every method on the same evidence (paired outcomes per item).

    python scripts/evidence.py --stages confirm --tasks copa
    python scripts/evidence.py --stages compare --tasks copa --budget 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results"


def save(path: Path, data: dict[str, Any]) -> None:
    from austeer.spec import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def outcomes(samples: list[dict[str, Any]]) -> list[int]:
    return [int(bool(s["correct"])) for s in samples]


def confirm(task_name: str, args: argparse.Namespace, model: Any, tok: Any, where: Path) -> None:
    from austeer.evaluate import evaluate
    from austeer.fit import fit
    from austeer.steer import folded
    from austeer.tasks import get_task

    path = where / f"confirm_{task_name}.json"
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    config = {"site": args.site, "k": args.k, "alpha": args.alpha, "pairs": args.pairs_limit}
    if data.get("config") != config:
        data = {"task": task_name, "model": args.model, "dtype": args.dtype, "config": config}
    task = get_task(task_name)
    kw: dict[str, Any] = {"split": "test", "limit": args.test_limit, "batch_size": args.batch_size}
    if "unsteered" not in data:
        start, samples = time.perf_counter(), []  # type: ignore[var-annotated]
        metrics = evaluate(model, tok, task, samples=samples, **kw)
        data["unsteered"] = {"metrics": metrics, "correct": outcomes(samples), "ids": [s["id"] for s in samples]}
        data["unsteered"]["seconds"] = round(time.perf_counter() - start, 1)
        save(path, data)
    if "steered" not in data:
        start = time.perf_counter()
        pairs = task.pairs(model, tok, limit=args.pairs_limit)
        spec = fit(model, tok, pairs, site=args.site, k=args.k, alpha=args.alpha, batch_size=args.batch_size)
        fit_seconds = round(time.perf_counter() - start, 1)
        spec.save(where / f"confirm_{task_name}_spec")
        samples = []
        with folded(model, spec):
            metrics = evaluate(model, tok, task, samples=samples, **kw)
        data["steered"] = {
            "metrics": metrics,
            "correct": outcomes(samples),
            "ids": [s["id"] for s in samples],
            "fit_seconds": fit_seconds,
            "seconds": round(time.perf_counter() - start, 1),
        }
        save(path, data)
    print(f"confirm {task_name}: {data['unsteered']['metrics']} -> {data['steered']['metrics']}", flush=True)


def compare_stage(task_name: str, args: argparse.Namespace, model: Any, tok: Any, where: Path) -> None:
    from austeer.compare import compare
    from austeer.tasks import get_task

    path = where / f"compare_{task_name}.json"
    if path.exists():
        print(f"compare {task_name}: done ({path})")
        return
    task = get_task(task_name)
    methods = args.methods.split(",") + (["calibration"] if task.kind == "mc" else [])
    start = time.perf_counter()
    c = compare(
        model,
        tok,
        task,
        methods,
        budget=args.budget,
        pairs_limit=args.pairs_limit,
        val_limit=args.val_limit,
        test_limit=args.test_limit,
        batch_size=args.batch_size,
    )
    data = {"model": args.model, "dtype": args.dtype, "seconds": round(time.perf_counter() - start, 1), **c.to_json()}
    save(path, data)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded:qwen2.5-coder-1.5b-instruct")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--tasks", default="copa")
    p.add_argument("--stages", default="confirm,compare")
    p.add_argument("--site", default="head")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--alpha", type=float, default=10.0)
    p.add_argument("--methods", default="austeer,caa,iti,sadi,block,random,fixed")
    p.add_argument("--budget", type=int, default=4)
    p.add_argument("--pairs-limit", type=int, default=300)
    p.add_argument("--val-limit", type=int, default=100)
    p.add_argument("--test-limit", type=int, default=None, help="default: every test item")
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    from austeer.models import load_model

    where = OUT / args.model.replace("embedded:", "").replace("/", "_")
    where.mkdir(parents=True, exist_ok=True)
    model, tok = load_model(args.model, dtype=args.dtype)
    for stage in args.stages.split(","):
        for name in args.tasks.split(","):
            {"confirm": confirm, "compare": compare_stage}[stage](name, args, model, tok, where)


if __name__ == "__main__":
    main()
