"""What ``austeer tune`` (pairs alone) chooses on a built-in task, against what a task sweep chose, on the
task's test items (issue: how the held-out margin relates to the task metric).

On the embedded Qwen2.5-Coder-1.5B and COPA: ``tune`` on the task's first ``--pairs`` pairs (its own
75/25 split, head site, the full head grid), then its chosen spec on every COPA test item, read against
the confirmatory run's per-item outcomes (``confirm_copa.json``: the unsteered model and the sweep's
choice, head k=32 alpha=10 on 300 pairs, same items and batches). The tune row of the sweep's
configuration is in the same grid, so its held-out effect and damage can be read beside its test gain.

    python scripts/tune_vs_sweep.py [--task copa] [--pairs 300]
    python scripts/tune_vs_sweep.py --sweep-row-only --dtype float32   # the sweep's configuration alone

``--sweep-row-only`` measures only the unsteered model and the sweep's configuration on tune's held-out pairs
(its scores from ``tune_<task>/scores``): the margin effect, the flips and their McNemar p, against what each
rule of :func:`austeer.evaluation.tune.levels` needs for tune's full head grid (24 configurations). It writes
``tune_sweep_row_<task>.json``.

Writes ``docs/results/<model>/tune_<task>/`` (tune.json, tune.png, spec/, scores/) and
``tune_vs_sweep_<task>.json``; prints the table for docs/TUNE.md.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded:qwen2.5-coder-1.5b-instruct")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--task", default="copa")
    p.add_argument("--pairs", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--sweep-row-only", action="store_true", help="measure the sweep's configuration alone")
    args = p.parse_args()
    if args.sweep_row_only:
        sweep_row_only(args)
        return

    from austeer.core.steer import folded
    from austeer.evaluation.compare import outcomes
    from austeer.evaluation.evaluate import evaluate
    from austeer.evaluation.tune import tune
    from austeer.io import atomic_write_bytes, atomic_write_text
    from austeer.models.loading import load_model
    from austeer.report.tune import tune_plot
    from austeer.stats import discordant, mcnemar
    from austeer.tasks import get_task

    where = ROOT / "docs" / "results" / args.model.replace("embedded:", "").replace("/", "_")
    confirm = json.loads((where / f"confirm_{args.task}.json").read_text())
    model, tok = load_model(args.model, dtype=args.dtype)
    task = get_task(args.task)
    pairs = task.pairs(model, tok, limit=args.pairs)
    start = time.perf_counter()
    result = tune(model, tok, pairs, where / f"tune_{args.task}", sites=("head",), model_id=args.model)
    tune_seconds = round(time.perf_counter() - start, 1)
    plot = tune_plot(result.rows, result.chosen, result.max_damage, f"{args.task} pairs ({args.model})")
    atomic_write_bytes(where / f"tune_{args.task}" / "tune.png", plot)
    base = confirm["unsteered"]["correct"]
    chosen_by_sweep = (confirm["config"]["site"], confirm["config"]["k"], confirm["config"]["alpha"])
    summary: dict[str, Any] = {
        "task": args.task,
        "model": args.model,
        "dtype": args.dtype,
        "pairs": len(pairs),
        "fit": result.n_fit,
        "heldout": result.n_heldout,
        "tune_seconds": tune_seconds,
        "message": result.message,
        "chosen": None if result.chosen is None else asdict(result.chosen),
        "sweep_choice": confirm["config"],
        "sweep_row": next((asdict(r) for r in result.rows if (r.site, r.k, r.alpha) == chosen_by_sweep), None),
        "unsteered_test": sum(base) / len(base),
        "sweep_test": sum(confirm["steered"]["correct"]) / len(base),
    }
    if result.spec is not None:
        samples: list[dict[str, Any]] = []
        with folded(model, result.spec):
            metrics = evaluate(model, tok, task, "test", batch_size=args.batch_size, samples=samples)
        got = outcomes(samples)
        fixed, broken = discordant(base, got)
        summary["tune_test"] = {"metrics": metrics, "fixed": fixed, "broken": broken, "p": mcnemar(fixed, broken)}
        summary["tune_correct"] = got
    atomic_write_text(where / f"tune_vs_sweep_{args.task}.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "tune_correct"}, indent=2))


def sweep_row_only(args: argparse.Namespace) -> None:
    from austeer.core.reuse import LayerCache
    from austeer.core.spec import load
    from austeer.evaluation.sweep import steering
    from austeer.evaluation.tune import RULES, grid, levels, split_pairs
    from austeer.io import atomic_write_text
    from austeer.models.loading import load_model
    from austeer.run.measure import effect_of, margins
    from austeer.stats import mcnemar
    from austeer.tasks import get_task

    where = ROOT / "docs" / "results" / args.model.replace("embedded:", "").replace("/", "_")
    config = json.loads((where / f"confirm_{args.task}.json").read_text())["config"]
    model, tok = load_model(args.model, dtype=args.dtype)
    pairs = get_task(args.task).pairs(model, tok, limit=args.pairs)
    held = [pairs[i] for i in split_pairs(pairs)[1]]
    scores = load(where / f"tune_{args.task}" / "scores" / config["site"])
    start = time.perf_counter()
    cache = LayerCache(model)
    with cache.reuse():
        base = margins(model, tok, held, args.batch_size)
    with steering(model, scores.with_k(config["k"]).with_alpha(config["alpha"])), cache.reuse():
        eff = effect_of(margins(model, tok, held, args.batch_size), base)
    n_configs = len(grid([config["site"]]))
    summary = {
        "task": args.task, "model": args.model, "dtype": args.dtype, "pairs": len(pairs), "heldout": len(held),
        "config": config, "effect": eff.effect, "se": eff.se, "z": eff.z, "fixed": eff.fixed,
        "broken": eff.broken, "p_choice": mcnemar(eff.fixed, eff.broken), "n_configs": n_configs,
        "needs": {r: dict(zip(("min_z", "max_p"), levels(n_configs, r))) for r in RULES},
        "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    atomic_write_text(where / f"tune_sweep_row_{args.task}.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
