"""Is ``--dtype auto`` (the CLI's default) the faster dtype on this machine? Whole processes, CPU beside wall time.

Each repetition runs, in rotated order, the same CLI job once per dtype (float32, bfloat16) as a separate process
(``austeer fit`` on N sentiment pairs, then ``austeer eval`` on N COPA val items): start-up, model load and the work,
what a user waits for. Reports the median wall and CPU seconds (user + system of the process) per dtype, which one
``auto`` picks here and why, and whether that is the faster one.

    python benchmarks/dtype_default.py [--model embedded:smollm2-135m-instruct] [--n 24] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DATA

DTYPES = ("float32", "bfloat16")


def run(cmd: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-1000:] if proc.stderr else ''}")
    return wall, usage.ru_utime + usage.ru_stime


def job(dtype: str, model: str, n: int, tmp: Path) -> tuple[float, float]:
    austeer = [sys.executable, "-m", "austeer"]
    fit = [*austeer, "fit", "--pairs", str(DATA / "pairs" / "sentiment.jsonl"), "--limit", str(n), "--k", "32",
           "--out", str(tmp / f"spec-{dtype}"), "--force", "--model", model, "--dtype", dtype]  # fmt: skip
    ev = [*austeer, "eval", "--task", "copa", "--limit", str(n), "--out", str(tmp / f"eval-{dtype}.json"),
          "--force", "--model", model, "--dtype", dtype]  # fmt: skip
    w1, c1 = run(fit)
    w2, c2 = run(ev)
    return w1 + w2, c1 + c2


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded:smollm2-135m-instruct")
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    from austeer.models.loading import resolve_dtype

    auto, why = resolve_dtype("auto")
    load = os.getloadavg()
    times: dict[str, list[tuple[float, float]]] = {d: [] for d in DTYPES}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = DTYPES[r % 2 :] + DTYPES[: r % 2]
            for dtype in order:
                times[dtype].append(job(dtype, args.model, args.n, Path(tmp)))
                print(f"repeat {r + 1}: {dtype} done", file=sys.stderr, flush=True)
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; cores {os.cpu_count()}")
    print(f"{args.model}: fit on {args.n} pairs + eval on {args.n} COPA items, {args.repeats} repeats, medians\n")
    print("| dtype | wall s | CPU s |\n|---|---:|---:|")
    med = {d: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for d, t in times.items()}
    for d, (w, c) in med.items():
        print(f"| {d} | {w:.1f} | {c:.1f} |")
    faster = min(med, key=lambda d: med[d][0])
    verdict = "the faster one" if str(auto).endswith(faster) else f"NOT the faster one ({faster} is)"
    print(f"\n--dtype auto picks {auto} here ({why}): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
