"""Does a request's greedy answer depend on what it is batched with? And if so, which part of the batch does it?

On the embedded model, for each dtype, each probe prompt is generated greedily (``austeer.serving.batched.run_rows``,
the server's engine, unsteered) alone and inside batches, and the answers compared with ``alone``:

- ``padded``: a batch of one, with ``--pad`` pad tokens on the left (masked; position ids from the mask, as
  ``generate`` makes them): padding and the attention mask alone, nothing else in the batch;
- ``copies``: a batch of ``--batch`` copies of the probe: a larger batch, no padding;
- ``mixed``: the probe with ``--batch`` - 1 other prompts of other lengths, what the server batches.

The first step's logits (one forward) separate the causes further: the largest absolute difference from
``alone`` of ``padded``, of ``padded`` with the position ids given explicitly, of ``padded`` with eager
attention (against eager ``alone``), of ``copies`` and of ``mixed``, and of eager against SDPA attention
on the probe alone (how much a different kernel alone moves the logits).

Run: ``python benchmarks/batch_invariance.py [--probes 10] [--batch 4] [--new-tokens 24] [--pad 7]
[--dtypes float32,bfloat16] [--threads N] [--json out.json]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import torch
from _common import print_machine, quiet, set_threads

import austeer
from austeer.core.collect import encode
from austeer.core.pairs import format_prompt
from austeer.serving.batched import RowRequest, run_rows

PROBES = [
    "Describe Mondays.",
    "Tell me about your day.",
    "What is the capital of France?",
    "Write a haiku about rain.",
    "Why is the sky blue?",
    "Give me three tips for sleeping well.",
    "What is a good name for a cat?",
    "Explain photosynthesis in one sentence.",
    "How do I boil an egg?",
    "What should I cook tonight?",
    "Summarise the plot of Romeo and Juliet.",
    "Is coffee good for you?",
]
OTHERS = [
    "Hi!",
    "Write a long and detailed story about a dragon who learns to paint, with at least three characters.",
    "List the planets of the solar system in order from the sun, with one fact about each of them.",
    "Why?",
    "What are the main differences between Python and JavaScript for a beginner programmer?",
]


def answers(model: Any, tok: Any, texts: list[str], n: int) -> list[str]:
    return [r.text for r in run_rows(model, tok, [RowRequest(t, max_new_tokens=n) for t in texts])]


def padded_answer(model: Any, tok: Any, text: str, pad: int, n: int) -> str:
    """Greedy answer of ``text`` in a batch of one, left-padded with ``pad`` masked pad tokens."""
    enc = encode(tok, [text], None, padding_side="left")
    ids = torch.cat([torch.full((1, pad), tok.pad_token_id), enc["input_ids"]], 1)
    mask = torch.cat([torch.zeros(1, pad, dtype=torch.long), enc["attention_mask"]], 1)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=n,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    return str(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def first_logits(model: Any, tok: Any, texts: list[str], pad: int = 0, positions: bool = False) -> torch.Tensor:
    """Next-token logits (float32) of the first text's last position, the texts batched as given (left padding,
    the first row with ``pad`` more pad tokens; ``positions``: position ids from the mask, as generate makes)."""
    enc = encode(tok, texts, None, padding_side="left")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if pad:
        ids = torch.cat([torch.full((len(texts), pad), tok.pad_token_id), ids], 1)
        mask = torch.cat([torch.zeros(len(texts), pad, dtype=torch.long), mask], 1)
    pos = (mask.cumsum(1) - 1).clamp(min=0) if positions else None
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos)
    return out.logits[0, -1].float()


@contextlib.contextmanager
def attention(model: Any, name: str) -> Iterator[None]:
    old = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(old)


def measure(dtype: str, probes: list[str], batch: int, n: int, pad: int) -> dict[str, Any]:
    model, tok = austeer.load_model(dtype=dtype)
    texts = [format_prompt(tok, p) for p in probes]
    others = [format_prompt(tok, p) for p in OTHERS]

    def mates(i: int) -> list[str]:  # batch-1 other prompts of other lengths, rotated per probe
        return [others[(i + j) % len(others)] for j in range(batch - 1)]

    start = time.perf_counter()
    alone = [answers(model, tok, [t], n)[0] for t in texts]
    seconds_alone = time.perf_counter() - start
    start = time.perf_counter()
    mixed = [answers(model, tok, [t, *mates(i)], n)[0] for i, t in enumerate(texts)]
    seconds_mixed = time.perf_counter() - start
    cases = {
        "padded": [padded_answer(model, tok, t, pad, n) for t in texts],
        "copies": [answers(model, tok, [t] * batch, n)[0] for t in texts],
        "mixed": mixed,
    }
    diffs: dict[str, list[float]] = {}

    def note(case: str, a: torch.Tensor, b: torch.Tensor) -> None:
        diffs.setdefault(case, []).append(float((a - b).abs().max()))

    for i, t in enumerate(texts):
        ref = first_logits(model, tok, [t])
        note("padded", ref, first_logits(model, tok, [t], pad))
        note("padded, explicit positions", ref, first_logits(model, tok, [t], pad, positions=True))
        note("copies", ref, first_logits(model, tok, [t] * batch))
        note("mixed", ref, first_logits(model, tok, [t, *mates(i)], positions=True))
        with attention(model, "eager"):
            eager = first_logits(model, tok, [t])
            note("padded, eager attention (vs eager alone)", eager, first_logits(model, tok, [t], pad, positions=True))
        note("eager vs sdpa, alone", ref, eager)
    return {
        "dtype": dtype,
        "probes": len(texts),
        "batch": batch,
        "new_tokens": n,
        "pad": pad,
        "answers_differ_from_alone": {case: sum(a != b for a, b in zip(alone, got)) for case, got in cases.items()},
        "first_step_max_abs_logit_diff": {case: round(max(v), 4) for case, v in diffs.items()},
        "seconds": {"alone (one by one)": round(seconds_alone, 2), "mixed batches": round(seconds_mixed, 2)},
        "examples": [
            {"probe": probes[i], "alone": alone[i], "mixed": mixed[i]}
            for i in range(len(texts))
            if alone[i] != mixed[i]
        ][:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--pad", type=int, default=7)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    quiet()
    set_threads(args.threads)
    print_machine()
    results = []
    for dtype in args.dtypes.split(","):
        r = measure(dtype, PROBES[: args.probes], args.batch, args.new_tokens, args.pad)
        results.append(r)
        print(json.dumps(r, indent=1))
    cases = list(results[0]["answers_differ_from_alone"])
    print(f"\n| dtype | answers differ: {' | '.join(cases)} |")
    print("|---" * (len(cases) + 1) + "|")
    for r in results:
        print(
            f"| {r['dtype']} | "
            + " | ".join(f"{r['answers_differ_from_alone'][c]} of {r['probes']}" for c in cases)
            + " |"
        )
    causes = list(results[0]["first_step_max_abs_logit_diff"])
    print(f"\n| dtype | first step, max abs logit diff: {' | '.join(causes)} |")
    print("|---" * (len(causes) + 1) + "|")
    for r in results:
        print(f"| {r['dtype']} | " + " | ".join(f"{r['first_step_max_abs_logit_diff'][c]:.3g}" for c in causes) + " |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
