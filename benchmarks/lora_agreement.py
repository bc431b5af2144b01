"""How closely a LoRA adapter (``austeer export --format lora``) served in bfloat16 follows austeer's hooks.

For each site (head, neuron, ffn) a spec is fitted on the sentiment pairs (float32), exported as an adapter
(float32 and bfloat16 factors) and loaded with ``peft.PeftModel`` onto the same model; on chat prompts:

- **max / mean logit gap**: |adapter logits - hooked logits| over every position of the prompt and of the
  float32 hooks' greedy continuation (teacher-forced: both read the same tokens);
- **identical greedy tokens**: the share of the adapter's greedy tokens equal to the hooks' at the same
  position, and the prompts whose whole continuation is identical;
- for scale, the same figures for bfloat16 hooks against float32 hooks (what bfloat16 alone changes), and
  the steering itself (mean |hooks - unsteered|).

Rows: float32 model + float32 adapter; bfloat16 model + bfloat16 adapter as PEFT loads it by default (the
factors upcast to float32 for the LoRA product: ``autocast_adapter_dtype=True``); the same with the product in
bfloat16 (``autocast_adapter_dtype=False``, as an engine that keeps the adapter in the model's dtype computes).

Run: ``python benchmarks/lora_agreement.py [--pairs 40] [--k 32] [--alpha 5] [--prompts 8] [--new-tokens 32]
[--threads 1] [--json out.json]``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from _common import DATA, dump, print_machine, set_threads, table
from peft import PeftModel

import austeer
from austeer.core.pairs import format_prompt
from austeer.core.steer import apply
from austeer.exports.lora import export_lora

PROMPTS = [
    "How was your weekend?",
    "Describe the weather today.",
    "What do you think of the new restaurant downtown?",
    "Tell me about your morning commute.",
    "How did the meeting go?",
    "Write one sentence about Mondays.",
    "What was the movie like?",
    "How is the new phone?",
    "Give me your opinion of the city.",
    "How was the concert last night?",
]


def chat_ids(tok: Any, prompt: str) -> torch.Tensor:
    return torch.tensor([tok(format_prompt(tok, prompt), add_special_tokens=False).input_ids])


@torch.no_grad()
def greedy(model: Any, ids: torch.Tensor, n: int) -> torch.Tensor:
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, ids.shape[1] :]


@torch.no_grad()
def logits(model: Any, seq: torch.Tensor) -> torch.Tensor:
    return model(seq).logits[0].float()


def run(model: Any, prompts: list[torch.Tensor], n: int, seqs: list[torch.Tensor] | None) -> dict[str, list[Any]]:
    """Greedy tokens of every prompt, and the logits over ``seqs`` (default: prompt + those tokens)."""
    tokens = [greedy(model, ids, n) for ids in prompts]
    seqs = seqs or [torch.cat([ids[0], t]).unsqueeze(0) for ids, t in zip(prompts, tokens)]
    return {"tokens": tokens, "seqs": seqs, "logits": [logits(model, s) for s in seqs]}


def gaps(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[float, float]:
    diffs = [(x - y).abs() for x, y in zip(a, b)]
    return max(float(d.max()) for d in diffs), float(torch.cat([d.flatten() for d in diffs]).mean())


def agreement(mine: list[torch.Tensor], ref: list[torch.Tensor]) -> tuple[float, int]:
    same = sum(int((x == y).sum()) for x, y in zip(mine, ref))
    return same / sum(len(y) for y in ref), sum(bool(torch.equal(x, y)) for x, y in zip(mine, ref))


def with_adapter(model: Any, path: Path, autocast: bool, prompts: list, n: int, seqs: list) -> dict[str, list[Any]]:
    wrapped = PeftModel.from_pretrained(model, str(path), autocast_adapter_dtype=autocast)
    try:
        return run(model, prompts, n, seqs)  # the adapter is injected into ``model`` itself
    finally:
        wrapped.unload()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=5.0)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    info = print_machine()
    m32, tok = austeer.load_model(dtype="float32")
    m16, _ = austeer.load_model(dtype="bfloat16")
    pairs = austeer.read_pairs(DATA / "pairs" / "sentiment.jsonl")[: args.pairs]
    prompts = [chat_ids(tok, p) for p in PROMPTS[: args.prompts]]
    n = args.new_tokens
    rows: list[list[str]] = []
    scale: list[list[str]] = []
    raw: list[dict[str, Any]] = []
    workdir = tempfile.TemporaryDirectory(prefix="austeer-lora-agreement-")  # removed at exit, even after an error
    tmp = Path(workdir.name)
    for site in ("head", "neuron", "ffn"):
        spec = austeer.fit(m32, tok, pairs, site=site, k=args.k, alpha=args.alpha, progress=False)
        with apply(m32, spec):
            hooks32 = run(m32, prompts, n, None)
        seqs = hooks32["seqs"]  # every comparison reads the float32 hooks' sequences
        with apply(m16, spec):
            hooks16 = run(m16, prompts, n, seqs)
        base16 = [logits(m16, s) for s in seqs]
        floor, floor_mean = gaps(hooks16["logits"], hooks32["logits"])
        floor_share, floor_whole = agreement(hooks16["tokens"], hooks32["tokens"])
        effect = gaps(hooks16["logits"], base16)[1]
        f32, bf16 = export_lora(m32, spec, tmp / f"{site}32"), export_lora(m32, spec, tmp / f"{site}16", dtype="bf16")
        cases = [
            ("float32 model, f32 adapter", m32, f32, True, hooks32),
            ("bfloat16 model, bf16 adapter (PEFT default: LoRA product in f32)", m16, bf16, True, hooks16),
            ("bfloat16 model, bf16 adapter, LoRA product in bf16", m16, bf16, False, hooks16),
        ]
        for name, model, path, autocast, ref in cases:
            got = with_adapter(model, path, autocast, prompts, n, seqs)
            top, mean = gaps(got["logits"], ref["logits"])
            share, whole = agreement(got["tokens"], ref["tokens"])
            rows.append([site, name, f"{top:.3g}", f"{mean:.2g}", f"{share:.1%}", f"{whole}/{len(prompts)}"])
            raw.append({"site": site, "case": name, "max_gap": top, "mean_gap": mean, "same_tokens": share})
        scale.append(
            [site, f"{floor:.3g}", f"{floor_mean:.2g}", f"{floor_share:.1%}", f"{floor_whole}/{len(prompts)}"]
            + [f"{effect:.3g}"]
        )
        raw.append({"site": site, "bf16_floor_max": floor, "bf16_floor_mean": floor_mean, "steering_mean": effect})
        raw[-1] |= {"bf16_floor_same_tokens": floor_share}
        print(f"{site}: done", flush=True)
    headers = ["site", "adapter vs hooks", "max logit gap", "mean gap", "same greedy tokens", "same continuations"]
    print(f"\nSmolLM2-135M-Instruct, k={args.k}, alpha={args.alpha:g}, {len(prompts)} prompts x {n} greedy tokens\n")
    print(table(headers, rows))
    print()
    floor_headers = ["max logit gap", "mean gap", "same greedy tokens", "same continuations"]
    print("bfloat16 hooks vs float32 hooks (bfloat16 itself), and the steering (mean abs(hooks - unsteered)):\n")
    print(table(["site", *floor_headers, "steering"], scale))
    dump(args.json, {"machine": info, "args": vars(args), "rows": raw})


if __name__ == "__main__":
    main()
