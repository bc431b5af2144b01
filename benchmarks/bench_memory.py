"""Goal 2: discovery memory does not grow with the number of pairs (the statistic is streamed).

Each size runs ``austeer.score`` in its own subprocess (COPA pairs, repeated cyclically to reach large
counts, left-truncated to ``--max-length`` tokens to keep the large run short) and reports:

- ``peak RSS``: the process high-water mark (``resource.getrusage(...).ru_maxrss``), model included;
- ``RSS growth``: the highest resident size sampled every 5 ms *during* scoring, minus the size just before;
- ``still held``: the resident size after scoring and ``malloc_trim(0)`` (freed heap pages handed back
  to the OS), minus the size before: the memory scoring actually kept;
- ``Python peak``: ``tracemalloc``'s peak of Python-side allocations during scoring (texts, lists, counts).

For contrast, the memory a collect-everything approach needs for the last-token activations alone
(``2 N x layers x width x 4`` bytes, float32) is printed as a computed figure.

Run: ``python benchmarks/bench_memory.py [--sizes 100 5000] [--max-length 24] [--quick] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

from _common import copa_pairs, dump, print_machine, quiet, set_threads, table, verdict

HERE = Path(__file__).resolve().parent


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(n: int, max_length: int, batch_size: int, threads: int | None) -> dict[str, Any]:
    quiet()
    set_threads(threads)
    import austeer
    from austeer.core.sites import decoder_layers, site_width

    model, tok = austeer.load_model()
    pairs = copa_pairs(n)
    # warm up allocator and kernels on a few pairs, so both sizes start from the same state
    austeer.score(model, tok, pairs[:16], ["head"], batch_size=batch_size, max_length=max_length, progress=False)
    before = rss_bytes()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tracemalloc.start()
    t0 = time.perf_counter()
    counts = austeer.score(model, tok, pairs, ["head"], batch_size=batch_size, max_length=max_length, progress=False)
    seconds = time.perf_counter() - t0
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    done.set()
    sampler.join()
    after = rss_bytes()
    trimmed = after
    try:  # hand freed heap pages back to the OS: what remains is memory still in use
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        trimmed = rss_bytes()
    except (OSError, AttributeError):
        pass
    layers, width = len(decoder_layers(model)), site_width(model, "head")
    return {
        "pairs": n,
        "n_counted": counts["head"].n,
        "seconds": seconds,
        "rss_before_mb": before / 2**20,
        "rss_peak_during_mb": peak[0] / 2**20,
        "rss_growth_mb": (peak[0] - before) / 2**20,
        "rss_after_mb": after / 2**20,
        "rss_after_trim_mb": trimmed / 2**20,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "python_peak_mb": py_peak / 2**20,
        "collect_all_mb": 2 * n * layers * width * 4 / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 5000])
    ap.add_argument("--max-length", type=int, default=6, help="tokens kept per text (left truncation)")
    ap.add_argument("--batch-size", type=int, default=64, help="pairs per forward")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="sizes 100 and 1000")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.max_length, args.batch_size, args.threads)))
        return
    if args.quick:
        args.sizes = [100, 1000]
    set_threads(args.threads)
    info = print_machine()
    results = []
    for n in args.sizes:
        cmd = [
            sys.executable,
            str(Path(__file__)),
            "--child",
            str(n),
            "--max-length",
            str(args.max_length),
            "--batch-size",
            str(args.batch_size),
        ]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=HERE)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {n} pairs: {res['seconds']:.1f}s, peak RSS {res['maxrss_mb']:.0f} MB", flush=True)
        results.append(res)
    rows = [
        [
            r["pairs"],
            f"{r['seconds']:.1f}",
            f"{r['maxrss_mb']:.0f}",
            f"{r['rss_before_mb']:.0f}",
            f"{r['rss_peak_during_mb']:.0f}",
            f"{r['rss_growth_mb']:+.1f}",
            f"{r['rss_after_trim_mb'] - r['rss_before_mb']:+.1f}",
            f"{r['python_peak_mb']:.2f}",
            f"{r['collect_all_mb']:.0f}",
        ]
        for r in results
    ]
    print()
    print(
        table(
            [
                "pairs",
                "scoring s",
                "peak RSS MB (process)",
                "RSS before scoring MB",
                "peak RSS during scoring MB",
                "RSS growth MB",
                "still held after malloc_trim MB",
                "Python peak MB (tracemalloc)",
                "collect-all would need MB (computed)",
            ],
            rows,
        )
    )
    lo, hi = results[0], results[-1]
    ratio = hi["maxrss_mb"] / lo["maxrss_mb"]
    during = hi["rss_peak_during_mb"] / lo["rss_peak_during_mb"]
    print(
        f"\npeak RSS {hi['pairs']} pairs / {lo['pairs']} pairs: {ratio:.3f} (process), {during:.3f} (during scoring)"
        f"  (goal within 5%: {verdict(abs(ratio - 1) <= 0.05 and abs(during - 1) <= 0.05)})"
    )
    dump(args.json, {"machine": info, "results": results, "ratio": ratio, "ratio_during": during})


if __name__ == "__main__":
    main()
