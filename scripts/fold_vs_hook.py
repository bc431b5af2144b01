"""How far folded weights are from hooks, per dtype, on the embedded model: the demo's spec (32 head AUs fitted
on the shipped sentiment pairs, alpha 5), prompts from the demo and the sentiment task.

Prints and writes (``--out``, JSON) per dtype: the largest logit gap between the hooked and the folded model
over every prompt position, the share of identical greedy tokens (position by position over ``--tokens``
new tokens) and the number of identical greedy texts. The result is in docs/GUARANTEES.md.

    .venv/bin/python scripts/fold_vs_hook.py --tokens 32 --out docs/results/fold_vs_hook.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import austeer
from austeer.core.pairs import format_prompt
from austeer.io import atomic_write_text
from austeer.run.generate import generate, steered

PROMPTS = [
    "Tell me about your week.",
    "What do you think of rainy days?",
    "Describe your neighbourhood.",
    "Write a short note to a colleague about the meeting.",
    "What did you have for breakfast?",
    "How was the film you saw last night?",
    "Describe Mondays.",
    "What is your opinion of public transport?",
]


def measure(dtype: str, tokens: int) -> dict[str, object]:
    model, tok = austeer.load_model(dtype=dtype)
    pairs = austeer.read_pairs(Path(austeer.__file__).parent / "data" / "pairs" / "sentiment.jsonl")
    spec = austeer.fit(model, tok, pairs, site="head", k=32, alpha=5.0, progress=False)
    texts: dict[str, list[str]] = {}
    ids: dict[str, list[list[int]]] = {}
    logits: dict[str, list[torch.Tensor]] = {}
    for mode in ("hook", "fold"):
        with steered(model, spec, mode):  # type: ignore[arg-type]
            texts[mode] = generate(model, tok, PROMPTS, max_new_tokens=tokens, batch_size=1)
            with torch.inference_mode():
                logits[mode] = [
                    model(**tok(format_prompt(tok, p), return_tensors="pt")).logits.float()[0] for p in PROMPTS
                ]
        ids[mode] = [tok(t, add_special_tokens=False)["input_ids"] for t in texts[mode]]
    gap = max(float((a - b).abs().max()) for a, b in zip(logits["hook"], logits["fold"]))
    scale = max(float(a.abs().max()) for a in logits["hook"])
    same = total = 0
    for a, b in zip(ids["hook"], ids["fold"]):
        n = max(len(a), len(b))
        total += n
        same += sum(1 for i in range(min(len(a), len(b))) if a[i] == b[i])
    return {
        "dtype": dtype,
        "max_logit_gap": gap,
        "max_abs_logit": scale,
        "identical_token_share": same / max(total, 1),
        "identical_texts": sum(a == b for a, b in zip(texts["hook"], texts["fold"])),
        "prompts": len(PROMPTS),
        "new_tokens": tokens,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = [measure(d, args.tokens) for d in args.dtypes.split(",")]
    for r in rows:
        print(
            f"{r['dtype']:>9}: max logit gap {r['max_logit_gap']:.3g} (logits up to {r['max_abs_logit']:.3g}), "
            f"identical greedy tokens {r['identical_token_share']:.1%}, "
            f"identical texts {r['identical_texts']}/{r['prompts']}"
        )
    if args.out:
        atomic_write_text(args.out, json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
