"""bfloat16 against float32 (``--dtype auto`` picks bfloat16 on CPUs with avx512_bf16/amx_bf16), side by side.

Contenders, all interleaved in one run (each repetition runs every one, in rotated order):

- discovery: ``austeer.score`` on N COPA pairs (head site, the default shared-prompt path) in float32 and
  bfloat16; in float32 also ``share_prefix=False`` (both texts whole), a plain batched forward of the whole
  model over the same texts, and (unless ``--no-b1``) the authors' way (batch 1, all hidden states);
- evaluation: ``austeer.tasks.mc.score_mc`` on N COPA val items (one forward per batch, the next-token
  logits only) in float32 and bfloat16;
- generation: greedy ``austeer.run.generate.generate`` of T new tokens for a batch of prompts, float32 vs bfloat16.

Peak memory: one child process per dtype loads the model and scores the pairs, and reports its peak RSS.

Run: ``python benchmarks/bench_dtype.py [--model NAME] [--pairs 32] [--items 32] [--new-tokens 16]
[--repeats 3] [--threads 1] [--no-b1] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import copa_pairs, dump, interleaved, med, paired_ratio, print_machine, set_threads, spread, table
from bench_discovery import authors, batches_like_score, plain

import austeer
from austeer.run.generate import generate
from austeer.tasks import get_task
from austeer.tasks.mc import score_mc

PROMPTS = [
    "Tell me about your day.",
    "What is the capital of France?",
    "Write a haiku about rain.",
    "Why is the sky blue?",
]


def child(model_name: str | None, dtype: str, n_pairs: int, batch_size: int) -> None:
    """Load, score, and print the peak RSS (MB) as JSON: run in a fresh process per dtype."""
    model, tok = austeer.load_model(model_name, dtype=dtype)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    austeer.score(model, tok, copa_pairs(n_pairs), ["head"], batch_size=batch_size, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"dtype": dtype, "rss_after_load_mb": round(loaded), "peak_rss_mb": round(peak)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-b1", action="store_true", help="skip the authors' batch-1 way (slow on a big model)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    set_threads(args.threads)
    if args.child:
        child(args.model, args.child, args.pairs, args.batch_size)
        return
    info = print_machine()
    models = {dt: austeer.load_model(args.model, dtype=dt) for dt in ("float32", "bfloat16")}
    tok = models["float32"][1]
    pairs = copa_pairs(args.pairs)
    items = get_task("copa").items("val", args.items)
    bs = args.batch_size

    def disc(dt: str, share: bool = True) -> Callable[[], Any]:
        m = models[dt][0]
        return lambda: austeer.score(m, tok, pairs, ["head"], batch_size=bs, progress=False, share_prefix=share)

    def mc(dt: str) -> Callable[[], Any]:
        return lambda: score_mc(models[dt][0], tok, items, batch_size=bs)

    def gen(dt: str) -> Callable[[], Any]:
        return lambda: generate(models[dt][0], tok, PROMPTS, max_new_tokens=args.new_tokens)

    batches = batches_like_score(tok, pairs, bs)
    groups: dict[str, dict[str, Callable[[], Any]]] = {
        "discovery": {
            "score_f32": disc("float32"),
            "score_bf16": disc("bfloat16"),
            "score_f32_full_texts": disc("float32", share=False),
            "plain_forward_f32": lambda: plain(models["float32"][0], tok, batches),
        },
        "evaluation": {"mc_f32": mc("float32"), "mc_bf16": mc("bfloat16")},
        "generation": {"gen_f32": gen("float32"), "gen_bf16": gen("bfloat16")},
    }
    if not args.no_b1:
        groups["discovery"]["authors_f32"] = lambda: authors(models["float32"][0], tok, pairs)
    few = copa_pairs(2)

    def warm_up(m: Any) -> None:
        austeer.score(m, tok, few, ["head"], progress=False)
        score_mc(m, tok, items[:2])
        generate(m, tok, PROMPTS[:1], max_new_tokens=2)

    warm = {"float32": lambda: warm_up(models["float32"][0]), "bfloat16": lambda: warm_up(models["bfloat16"][0])}
    result: dict[str, Any] = {"machine": info, "model": args.model or "embedded", "pairs": args.pairs,
                              "items": args.items, "new_tokens": args.new_tokens, "groups": {}}  # fmt: skip
    ref = {"discovery": "score_f32", "evaluation": "mc_f32", "generation": "gen_f32"}
    for name, contenders in groups.items():
        print(f"\n{name}:", flush=True)
        cpu: dict[str, list[float]] = {}
        times = interleaved(contenders, args.repeats, warmup=warm, cpu=cpu)
        rows = []
        for c in contenders:
            wall = med(paired_ratio(times[c], times[ref[name]]))
            cpur = med(paired_ratio(cpu[c], cpu[ref[name]]))
            rows.append([c, spread(times[c]), f"{wall:.2f}", spread(cpu[c], "{:.2f}"), f"{cpur:.2f}"])
        print(table(["contender", "wall s median [min-max]", f"wall / {ref[name]}", "CPU s", "CPU / ref"], rows))
        result["groups"][name] = {"times": times, "cpu": cpu}
    if not args.no_memory:
        mem = []
        for dt in ("float32", "bfloat16"):
            cmd = [sys.executable, str(Path(__file__)), "--child", dt, "--pairs", str(args.pairs)]
            cmd += ["--batch-size", str(bs)] + (["--model", args.model] if args.model else [])
            cmd += ["--threads", str(args.threads)] if args.threads else []
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            mem.append({**json.loads(out), "seconds": round(time.perf_counter() - t0, 1)})
        print("\npeak memory (one process per dtype: load + score the pairs):")
        print(table(["dtype", "RSS after load MB", "peak RSS MB", "process s"],
                    [[m["dtype"], m["rss_after_load_mb"], m["peak_rss_mb"], m["seconds"]] for m in mem]))  # fmt: skip
        result["memory"] = mem
    dump(args.json, result)


if __name__ == "__main__":
    main()
