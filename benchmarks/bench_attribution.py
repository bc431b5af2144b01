"""Attribution's backward pass with each pair's prompt run once against both texts run whole.

``austeer.core.attribution.margin_attribution`` (the ``attribution`` selection and method) runs one forward and
one backward pass per 4 pairs. On BoolQ the two texts of a pair share a passage of a hundred tokens and more and
differ in one answer token, so ``share_prefix=True`` (the default) runs the passage once and continues both
answers from its KV cache; the gradient reaches the passage through the cache. Contenders, interleaved, on the
same real BoolQ pairs:

- ``shared``: ``margin_attribution(..., share_prefix=True)``;
- ``whole``: ``margin_attribution(..., share_prefix=False)``.

Also printed: the largest difference of the two scores (relative to the largest score) and whether their top-32
AUs agree. CPU seconds (all threads) beside wall seconds: on a machine shared with other jobs, run ``--threads 1``
and read the CPU column.

Run: ``python benchmarks/bench_attribution.py [--model NAME] [--dtype bfloat16] [--pairs 8] [--repeats 2]
[--threads N] [--quick] [--json out.json]``
"""

from __future__ import annotations

import argparse
from typing import Any

from _common import dump, interleaved, med, paired_ratio, print_machine, set_threads, spread, table

import austeer
from austeer.core.attribution import margin_attribution, top_attributed
from austeer.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model name (default: the embedded SmolLM2-135M)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true", help="4 pairs, 1 repeat")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.repeats = 4, 1
    set_threads(args.threads)
    info = print_machine()
    model, tok = austeer.load_model(args.model, dtype=args.dtype)
    pairs = get_task("boolq").pairs(model, tok, limit=args.pairs)
    lengths = [len(tok(p.prompt)["input_ids"]) for p in pairs]
    print(f"{len(pairs)} BoolQ pairs, prompts of {min(lengths)}-{max(lengths)} tokens (user turn), {args.dtype}")

    got: dict[bool, Any] = {}

    def run(share: bool) -> None:
        got[share] = margin_attribution(model, tok, pairs, "head", progress=False, share_prefix=share)

    cpu: dict[str, list[float]] = {}
    wall = interleaved({"shared": lambda: run(True), "whole": lambda: run(False)}, args.repeats, cpu=cpu)
    diff = float((got[True] - got[False]).abs().max() / got[False].abs().max())
    tops = [[(u.layer, u.index) for u in top_attributed({"head": got[s]}, 32)] for s in (True, False)]
    speedup, cpu_speedup = paired_ratio(wall["whole"], wall["shared"]), paired_ratio(cpu["whole"], cpu["shared"])
    print(
        table(
            ["contender", "wall s", "CPU s"],
            [[name, spread(wall[name]), spread(cpu[name])] for name in ("shared", "whole")],
        )
    )
    print(
        f"whole / shared: wall {spread(speedup, '{:.2f}')}x, CPU {spread(cpu_speedup, '{:.2f}')}x; "
        f"largest score difference {diff:.1e} of the largest score; top-32 AUs "
        f"{'the same' if tops[0] == tops[1] else f'{len(set(tops[0]) & set(tops[1]))} of 32 shared'}"
    )
    dump(
        args.json,
        {
            "machine": info, "model": args.model or "embedded", "dtype": args.dtype, "pairs": len(pairs),
            "wall": wall, "cpu": cpu, "speedup_wall": med(speedup), "speedup_cpu": med(cpu_speedup),
            "max_rel_diff": diff, "same_top32": tops[0] == tops[1],
        },
    )  # fmt: skip


if __name__ == "__main__":
    main()
