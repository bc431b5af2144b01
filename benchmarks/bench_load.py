"""Goal 5: the embedded model loads from the cache in under 3 s after the first conversion.

Every load runs in a fresh subprocess. ``first`` points ``AUSTEER_CACHE`` at a new empty temporary
directory, so ``austeer.load_model()`` dequantises the shipped GGUF and writes the safetensors cache;
``cached`` loads again from that directory. Repetitions interleave first / cached. Reported: the time of
the ``load_model()`` call (wall, and the process CPU time it used: on a machine shared with other jobs
the wall time mostly measures waiting for a core), and the whole process (Python start and imports included).

Run: ``python benchmarks/bench_load.py [--repeats 2] [--cached 3] [--quick] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import dump, med, print_machine, quiet, spread, table, verdict


def child() -> dict[str, float]:
    t0 = time.perf_counter()
    quiet()
    import austeer

    c1, t1 = time.process_time(), time.perf_counter()
    model, tok = austeer.load_model()
    c2, t2 = time.process_time(), time.perf_counter()
    assert model.config.model_type == "llama" and tok.eos_token == "<|im_end|>"
    return {"import_s": t1 - t0, "load_s": t2 - t1, "load_cpu_s": c2 - c1}


def run_child(cache: str) -> dict[str, float]:
    env = {**os.environ, "AUSTEER_CACHE": cache}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child"], capture_output=True, text=True, env=env, check=True)
    res: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2, help="first (conversion) loads, each in a new cache")
    ap.add_argument("--cached", type=int, default=3, help="cached loads after each first load")
    ap.add_argument("--quick", action="store_true", help="1 first load, 2 cached")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child()))
        return
    if args.quick:
        args.repeats, args.cached = 1, 2
    info = print_machine()
    first: list[dict[str, float]] = []
    cached: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="austeer-bench-load-") as root:
        for r in range(args.repeats):
            cache = str(Path(root) / f"cache{r}")
            first.append(run_child(cache))
            print(f"  first load (new cache): {first[-1]['load_s']:.2f}s", flush=True)
            for _ in range(args.cached):
                cached.append(run_child(cache))
                print(f"  cached load: {cached[-1]['load_s']:.2f}s", flush=True)
    rows = []
    for name, runs in (("first (GGUF conversion + cache write)", first), ("cached", cached)):
        rows.append(
            [
                name,
                len(runs),
                spread([x["load_s"] for x in runs], "{:.2f}"),
                spread([x["load_cpu_s"] for x in runs], "{:.2f}"),
                spread([x["import_s"] for x in runs], "{:.2f}"),
                spread([x["process_s"] for x in runs], "{:.2f}"),
            ]
        )
    print()
    print(
        table(
            [
                "load",
                "runs",
                "load_model() wall s",
                "load_model() CPU s",
                "import austeer wall s",
                "whole process wall s",
            ],
            rows,
        )
    )
    for key, label in (("load_s", "wall"), ("load_cpu_s", "CPU")):
        c, f = med([x[key] for x in cached]), med([x[key] for x in first])
        print(
            f"\n{label}: cached load {c:.2f}s ({verdict(c < 3.0)}: < 3 s); first load {f:.2f}s; "
            f"cached / first = {c / f:.3f} (first is {f / c:.1f}x slower)"
        )
    payload: dict[str, Any] = {"machine": info, "first": first, "cached": cached}
    dump(args.json, payload)


if __name__ == "__main__":
    main()
