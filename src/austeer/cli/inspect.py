"""``austeer inspect``: an HTML report of a steering spec (plots, logit lens, sweep, steered generations)."""

from __future__ import annotations

import argparse
from typing import Any

from austeer.cli.argtypes import finite_float, positive_int
from austeer.cli.common import add_force_arg, add_model_args, check_alpha, load_from_args


def cmd_inspect(args: argparse.Namespace) -> int:
    from austeer.extras import REPORT, require

    require(*REPORT, "austeer inspect")  # before the report's modules import it
    from austeer.core.spec import fingerprint, load
    from austeer.io import check_file_output, check_replaceable
    from austeer.report import build_report, figures_dir
    from austeer.report.shift import read_prompts
    from austeer.report.sweep import read_sweep

    inputs = [args.steer, args.sweep, args.prompts]
    check_file_output(args.out, "report", args.force, inputs)
    check_replaceable(figures_dir(args.out), "figures", args.force, inputs)
    spec = load(args.steer)
    if args.k is not None:
        spec = spec.with_k(args.k)
    check_alpha(spec, args)
    if args.alpha is not None:
        spec = spec.with_alpha(args.alpha)
    sweep = read_sweep(args.sweep) if args.sweep else None  # fail on bad input before loading the model
    prompts = read_prompts(args.prompts)[: args.max_prompts] if args.prompts else []
    model, tok, _ = load_from_args(args, args.model or spec.model_id or None)
    spec.check_fits(fingerprint(model))
    out = build_report(
        model,
        tok,
        spec,
        args.out,
        spec_path=str(args.steer),
        sweep=sweep,
        prompts=prompts,
        n_units=args.top,
        n_tokens=args.tokens,
        mode=args.mode,
        max_new_tokens=args.max_new_tokens,
        force=args.force,
    )
    print(f"report -> {out} (figures in {figures_dir(out)})")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("inspect", help="write an HTML report of a steering spec: where its AUs are and what they do")
    p.add_argument("--steer", required=True, help="spec directory written by austeer fit")
    p.add_argument("--out", required=True, help="HTML file to write (figures go to <name>_files/ beside it)")
    add_force_arg(p)
    p.add_argument("--sweep", default=None, help="sweep directory (or its sweep.json) to plot metric vs k and alpha")
    p.add_argument("--prompts", default=None, help="prompts file: one per line, or JSONL with 'prompt'")
    p.add_argument("--max-prompts", type=positive_int, default=8, help="use at most this many prompts")
    p.add_argument("--max-new-tokens", type=positive_int, default=48)
    p.add_argument("--mode", default="hook", choices=["hook", "fold"])
    p.add_argument("--top", type=positive_int, default=8, help="number of top AUs to put through the logit lens")
    p.add_argument("--tokens", type=positive_int, default=8, help="tokens listed per direction")
    p.add_argument("--k", type=positive_int, default=None, help="override the spec's k (reselects from stored scores)")
    p.add_argument("--alpha", type=finite_float, default=None, help="override the spec's alpha")
    add_model_args(p)
    p.set_defaults(func=cmd_inspect)
