"""Throughput and latency of ``austeer serve`` with and without per-request steering (loopback only).

Starts the server in this process on 127.0.0.1 (a free port), sends a bounded number of concurrent
chat requests per scenario, and stops by itself. Scenarios, run in interleaved rounds so that a noisy
machine affects them alike:

- ``unsteered``: no request steers;
- ``steered``: every request steers with the same spec;
- ``mixed``: requests cycle through no steer, spec A, spec B and spec A with another alpha, so one
  batch mixes four different gain settings;
- ``unbatched``: unsteered, but the server runs one request at a time (``max_batch=1``): what the
  micro-batching buys.

Prints requests/s, generated tokens/s and p50/p95 request latency per scenario, and the ratios to
``unsteered``. Usage::

    python benchmarks/serve_bench.py [--requests 16] [--concurrency 8] [--max-tokens 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

PROMPTS = [
    "Write a long story about a lighthouse keeper.",
    "Describe, in detail, a day at the beach.",
    "Tell me everything about your favourite restaurant.",
    "Write a detailed review of a film you watched recently.",
    "Explain at length how you would spend a free weekend.",
    "Describe the city you live in, street by street.",
]


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def run_scenario(url: str, steers: list[dict | None], n: int, concurrency: int, max_tokens: int) -> dict:
    bodies = []
    for i in range(n):
        body: dict = {"messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "max_tokens": max_tokens}
        if steers[i % len(steers)] is not None:
            body["steer"] = steers[i % len(steers)]
        bodies.append(body)
    return run_bodies(f"{url}/v1/chat/completions", bodies, concurrency)


def run_bodies(url: str, bodies: list[dict], concurrency: int) -> dict:
    """POST every body to ``url`` from ``concurrency`` client threads; wall time, latencies and generated tokens."""
    latencies: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    next_i = [0]

    def worker() -> None:
        with httpx.Client(timeout=600) as client:
            while True:
                with lock:
                    i = next_i[0]
                    if i >= len(bodies):
                        return
                    next_i[0] += 1
                t0 = time.perf_counter()
                r = client.post(url, json=bodies[i])
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code != 200:
                        errors.append(r.text)
                    else:
                        latencies.append(dt)
                        tokens.append(r.json()["usage"]["completion_tokens"])

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0][:300]}")
    return {"wall_s": wall, "latencies": latencies, "tokens": sum(tokens), "requests": len(bodies)}


def summarize(runs: list[dict]) -> dict:
    lat = [x for r in runs for x in r["latencies"]]
    wall = sum(r["wall_s"] for r in runs)
    return {
        "requests": sum(r["requests"] for r in runs),
        "req_per_s": sum(r["requests"] for r in runs) / wall,
        "tok_per_s": sum(r["tokens"] for r in runs) / wall,
        "mean_tokens": sum(r["tokens"] for r in runs) / sum(r["requests"] for r in runs),
        "p50_s": statistics.median(lat),
        "p95_s": percentile(lat, 0.95),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=16, help="requests per scenario and round")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--json", default=None, help="also write the summary here")
    args = p.parse_args(argv)
    if not (1 <= args.requests <= 256 and 1 <= args.concurrency <= 64 and 1 <= args.rounds <= 10):
        p.error("keep it bounded: requests <= 256, concurrency <= 64, rounds <= 10")

    import torch

    from austeer.core.fit import score
    from austeer.core.momentum import select
    from austeer.core.pairs import read_pairs
    from austeer.core.spec import SteerSpec, fingerprint
    from austeer.models.loading import load_model
    from austeer.serving.server import Server, ServerConfig

    model, tok = load_model()
    pairs = read_pairs(Path(__file__).resolve().parents[1] / "src" / "austeer" / "data" / "pairs" / "sentiment.jsonl")
    counts = score(model, tok, pairs, ["head", "ffn"], batch_size=20, progress=False)
    fp = fingerprint(model)
    spec_a = SteerSpec(select({"head": counts["head"]}, 32), 5.0, "bench", fp, len(pairs), ["head"])
    spec_b = SteerSpec(select({"ffn": counts["ffn"]}, 16), -8.0, "bench", fp, len(pairs), ["ffn"])
    steers = {"a": spec_a, "b": spec_b}
    scenarios: dict[str, list[dict | None]] = {
        "unsteered": [None],
        "steered": [{"name": "a"}],
        "mixed": [None, {"name": "a"}, {"name": "b"}, {"name": "a", "alpha": 9.0}],
    }
    cfg = {"port": 0, "max_batch": args.max_batch, "batch_wait_ms": 10.0}
    runs: dict[str, list[dict]] = {name: [] for name in [*scenarios, "unbatched"]}
    print(
        f"torch threads {torch.get_num_threads()}; {args.requests} requests x {args.rounds} rounds per scenario, "
        f"concurrency {args.concurrency}, max_tokens {args.max_tokens}, max_batch {args.max_batch}",
        file=sys.stderr,
    )
    batched = Server(model, tok, steers, ServerConfig(**cfg))
    single = Server(model, tok, steers, ServerConfig(**{**cfg, "max_batch": 1}))
    single.engine.model_lock = batched.engine.model_lock  # one model: never two generations at once
    with batched, single:
        run_scenario(batched.url, [None], 2, 2, 4)  # warm-up
        for rnd in range(args.rounds):
            for name, st in scenarios.items():
                runs[name].append(run_scenario(batched.url, st, args.requests, args.concurrency, args.max_tokens))
                print(f"round {rnd + 1}: {name} done", file=sys.stderr)
            n_single = max(1, args.requests // 2)
            runs["unbatched"].append(run_scenario(single.url, [None], n_single, args.concurrency, args.max_tokens))
            print(f"round {rnd + 1}: unbatched done", file=sys.stderr)
    summary = {name: summarize(r) for name, r in runs.items()}
    base = summary["unsteered"]
    head = f"{'scenario':10s} {'req/s':>7s} {'tok/s':>7s} {'tokens':>6s} {'p50 s':>7s} {'p95 s':>7s}"
    print(f"{head}   ratios vs unsteered")
    for name, s in summary.items():
        ratios = (
            f"throughput x{s['tok_per_s'] / base['tok_per_s']:.2f}, p50 x{s['p50_s'] / base['p50_s']:.2f}, "
            f"p95 x{s['p95_s'] / base['p95_s']:.2f}"
        )
        print(
            f"{name:10s} {s['req_per_s']:7.2f} {s['tok_per_s']:7.1f} {s['mean_tokens']:6.1f} "
            f"{s['p50_s']:7.2f} {s['p95_s']:7.2f}   {ratios}"
        )
    if args.json:
        from austeer.core.spec import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
