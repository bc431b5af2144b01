"""Does the model's dtype (or the shared-prompt path) change which AUs are selected? Sign counts on real COPA
pairs in float32 and bfloat16, with the prompt shared or not; top-k overlaps as the number of pairs grows.

For each dtype the model is loaded once (one at a time: a 1.5B model in float32 takes 6 GB) and the pairs are
scored in growing chunks (counts add up, so the counts at 64, 300, 1000 pairs come from one pass):

- ``full``: :func:`austeer.core.collect.pair_batches` with ``share_prefix=False`` (both texts run whole), the
  momentum taken from the captured activations upcast to float32 (what :func:`austeer.core.fit.score` does);
- ``full_lowdiff``: the same activations, the difference taken in the model's dtype (the "no upcast" variant);
- ``shared``: ``pair_batches`` with ``share_prefix=True`` (prompt once, answers from its KV cache).

Reported: the number of AUs whose (pos, neg) counts differ between two variants, the share of exactly-zero
momenta, and the overlap ``|top_k(a) & top_k(b)| / k`` of the global top-k (ranking of
:func:`austeer.core.momentum.select`) for each k.

Run: ``python benchmarks/dtype_selection.py [--model NAME] [--pairs 64,300,1000] [--sites head,ffn] [--json out]``
"""

from __future__ import annotations

import argparse
import gc
import time
from collections import Counter
from typing import Any

import torch
from _common import copa_pairs, dump, print_machine, set_threads, table

import austeer
from austeer.core.collect import pair_batches
from austeer.core.momentum import SignCounts, select
from austeer.core.sites import decoder_layers, site_width

VARIANTS = ("full", "full_lowdiff", "shared")


def counts_by_size(
    model: Any,
    tok: Any,
    pairs: list[Any],
    sizes: list[int],
    sites: list[str],
    batch_size: int,
    low: torch.dtype,
    variants: tuple[str, ...] = VARIANTS,
) -> dict[int, dict[str, dict[str, SignCounts]]]:
    """``{n: {variant: {site: counts over pairs[:n]}}}`` for every ``n`` in ``sizes`` (one pass)."""
    n_layers = len(decoder_layers(model))
    acc = {v: {s: SignCounts.zeros(n_layers, site_width(model, s)) for s in sites} for v in variants}
    out: dict[int, dict[str, dict[str, SignCounts]]] = {}
    done = 0
    for n in sizes:
        chunk = pairs[done:n]
        if "full" in variants:
            for _, pos, neg in pair_batches(model, tok, chunk, sites, batch_size, share_prefix=False):
                for s in sites:
                    acc["full"][s].update(pos[s] - neg[s])
                    acc["full_lowdiff"][s].update((pos[s].to(low) - neg[s].to(low)).float())
        for _, pos, neg in pair_batches(model, tok, chunk, sites, batch_size, share_prefix=True):
            for s in sites:
                acc["shared"][s].update(pos[s] - neg[s])
        done = n
        out[n] = {v: {s: _copy(c) for s, c in acc[v].items()} for v in variants}
        print(f"  {n} pairs scored ({time.strftime('%H:%M:%S')})", flush=True)
    return out


def _copy(c: SignCounts) -> SignCounts:
    return SignCounts(c.pos.clone(), c.neg.clone(), c.total.clone(), c.squares.clone(), c.n)


def differing(a: dict[str, SignCounts], b: dict[str, SignCounts]) -> int:
    """Number of AUs whose (pos, neg) counts differ."""
    return sum(int(((a[s].pos != b[s].pos) | (a[s].neg != b[s].neg)).sum()) for s in a)


def overlap(a: dict[str, SignCounts], b: dict[str, SignCounts], k: int) -> float:
    ua = {(u.site, u.layer, u.index) for u in select(a, k)}
    ub = {(u.site, u.layer, u.index) for u in select(b, k)}
    return len(ua & ub) / k


