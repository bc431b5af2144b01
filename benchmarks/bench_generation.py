"""Goal 3: generation speed, steered vs unsteered, against ``steering-vectors`` and ``repeng``.

``model.generate`` (greedy, KV cache, ``max_new_tokens = min_new_tokens`` so every run emits the same
number of tokens) on the embedded SmolLM2, at batch 1 and batch 16 (left padding), for:

- ``unsteered``;
- ``austeer_fold``: ``austeer.folded(model, spec)`` around the call (the fold and unfold are timed too);
- ``austeer_hook``: ``austeer.apply(model, spec)`` (one multiply-by-gain pre-hook per steered layer);
- ``steering_vectors``: ``SteeringVector(...).apply(model)``: adds a vector to the residual stream
  (decoder-layer output) of each layer the AUSteer spec touches, at every token;
- ``repeng``: ``ControlModel(model, layers)`` + ``set_control``: wraps the same decoder layers and adds
  a vector to their output (it also builds a padding mask from ``position_ids`` when given).

The spec is fitted on 16 of the shipped sentiment pairs (head site, k=32, alpha=5); the peers' vectors are the
CAA mean difference of residual-stream last-token activations on the same pairs (per layer). Ratios are
throughputs relative to ``unsteered`` (``t_unsteered / t``), medians of per-repetition ratios.

Run: ``python benchmarks/bench_generation.py [--repeats 5] [--new-tokens 32] [--quick] [--json out.json]``
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _common import DATA, dump, interleaved, med, paired_ratio, print_machine, set_threads, spread, table, verdict

import austeer
from austeer.core.collect import encode, last_token_activations
from austeer.core.pairs import format_prompt, pair_texts

if not hasattr(np, "float_"):  # repeng 0.4 still names np.float_ (removed in NumPy 2)
    np.float_ = np.float64  # type: ignore[attr-defined]


def peers_available() -> dict[str, bool]:
    out = {}
    for name in ("steering_vectors", "repeng"):
        try:
            __import__(name)
            out[name] = True
        except ImportError:
            out[name] = False
    return out


def bench_batch(
    model: Any,
    tok: Any,
    spec: Any,
    enc: dict[str, torch.Tensor],
    layers: list[int],
    caa: torch.Tensor,
    new_tokens: int,
    repeats: int,
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, torch.Tensor]]:
    """Interleaved wall and CPU timings of every contender on one batch, and the token ids each produced."""
    outputs: dict[str, torch.Tensor] = {}

    def gen(target: Any = None) -> torch.Tensor:
        with torch.inference_mode():
            return (target or model).generate(
                **enc,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                temperature=None,
                top_k=None,
                top_p=None,
                pad_token_id=tok.pad_token_id,
            )

    def record(name: str, fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            outputs[name] = fn()

        return run

    def fold_run() -> torch.Tensor:
        with austeer.folded(model, spec):
            return gen()

    def hook_run() -> torch.Tensor:
        with austeer.apply(model, spec):
            return gen()

    contenders: dict[str, Callable[[], None]] = {
        "unsteered": record("unsteered", gen),
        "austeer_fold": record("austeer_fold", fold_run),
        "austeer_hook": record("austeer_hook", hook_run),
    }
    have = peers_available()
    if have["steering_vectors"]:
        from steering_vectors import SteeringVector

        sv = SteeringVector({layer: caa[layer].clone() for layer in layers}, "decoder_block")

        def sv_run() -> torch.Tensor:
            with sv.apply(model, multiplier=1.0):
                return gen()

        contenders["steering_vectors"] = record("steering_vectors", sv_run)
    if have["repeng"]:
        from repeng import ControlModel, ControlVector

        cv = ControlVector(model_type=model.config.model_type, directions={l: caa[l].numpy() for l in layers})

        def repeng_run() -> torch.Tensor:
            cm = ControlModel(model, layers)  # wraps the layers in place; unwrapped below
            try:
                cm.set_control(cv, 1.0)
                return gen(cm)
            finally:
                cm.unwrap()

        contenders["repeng"] = record("repeng", repeng_run)
    cpu: dict[str, list[float]] = {}
    wall = interleaved(contenders, repeats, warmup={"unsteered": contenders["unsteered"]}, cpu=cpu)
    return wall, cpu, outputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--fit-pairs", type=int, default=16, help="sentiment pairs used to fit the spec / CAA vectors")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="2 repeats, 12 new tokens")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.new_tokens = 2, 12
    set_threads(args.threads)
    info = print_machine()
    model, tok = austeer.load_model()
    pairs = austeer.read_pairs(DATA / "pairs" / "sentiment.jsonl")
    fit_pairs = pairs[: args.fit_pairs]
    spec = austeer.fit(model, tok, fit_pairs, site="head", k=args.k, alpha=5.0, progress=False)
    layers = sorted({u.layer for u in spec.units})
    print(f"spec: head site, k={spec.k}, alpha={spec.alpha}, {len(layers)} layers touched: {layers}")

    # CAA vectors for the peers: mean residual difference at the last token, per touched layer
    texts = [pair_texts(tok, p) for p in fit_pairs]
    res = last_token_activations(model, tok, [t[0] for t in texts] + [t[1] for t in texts], ["residual"])["residual"]
    caa = (res[: len(texts)] - res[len(texts) :]).mean(0)  # [layers, d_model]
    print(f"peers importable: {peers_available()}")

    results: dict[str, Any] = {"machine": info, "layers": layers, "batches": {}}
    summary = []
    for bs in args.batch_sizes:
        prompts = [format_prompt(tok, pairs[i % len(pairs)].prompt) for i in range(bs)]
        enc = encode(tok, prompts, padding_side="left")
        print(f"\nbatch {bs}: prompt width {enc['input_ids'].shape[1]} tokens, {args.new_tokens} new tokens per row")
        times, cpu, outputs = bench_batch(model, tok, spec, enc, layers, caa, args.new_tokens, args.repeats)
        same = bool(torch.equal(outputs["austeer_fold"], outputs["austeer_hook"]))
        steered = not torch.equal(outputs["unsteered"], outputs["austeer_hook"])
        n_new = outputs["unsteered"].shape[1] - enc["input_ids"].shape[1]
        print(
            f"fold and hook emit identical tokens: {same}; steering changed the output: {steered}; "
            f"new tokens per row: {n_new}"
        )
        rows = []
        ratios, cpu_ratios = {}, {}
        for name, ts in times.items():
            r = paired_ratio(times["unsteered"], ts)
            rc = paired_ratio(cpu["unsteered"], cpu[name])
            ratios[name], cpu_ratios[name] = med(r), med(rc)
            tok_s = [bs * args.new_tokens / t for t in ts]
            rows.append(
                [
                    name,
                    spread(ts),
                    spread(tok_s, "{:.1f}"),
                    f"{med(r):.3f} [{min(r):.3f}-{max(r):.3f}]",
                    spread(cpu[name]),
                    f"{med(rc):.3f} [{min(rc):.3f}-{max(rc):.3f}]",
                ]
            )
        print(
            table(
                [
                    "contender",
                    "wall s median [min-max]",
                    "new tokens/s (wall)",
                    "throughput / unsteered (wall)",
                    "CPU s median [min-max]",
                    "throughput / unsteered (CPU)",
                ],
                rows,
            )
        )
        results["batches"][str(bs)] = {
            "times": times,
            "cpu": cpu,
            "ratios": ratios,
            "cpu_ratios": cpu_ratios,
            "fold_equals_hook": same,
        }
        summary.append((bs, "wall", ratios))
        summary.append((bs, "CPU", cpu_ratios))

    print()
    for bs, label, ratios in summary:
        fold_ok = abs(ratios["austeer_fold"] - 1) <= 0.02
        hook_ok = ratios["austeer_hook"] >= 0.97
        peers = ", ".join(f"{n} {ratios[n]:.3f}x" for n in ("steering_vectors", "repeng") if n in ratios)
        print(
            f"batch {bs} ({label}): fold {ratios['austeer_fold']:.3f}x ({verdict(fold_ok)}: 1.00x within 2%), "
            f"hook {ratios['austeer_hook']:.3f}x ({verdict(hook_ok)}: >= 0.97x); peers: {peers}"
        )
    dump(args.json, results)


if __name__ == "__main__":
    main()
