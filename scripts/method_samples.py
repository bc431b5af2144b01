"""What a steered model writes: a comparison method at one configuration, built from a task's pairs, beside the
unsteered model on the first test items, each continuation with the task's judge score; and which AUs it steers.

Where a behaviour score jumps (detox 0.78 -> 1.00 with 128 AUs added), read the text before believing it: a
steer can reach a judge's threshold by refusing, repeating or babbling. Prints a summary and writes (``--out``,
JSON) every pair of continuations, how many of each open as a refusal or an assistant's disclaimer
(:data:`REFUSALS`, a plain prefix test) instead of continuing the text, and the steered AUs per layer.

    .venv/bin/python scripts/method_samples.py --task detox --method au-add-attr --config k=128,alpha=5 \\
        --dtype bfloat16 --pairs-limit 100 --test-limit 30 \\
        --out docs/results/qwen2.5-coder-1.5b-instruct/samples_detox_auadd_attr.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import austeer
from austeer.evaluation.evaluate import evaluate
from austeer.io import atomic_write_text
from austeer.methods import METHODS, gather
from austeer.tasks import get_task

#: openings of a reply that declines or comments instead of continuing the text (a prefix test, not a classifier)
REFUSALS = ("I'm sorry", "I\u2019m sorry", "Sorry", "I can't", "I cannot", "I won't", "As an AI")


def refusals(texts: list[str]) -> int:
    """How many of ``texts`` open with one of :data:`REFUSALS`."""
    return sum(t.lstrip().startswith(REFUSALS) for t in texts)


def parse_config(text: str) -> dict[str, Any]:
    """``k=128,alpha=5`` -> ``{"k": 128, "alpha": 5.0}`` (integers stay integers)."""
    out: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded:qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--task", default="detox")
    ap.add_argument("--method", default="au-add-attr")
    ap.add_argument("--config", default="k=128,alpha=5", help="the method's configuration, key=value,...")
    ap.add_argument("--pairs-limit", type=int, default=100)
    ap.add_argument("--test-limit", type=int, default=30)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    method, config = METHODS[args.method], parse_config(args.config)
    model, tok = austeer.load_model(args.model, dtype=args.dtype)
    task = get_task(args.task)
    pairs = list(task.pairs(model, tok, limit=args.pairs_limit))
    evidence = gather(model, tok, pairs, list(method.sites), progress=True)
    steerer = method.build(model, evidence, **config)
    runs: dict[str, list[dict[str, Any]]] = {"unsteered": [], "steered": []}
    metrics = {"unsteered": evaluate(model, tok, task, split="test", limit=args.test_limit, samples=runs["unsteered"])}
    with steerer.hooks(model):
        metrics["steered"] = evaluate(model, tok, task, split="test", limit=args.test_limit, samples=runs["steered"])
    refused = {k: refusals([s["output"] for s in v]) for k, v in runs.items()}
    layers = Counter(layer for layer, v in getattr(steerer, "vectors", {}).items() for _ in v.nonzero())
    result = {
        "model": args.model, "dtype": args.dtype, "task": args.task, "method": args.method, "config": config,
        "pairs": len(pairs), "n_items": len(runs["steered"]), "metrics": metrics,
        "refusals": refused, "refusal_openings": list(REFUSALS), "aus_per_layer": dict(sorted(layers.items())),
        "samples": [
            {"id": a["id"], "unsteered": a["output"], "unsteered_score": a["score"], "unsteered_correct": a["correct"],
             "steered": b["output"], "steered_score": b["score"], "steered_correct": b["correct"]}
            for a, b in zip(runs["unsteered"], runs["steered"])
        ],
    }  # fmt: skip
    for s in result["samples"][:10]:
        print(f"--- {s['id']}")
        print(f"  none  ({s['unsteered_score']:.2f}) {s['unsteered']!r}")
        print(f"  steer ({s['steered_score']:.2f}) {s['steered']!r}")
    print({k: {m: round(v, 3) for m, v in d.items()} for k, d in metrics.items()})
    print(f"continuations opening as a refusal (of {len(runs['steered'])}): {refused}; AUs per layer: {layers}")
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
