"""Task metric of a spec selected in bfloat16 against one selected in float32, on the same items and model.

Reads the counts saved by ``dtype_selection.py --save-counts`` (float32 and bfloat16, default shared-prompt
path), keeps the global top-k of each, and evaluates the unsteered model and both specs (same ``alpha``) on
the COPA test items with ``austeer.evaluation.evaluate`` in the evaluation dtype; reports the metrics and the share
of items on which the two steered models answer alike.

Run: ``python benchmarks/dtype_task.py --counts counts.pt [--model NAME] [--k 32] [--alpha 5] [--limit 100]
[--dtype float32]``
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from _common import dump, print_machine, set_threads, table

import austeer
from austeer.core.momentum import select
from austeer.core.spec import SteerSpec
from austeer.core.steer import folded
from austeer.evaluation.evaluate import evaluate
from austeer.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--counts", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=5.0)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--dtype", default="float32", help="dtype of the evaluated model")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    set_threads(args.threads)
    info = print_machine()
    saved = torch.load(args.counts, weights_only=False)
    model, tok = austeer.load_model(args.model, dtype=args.dtype)
    task = get_task("copa")
    specs = {dt: SteerSpec(units=select(saved[dt]["shared"], args.k), alpha=args.alpha) for dt in saved}
    overlap = len({(u.site, u.layer, u.index) for u in specs["float32"].units} & {
        (u.site, u.layer, u.index) for u in specs["bfloat16"].units}) / args.k  # fmt: skip
    results: dict[str, Any] = {}
    answers: dict[str, list[str]] = {}
    for name, spec in (("unsteered", None), *((f"selected in {dt}", s) for dt, s in specs.items())):
        samples: list[dict[str, Any]] = []
        if spec is None:
            results[name] = evaluate(model, tok, task, "test", args.limit, samples=samples)
        else:
            with folded(model, spec):
                results[name] = evaluate(model, tok, task, "test", args.limit, samples=samples)
        answers[name] = [s["greedy"] for s in samples]
        print(f"  {name}: {results[name]}", flush=True)
    a, b = answers["selected in float32"], answers["selected in bfloat16"]
    same = sum(x == y for x, y in zip(a, b)) / len(a)
    print(
        f"\nCOPA test, {args.limit} items, model in {args.dtype}; "
        f"top-{args.k} overlap {overlap:.3f}; alpha {args.alpha}"
    )
    rows = [[n, f"{m['accuracy']:.3f}", f"{m['choice_accuracy']:.3f}", f"{m['ppl']:.3f}"] for n, m in results.items()]
    print(table(["spec", "accuracy", "choice_accuracy", "ppl"], rows))
    print(f"same greedy answer under the two steered models: {same:.3f} of items")
    dump(args.json, {"machine": info, "args": vars(args), "overlap": overlap, "results": results, "same": same})


if __name__ == "__main__":
    main()
