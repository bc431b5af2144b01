"""Layer reuse (austeer.core.reuse): a sweep configuration's evaluation with and without replaying the layers
below its first steered layer, side by side.

The AUs are scored once (``austeer.fit`` on COPA pairs, head site) or read from ``--spec``. For every
``k`` the configuration ``(k, alpha)`` is folded and ``austeer.evaluation.evaluate.evaluate`` runs on the COPA
validation items (restricted-choice and greedy accuracy, plus the neutral perplexity) twice, interleaved
in alternating order: a full forward pass, and inside ``LayerCache.reuse()`` with the cache filled by
one unsteered evaluation first (what ``austeer.evaluation.sweep``, ``compare`` and ``tune`` do). The metrics must be
identical; the table gives each configuration's first steered layer, the share of decoder-layer calls
skipped, wall and CPU seconds and the paired ratio, and the memory the cache holds.

Run: ``python benchmarks/bench_reuse.py [--model NAME] [--dtype bfloat16] [--spec DIR] [--items 48]
[--pairs 32] [--repeats 3] [--json out.json]``
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from _common import dump, med, paired_ratio, print_machine, set_threads, spread, table

import austeer
from austeer.core.reuse import LayerCache
from austeer.core.spec import load
from austeer.core.steer import folded
from austeer.evaluation.evaluate import evaluate
from austeer.tasks import get_task

KS = (2, 8, 32, 100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--spec", default=None, help="a spec with stored scores (default: fit on --pairs COPA pairs)")
    ap.add_argument("--items", type=int, default=48, help="COPA validation items per evaluation")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    set_threads(args.threads)
    info = print_machine()
    model, tok = austeer.load_model(args.model, dtype=args.dtype)
    task = get_task("copa")
    if args.spec:
        base = load(args.spec)
    else:
        pairs = task.pairs(model, tok, limit=args.pairs)
        base = austeer.fit(model, tok, pairs, site="head", k=max(KS), alpha=1.0, progress=False)
    n_layers = len(LayerCache(model).layers)

    def run() -> dict[str, float]:
        return evaluate(model, tok, task, "val", args.items, args.batch_size)

    cache = LayerCache(model)
    t = time.perf_counter()
    with cache.reuse():
        run()
    filled = cache.stats["bytes"] / 2**20
    print(f"unsteered evaluation filling the cache: {time.perf_counter() - t:.1f}s, {filled:.0f} MiB")
    rows, raw = [], []
    for k in [k for k in KS if k <= base.k] or [base.k]:
        spec = base.with_k(k).with_alpha(args.alpha)
        first = min(u.layer for u in spec.units)
        wall: dict[str, list[float]] = {"full": [], "reuse": []}
        cpu: dict[str, list[float]] = {"full": [], "reuse": []}
        metrics: dict[str, Any] = {}
        done = {"run": 0, "skipped": 0}
        with folded(model, spec):
            for r in range(args.repeats):
                for which in ("full", "reuse") if r % 2 == 0 else ("reuse", "full"):
                    before = dict(cache.stats)
                    c0, t0 = time.process_time(), time.perf_counter()
                    if which == "reuse":
                        with cache.reuse():
                            metrics[which] = run()
                    else:
                        metrics[which] = run()
                    wall[which].append(time.perf_counter() - t0)
                    cpu[which].append(time.process_time() - c0)
                    if which == "reuse":
                        done = {key: cache.stats[key] - before[key] for key in ("run", "skipped")}
        same = metrics["full"] == metrics["reuse"]
        ratio = paired_ratio(wall["full"], wall["reuse"])
        cpu_ratio = paired_ratio(cpu["full"], cpu["reuse"])
        skipped = done["skipped"] / max(1, done["run"] + done["skipped"])
        rows.append([k, first, f"{skipped:.0%}", spread(wall["full"], "{:.2f}"), spread(wall["reuse"], "{:.2f}"),
                     f"{med(ratio):.2f}x", f"{med(cpu_ratio):.2f}x", "yes" if same else "NO"])  # fmt: skip
        raw.append({"k": k, "first_layer": first, "skipped": skipped, "wall": wall, "cpu": cpu, "same": same})
        print(f"  k={k}: first steered layer {first}/{n_layers}, full {med(wall['full']):.2f}s, "
              f"reuse {med(wall['reuse']):.2f}s, identical metrics: {same}", flush=True)  # fmt: skip
    print()
    print(table(["k", "first steered layer", "layer calls skipped", "full s", "reuse s", "speed-up (wall)",
                 "speed-up (CPU)", "same metrics"], rows))  # fmt: skip
    print(f"\ncache: {cache.stats['bytes'] / 2**20:.0f} MiB for {args.items} items ({n_layers} decoder layers)")
    dump(args.json, {"machine": info, "args": vars(args), "rows": raw, "cache_bytes": cache.stats["bytes"]})


if __name__ == "__main__":
    main()
