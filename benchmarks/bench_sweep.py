"""Goal 4: a grid of 16 (k, alpha) configurations costs <= 1.1x the time of 16 plain evaluations.

The AUs are scored once (``austeer.fit`` on COPA pairs, head site; timed separately). Each configuration
is then what ``austeer.evaluation.sweep`` does per grid row: ``spec.with_k(k).with_alpha(alpha)`` (a re-selection from
the stored counts), ``austeer.evaluation.sweep.steering`` (fold the k columns), ``austeer.evaluation.evaluate.evaluate``
on the COPA validation items (one batched forward per item batch: restricted-choice and greedy one-token accuracy, plus
the perplexity side check), unfold. The baseline is the same ``evaluate`` call, unsteered.
Each configuration is timed right after a plain evaluation (A/B pairs, order alternating).

Also measured: the switching cost alone (``with_k`` + ``with_alpha`` + fold + unfold) over the 16
configurations, repeated, which gives the ratio at any item count as ``1 + switch / evaluation``.

Run: ``python benchmarks/bench_sweep.py [--items 100] [--quick] [--json out.json]``
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from _common import dump, med, paired_ratio, print_machine, set_threads, spread, table, verdict

import austeer
from austeer.evaluation.evaluate import evaluate
from austeer.evaluation.sweep import steering
from austeer.tasks import get_task

KS = (2, 8, 32, 100)
ALPHAS = (1.0, 5.0, 15.0, 50.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=100, help="validation items per evaluation")
    ap.add_argument("--pairs", type=int, default=32, help="COPA pairs scored once")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="24 items, 4 configurations")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    set_threads(args.threads)
    grid = [(k, a) for k in KS for a in ALPHAS]
    if args.quick:
        args.items, grid = 24, grid[::5]
    info = print_machine()
    model, tok = austeer.load_model()
    task = get_task("copa")
    pairs = task.pairs(model, tok, limit=args.pairs)
    t0 = time.perf_counter()
    base = austeer.fit(model, tok, pairs, site="head", k=max(KS), alpha=1.0, progress=False)
    t_fit = time.perf_counter() - t0
    print(f"scored {len(pairs)} COPA pairs once in {t_fit:.1f}s; grid {len(grid)} configs; {args.items} val items")

    def plain() -> dict[str, float]:
        return evaluate(model, tok, task, "val", args.items, args.batch_size)

    def config(k: int, alpha: float) -> dict[str, float]:
        spec = base.with_k(k).with_alpha(alpha)
        with steering(model, spec):
            return evaluate(model, tok, task, "val", args.items, args.batch_size)

    plain()  # warm-up
    t_plain: list[float] = []
    t_conf: list[float] = []
    c_plain: list[float] = []
    c_conf: list[float] = []
    accs = []
    for i, (k, alpha) in enumerate(grid):
        order = ("plain", "config") if i % 2 == 0 else ("config", "plain")
        for which in order:
            c, t = time.process_time(), time.perf_counter()
            m = plain() if which == "plain" else config(k, alpha)
            (t_plain if which == "plain" else t_conf).append(time.perf_counter() - t)
            (c_plain if which == "plain" else c_conf).append(time.process_time() - c)
            if which == "config":
                accs.append((k, alpha, m["choice_accuracy"]))
        print(
            f"  config {i + 1}/{len(grid)} k={k} alpha={alpha}: plain {t_plain[-1]:.2f}s, "
            f"config {t_conf[-1]:.2f}s, choice accuracy {accs[-1][2]:.3f}",
            flush=True,
        )

    # switching cost alone, over the whole grid, repeated
    switch: list[float] = []
    for _ in range(5):
        t = time.perf_counter()
        for k, alpha in grid:
            spec = base.with_k(k).with_alpha(alpha)
            with steering(model, spec):
                pass
        switch.append(time.perf_counter() - t)

    total_plain, total_conf = sum(t_plain), sum(t_conf)
    cpu_ratio = sum(c_conf) / sum(c_plain)
    ratio = total_conf / total_plain
    per = paired_ratio(t_conf, t_plain)
    per_switch = med(switch) / len(grid)
    extrap = 1 + per_switch / med(t_plain)
    rows = [
        [f"{len(grid)} plain evaluations", f"{total_plain:.2f}", spread(t_plain, "{:.3f}")],
        [f"{len(grid)} configurations (switch + evaluate)", f"{total_conf:.2f}", spread(t_conf, "{:.3f}")],
        [f"{len(grid)} plain evaluations, CPU s", f"{sum(c_plain):.2f}", spread(c_plain, "{:.3f}")],
        [f"{len(grid)} configurations, CPU s", f"{sum(c_conf):.2f}", spread(c_conf, "{:.3f}")],
        [f"switching only, whole grid (x{len(switch)})", f"{med(switch):.3f}", f"{per_switch * 1000:.2f} ms/config"],
        ["scoring once (fit)", f"{t_fit:.2f}", ""],
    ]
    print()
    print(table(["what", "seconds total", "seconds per call median [min-max]"], rows))
    print(
        f"\ngrid / plain: {ratio:.3f} (per-config paired median {med(per):.3f} [{min(per):.3f}-{max(per):.3f}]) "
        f"({verdict(ratio <= 1.1)}: <= 1.1x); from the switching cost: {extrap:.4f}x"
    )
    print(f"grid / plain from CPU time: {cpu_ratio:.3f} ({verdict(cpu_ratio <= 1.1)}: <= 1.1x)")
    print(f"including the one-time scoring: {(total_conf + t_fit) / total_plain:.3f}x")
    best = max(accs, key=lambda x: x[2])
    print(f"best config: k={best[0]} alpha={best[1]} choice accuracy {best[2]:.3f}")
    payload: dict[str, Any] = {
        "machine": info,
        "items": args.items,
        "grid": grid,
        "t_plain": t_plain,
        "t_config": t_conf,
        "cpu_plain": c_plain,
        "cpu_config": c_conf,
        "switch": switch,
        "t_fit": t_fit,
        "ratio": ratio,
    }
    dump(args.json, payload)


if __name__ == "__main__":
    main()
