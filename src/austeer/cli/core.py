"""``austeer fit | generate``: the core commands (``export``: :mod:`austeer.cli.export`)."""

from __future__ import annotations

import argparse
from typing import Any

from austeer.cli.argtypes import finite_float, positive_int
from austeer.cli.common import (
    add_force_arg,
    add_model_args,
    check_alpha,
    fit_from_args,
    load_from_args,
)
from austeer.core.sites import SITES
from austeer.core.spec import POSITIONS, SELECTIONS


def cmd_fit(args: argparse.Namespace) -> int:
    from austeer.cli.distributed import cmd_fit_multi, launched_by_torchrun
    from austeer.io import check_replaceable

    check_replaceable(args.out, "spec", args.force, [args.pairs])  # before reading the pairs and loading the model
    if getattr(args, "nproc", 1) != 1 or launched_by_torchrun():
        return cmd_fit_multi(args)  # shards the pairs over processes and all-reduces the sign counts
    spec = fit_from_args(args)
    spec.save(args.out, force=args.force)
    print(
        f"scored {spec.n_pairs} pairs on site(s) {','.join(spec.sites)} in {spec.info['seconds']:.1f} s; "
        f"kept {spec.k} AUs -> {args.out}"
    )
    for u in spec.units[: min(10, spec.k)]:
        print(f"  {u.site:8s} layer {u.layer:3d} index {u.index:5d} beta {u.beta:+.3f}")
    if spec.k > 10:
        print(f"  ... {spec.k - 10} more in {args.out}/steer.json")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from austeer.core.spec import load
    from austeer.run.generate import generate, steered

    spec = load(args.steer)
    if args.k is not None:
        spec = spec.with_k(args.k)
    check_alpha(spec, args)
    model, tok, _ = load_from_args(args, args.model or spec.model_id or None)
    from austeer.core.spec import fingerprint

    spec.check_fits(fingerprint(model))
    prompts = args.prompt
    with steered(model, spec, args.mode, args.alpha):
        out = generate(model, tok, prompts, max_new_tokens=args.max_new_tokens, max_length=args.max_length)
    base = (
        generate(model, tok, prompts, max_new_tokens=args.max_new_tokens, max_length=args.max_length)
        if args.compare
        else None
    )
    alpha = spec.alpha if args.alpha is None else args.alpha
    for i, prompt in enumerate(prompts):
        if base is not None:
            print(f"### prompt: {prompt}\n--- unsteered:\n{base[i].strip()}")
            print(f"--- steered ({spec.k} AUs, alpha {alpha:g}, {args.mode}):")
        print(out[i].strip())
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("fit", help="score atomic units on contrastive pairs and save a steering spec")
    p.add_argument("--pairs", required=True, help="JSONL with prompt, positive, negative (optional system)")
    p.add_argument("--site", default="head", help=f"one or more of {', '.join(SITES)}, comma-separated")
    p.add_argument("--k", type=positive_int, default=32, help="number of AUs to keep (global top-k)")
    p.add_argument("--alpha", type=finite_float, default=5.0, help="global strength: gain 1 + alpha * beta")
    p.add_argument(
        "--positions",
        default="all",
        choices=list(POSITIONS),
        help="where the gains act: all (the paper's rule, every token; foldable and exportable) or last "
        "(the answer position / each generated token only; hooks only)",
    )
    p.add_argument(
        "--selection",
        default="sign",
        choices=list(SELECTIONS),
        help="how AUs are chosen: sign (the paper's sign consistency) or attribution (the derivative of the "
        "answer margin with respect to each AU's gain; use a small --alpha, 0.25-2)",
    )
    p.add_argument("--out", required=True, help="spec directory to write")
    add_force_arg(p)
    p.add_argument("--batch-size", type=positive_int, default=16, help="pairs per forward pass")
    p.add_argument(
        "--max-length",
        type=positive_int,
        default=None,
        help="truncate texts on the left to this many tokens (default: the model's context)",
    )
    p.add_argument("--limit", type=positive_int, default=None, help="use only the first N pairs")
    p.add_argument(
        "--nproc", type=positive_int, default=1, help="processes to shard the pairs over (all-reduced counts)"
    )
    p.add_argument(
        "--share-prefix",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each pair's shared prompt once and both answers from its KV cache (default, about 2x faster); "
        "--no-share-prefix runs both texts whole",
    )
    add_model_args(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("generate", help="generate with a steering spec")
    p.add_argument("prompt", nargs="+")
    p.add_argument("--steer", required=True, help="spec directory written by austeer fit")
    p.add_argument("--mode", default="hook", choices=["hook", "fold"])
    p.add_argument("--alpha", type=finite_float, default=None, help="override the spec's alpha")
    p.add_argument("--k", type=positive_int, default=None, help="override the spec's k (reselects from stored scores)")
    p.add_argument("--compare", action="store_true", help="also print the unsteered answer")
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument(
        "--max-length",
        type=positive_int,
        default=None,
        help="truncate prompts on the left to this many tokens (default: the context less --max-new-tokens)",
    )
    add_model_args(p)
    p.set_defaults(func=cmd_generate)