def zeros(c: dict[str, SignCounts]) -> float:
    """Share of (pair, AU) momenta that are exactly zero."""
    n = sum(int(x.pos.numel()) * x.n for x in c.values())
    return sum(int((x.n - x.pos - x.neg).sum()) for x in c.values()) / max(1, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--pairs", default="64,300,1000")
    ap.add_argument("--sites", default="head,ffn")
    ap.add_argument("--k", default="32,100")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--shared-only", action="store_true", help="only the default (shared-prompt) path: half the time")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--save-counts", default=None, help="torch.save the counts at the largest size, per dtype/variant")
    args = ap.parse_args()
    set_threads(args.threads)
    info = print_machine()
    sizes = sorted(int(x) for x in args.pairs.split(","))
    sites = args.sites.split(",")
    ks = [int(x) for x in args.k.split(",")]
    pairs = copa_pairs(max(sizes))
    res: dict[str, dict[int, dict[str, dict[str, SignCounts]]]] = {}
    seconds: dict[str, float] = {}
    for dtype in ("float32", "bfloat16"):
        model, tok = austeer.load_model(args.model, dtype=dtype)
        print(f"{dtype}: scoring {max(sizes)} COPA pairs, sites {sites}", flush=True)
        t0 = time.perf_counter()
        variants = ("shared",) if args.shared_only else VARIANTS
        res[dtype] = counts_by_size(model, tok, pairs, sizes, sites, args.batch_size, getattr(torch, dtype), variants)
        seconds[dtype] = round(time.perf_counter() - t0, 1)
        if args.save_counts:
            torch.save({dt: r[max(sizes)] for dt, r in res.items()}, args.save_counts)
        del model
        gc.collect()

    rows, payload = [], []
    f32, b16 = res["float32"], res["bfloat16"]
    for n in sizes:
        row: dict[str, Any] = {"pairs": n}
        if not args.shared_only:
            row["diff_counts_f32_shared_vs_full"] = differing(f32[n]["full"], f32[n]["shared"])
            row["diff_counts_b16_shared_vs_full"] = differing(b16[n]["full"], b16[n]["shared"])
            row["diff_counts_b16_lowdiff_vs_full"] = differing(b16[n]["full"], b16[n]["full_lowdiff"])
            row["zero_momenta_f32"] = zeros(f32[n]["full"])
            row["zero_momenta_b16"] = zeros(b16[n]["full"])
        for k in ks:
            row[f"overlap@{k}_b16shared_vs_f32shared"] = overlap(f32[n]["shared"], b16[n]["shared"], k)
            if not args.shared_only:
                row[f"overlap@{k}_b16_vs_f32"] = overlap(f32[n]["full"], b16[n]["full"], k)
                row[f"overlap@{k}_b16lowdiff_vs_f32"] = overlap(f32[n]["full"], b16[n]["full_lowdiff"], k)
                row[f"overlap@{k}_f32shared_vs_f32"] = overlap(f32[n]["full"], f32[n]["shared"], k)
        payload.append(row)
        rows.append([v if isinstance(v, int) else f"{v:.4f}" if v < 0.01 else f"{v:.3f}" for v in row.values()])
    n_aus = sum(c.pos.numel() for c in f32[sizes[0]]["shared"].values())
    print(f"\nsites {sites}: {n_aus} AUs; scoring seconds {seconds}")
    print(table(list(payload[0]), rows))
    n_layers = f32[sizes[-1]]["shared"][sites[0]].pos.shape[0]
    where: dict[str, Any] = {}
    for k in ks:  # how deep the selected AUs sit: a forward could start at the first steered layer
        layers = sorted(u.layer for u in select(f32[sizes[-1]]["shared"], k))
        where[str(k)] = {"first": layers[0], "median": layers[len(layers) // 2], "layers": layers}
        print(f"top-{k} (float32, {sizes[-1]} pairs) layers of {n_layers}: first {layers[0]}, "
              f"median {layers[len(layers) // 2]}; per layer {dict(sorted(Counter(layers).items()))}")  # fmt: skip
    dump(args.json, {"machine": info, "model": args.model, "sites": sites, "n_aus": n_aus, "rows": payload,
                     "seconds": seconds, "where": where})  # fmt: skip


if __name__ == "__main__":
    main()
