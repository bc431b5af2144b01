"""Goal 1: discovery throughput (tokens/s) of ``austeer.score`` against plain forwards and the authors' way.

Contenders, all on the same texts (COPA pairs: chat-formatted prompt + correct / wrong option letter):

- ``austeer``: ``austeer.score(model, tok, pairs, ["head"], batch_size=16)`` (32 texts per forward, sorted
  by length, backbone only, hooks keep the last token, streamed sign counts);
- ``austeer_shared``: the same with ``share_prefix=True``: the prompt common to the two texts of a pair
  runs once, both answers continue from its KV cache (``austeer.core.collect.shared_prefix_activations``);
- ``plain``: a plain batched forward of the whole model (``model(**enc)``, LM head included) over the
  same batches, tokenization included;
- ``plain_backbone``: the same without the LM head (the strictest reference: everything austeer adds);
- ``plain_b1``: a plain forward one text at a time (the anchor in the issue);
- ``authors``: one text at a time with ``output_hidden_states=True`` and collectors that copy the whole
  head-site tensor of every layer to the CPU (as the reference code does with pyvene), the last token
  kept, every activation stored, momentum computed at the end.

Token counts are equal for every contender, so throughput ratios are inverse time ratios. Sizes are
small by default because a 135M model forwards only a few hundred tokens/s on 2 shared CPU cores; the
ratios do not depend on the number of pairs beyond the first few batches.

Run: ``python benchmarks/bench_discovery.py [--pairs 16] [--repeats 2] [--threads N] [--quick] [--json out.json]``
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import copa_pairs, dump, interleaved, med, paired_ratio, print_machine, set_threads, spread, table, verdict

import austeer
from austeer.core.collect import backbone, encode
from austeer.core.momentum import SignCounts
from austeer.core.pairs import pair_texts
from austeer.core.sites import decoder_layers, site_module


def batches_like_score(tok: Any, pairs: list[Any], batch_size: int) -> list[list[str]]:
    """The texts grouped exactly as ``austeer.score`` groups them (length-sorted, positives then negatives)."""
    texts = [pair_texts(tok, p) for p in pairs]
    order = sorted(range(len(texts)), key=lambda i: -max(len(texts[i][0]), len(texts[i][1])))
    out = []
    for start in range(0, len(order), batch_size):
        chunk = [texts[i] for i in order[start : start + batch_size]]
        out.append([p for p, _ in chunk] + [n for _, n in chunk])
    return out


def plain(model: Any, tok: Any, batches: list[list[str]], head: bool = True) -> None:
    net = model if head else backbone(model)
    with torch.inference_mode():
        for batch in batches:
            enc = encode(tok, batch)
            net(**enc, use_cache=False)


def authors(model: Any, tok: Any, pairs: list[Any]) -> SignCounts:
    """Batch size 1, all hidden states returned, whole site tensors collected, momentum at the end."""
    layers = len(decoder_layers(model))
    grabbed: list[torch.Tensor] = []
    handles = [
        site_module(model, "head", layer).register_forward_pre_hook(
            lambda _m, args: grabbed.append(args[0].detach().to("cpu").clone())
        )
        for layer in range(layers)
    ]
    store: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for p in pairs:
                for text in pair_texts(tok, p):
                    grabbed.clear()
                    enc = encode(tok, [text])
                    model(**enc, output_hidden_states=True, use_cache=False)
                    store.append(torch.stack([g[0, -1] for g in grabbed]))
    finally:
        for h in handles:
            h.remove()
    acts = torch.stack(store)  # [2N, layers, width], all kept in memory
    counts = SignCounts.zeros(layers, acts.shape[-1])
    counts.update(acts[0::2] - acts[1::2])
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--batch-size", type=int, default=16, help="pairs per forward (2x texts)")
    ap.add_argument("--quick", action="store_true", help="8 pairs, 1 repeat")
    ap.add_argument("--no-b1", action="store_true", help="skip the two batch-1 contenders")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.repeats = 8, 1
    set_threads(args.threads)
    info = print_machine()
    model, tok = austeer.load_model()
    pairs = copa_pairs(args.pairs)
    batches = batches_like_score(tok, pairs, args.batch_size)
    all_texts = [t for b in batches for t in b]
    n_tokens = int(encode(tok, all_texts)["attention_mask"].sum())
    padded = sum(int(encode(tok, b)["attention_mask"].numel()) for b in batches)
    print(
        f"{len(pairs)} COPA pairs, {len(all_texts)} texts, {n_tokens} real tokens, {padded} token slots "
        f"in length-sorted batches of {2 * args.batch_size} (padding {padded / n_tokens - 1:.1%})"
    )

    # correctness (and warm-up): the streamed counts agree with the one-at-a-time reference
    few = pairs[:4]
    ref = authors(model, tok, few)
    ours = austeer.score(model, tok, few, ["head"], batch_size=4, progress=False)["head"]
    agree = float((ref.beta() == ours.beta()).float().mean())
    print(
        f"beta agreement with the batch-1 reference on {len(few)} pairs: {agree:.4f} "
        "(float differences of momenta near 0 can flip a few signs)"
    )
    few_batches = batches_like_score(tok, few, args.batch_size)
    warm: dict[str, Callable[[], Any]] = {
        "plain": lambda: plain(model, tok, few_batches),
        "backbone": lambda: plain(model, tok, few_batches, False),
        "shared": lambda: austeer.score(model, tok, few, ["head"], batch_size=4, progress=False, share_prefix=True),
    }

    contenders: dict[str, Callable[[], Any]] = {
        "austeer": lambda: austeer.score(model, tok, pairs, ["head"], batch_size=args.batch_size, progress=False),
        "austeer_shared": lambda: austeer.score(
            model, tok, pairs, ["head"], batch_size=args.batch_size, progress=False, share_prefix=True
        ),
        "plain": lambda: plain(model, tok, batches),
        "plain_backbone": lambda: plain(model, tok, batches, head=False),
    }
    if not args.no_b1:
        contenders["plain_b1"] = lambda: plain(model, tok, [[t] for t in all_texts])
        contenders["authors"] = lambda: authors(model, tok, pairs)
    cpu: dict[str, list[float]] = {}
    times = interleaved(contenders, args.repeats, warmup=warm, cpu=cpu)

    rows = []
    for name, ts in times.items():
        tps = [n_tokens / t for t in ts]
        ratio = med(paired_ratio(times[name], times["austeer"]))
        c_ratio = med(paired_ratio(cpu[name], cpu["austeer"]))
        rows.append(
            [
                name,
                spread(ts),
                spread(tps, "{:.0f}"),
                f"{ratio:.2f}",
                spread(cpu[name], "{:.2f}"),
                f"{n_tokens / med(cpu[name]):.0f}",
                f"{c_ratio:.2f}",
            ]
        )
    print()
    print(
        table(
            [
                "contender",
                "wall s median [min-max]",
                "tokens/s (wall)",
                "wall / austeer",
                "CPU s median [min-max]",
                "tokens per CPU s",
                "CPU / austeer",
            ],
            rows,
        )
    )

    result: dict[str, Any] = {
        "machine": info,
        "pairs": len(pairs),
        "tokens": n_tokens,
        "times": times,
        "cpu": cpu,
        "ratios": {},
    }
    for label, tt in (("wall", times), ("CPU", cpu)):
        print(f"\nthroughput ratios from {label} time (medians of per-repetition ratios):")
        for mine in ("austeer", "austeer_shared"):
            vs_plain = med(paired_ratio(tt["plain"], tt[mine]))
            vs_backbone = med(paired_ratio(tt["plain_backbone"], tt[mine]))
            line = (
                f"  {mine}: / plain batched forward {vs_plain:.2f}x ({verdict(vs_plain >= 0.9)}: >= 0.9x); "
                f"/ plain batched backbone forward {vs_backbone:.2f}x"
            )
            ratios = {"vs_plain": vs_plain, "vs_backbone": vs_backbone}
            if "authors" in tt:
                vs_auth = med(paired_ratio(tt["authors"], tt[mine]))
                line += f"; / authors' way {vs_auth:.2f}x ({verdict(vs_auth >= 2)}: >= 2x)"
                ratios["vs_authors"] = vs_auth
            print(line)
            result["ratios"][f"{mine}_{label}"] = ratios
        if "authors" in tt:
            auth_b1 = med(paired_ratio(tt["authors"], tt["plain_b1"]))
            auth_plain = med(paired_ratio(tt["authors"], tt["plain"]))
            print(f"  authors' way / plain batch-1 forward: {auth_b1:.2f}x; / plain batched forward: {auth_plain:.2f}x")

    # where austeer's time goes: tokenization, formatting, and a profile of one run
    t0 = time.perf_counter()
    for p in pairs:
        pair_texts(tok, p)
    t_fmt = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in batches:
        encode(tok, b)
    t_enc = time.perf_counter() - t0
    t_aus = med(times["austeer"])
    print(
        f"\nchat formatting of all pairs: {t_fmt:.3f}s ({t_fmt / t_aus:.1%} of austeer); "
        f"tokenization of all batches: {t_enc:.3f}s ({t_enc / t_aus:.1%})"
    )
    prof = cProfile.Profile()
    prof.enable()
    austeer.score(model, tok, pairs, ["head"], batch_size=args.batch_size, progress=False)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
    print("profile of one austeer.score run (top 12 by own time):")
    print("\n".join(line for line in buf.getvalue().splitlines() if line.strip())[:4000])
    dump(args.json, result)


if __name__ == "__main__":
    main()
