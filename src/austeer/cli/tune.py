"""``austeer tune``: choose site, k and alpha from a pairs file alone (see :mod:`austeer.evaluation.tune`).

Exit code 0 when a spec was written to ``DIR/spec``, 1 when no configuration has an effect beyond noise
within the damage bound (the table and ``tune.json`` are still written), 2 for an error in the input.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from austeer.cli.argtypes import positive_int, ratio
from austeer.cli.common import (
    add_capability_args,
    add_force_arg,
    add_model_args,
    capability_panel,
    check_capability_args,
    load_from_args,
)
from austeer.errors import UserError


def _choice_line(method: str, c: Any, out: Path) -> str:
    """What tune chose for a method other than AUSteer (``c``, its row, or None), and the file it wrote it to."""
    from austeer.evaluation.tune import writes_control_vector

    if c is None:
        return f"{method}: nothing beyond noise within the bound"
    line = f"{method}: {c.config} (effect {c.effect:+.3f}, flips +{c.fixed}/-{c.broken}, ppl x{c.ppl_ratio:.3g})"
    if c.site == "system":
        return f"{line} -> {out / (method + '.json')} (the system turn to use)"
    line += f" -> {out / (method + '.safetensors')} (an addition, not a spec)"
    if writes_control_vector(method):
        line += f"; as a llama.cpp control vector: {out / (method + '.gguf')}"
    return line


def _row_line(r: Any, chosen: Any) -> str:
    if r.method == "austeer":
        what = f"{r.site:8s} k={r.k:<4d}"
    elif r.site == "system":  # the prompt: its configuration says which
        what = f"{r.method} {r.config}"
    else:
        what = f"{r.method} {r.site} L{r.layer} n={r.n_steered}"
    mark = " <- chosen" if chosen is not None and r.key == chosen.key else ""
    return (
        f"  {what} alpha={r.alpha:<5g} effect {r.effect:+.3f} +- {r.effect_se:.3f} (z {r.z:+6.2f}, "
        f"up {r.share_up:4.0%}, flips +{r.fixed}/-{r.broken} p {r.p_choice:.2g})  KL {r.kl:8.4f}  "
        f"ppl x{r.ppl_ratio:.3g}{mark}"
    )


def cmd_tune(args: argparse.Namespace) -> int:
    from austeer.extras import REPORT, require

    require(*REPORT, "austeer tune")  # the figure tune.png, drawn at the end: checked before the work
    from austeer.core.pairs import read_pairs
    from austeer.core.sites import check_site
    from austeer.evaluation.capability import Retention
    from austeer.evaluation.tune import (
        check_tune_out,
        describe_levels,
        levels,
        split_pairs,
        tunable,
        tune,
    )
    from austeer.io import write_output
    from austeer.report.tune import tune_plot
    from austeer.run.measure import read_neutral

    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    for s in sites:
        check_site(s)
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    for m in methods:
        tunable(m)  # an unknown method: one line before any work
    if any(tunable(m).prompted for m in methods) and not (args.instruction or "").strip():
        raise UserError("tune --method prompt needs the instruction to try: --instruction TEXT")
    check_capability_args(args)
    out = Path(args.out)
    inputs = [args.pairs, args.neutral]
    check_tune_out(out, methods, sites, args.force, inputs)  # before loading the model
    pairs = read_pairs(args.pairs)
    split_pairs(pairs)  # too few pairs: say so before loading the model
    levels(1, args.rule)  # an unknown rule: likewise
    neutral = read_neutral(args.neutral) if args.neutral else []
    model, tok, name = load_from_args(args)
    result = tune(
        model,
        tok,
        pairs,
        out,
        sites=sites,
        budget=args.budget,
        max_damage=args.max_damage,
        methods=methods,
        neutral=neutral,
        rule=args.rule,
        instruction=args.instruction,
        model_id=name,
        batch_size=args.batch_size,
        force=args.force,
        panel=capability_panel(args, model, tok, task=""),  # pairs of the user's own: the whole panel
    )
    title = f"{Path(args.pairs).name}: {result.n_fit} fit / {result.n_heldout} held-out pairs"
    plot = tune_plot(result.rows, result.chosen, result.max_damage, title)
    write_output(out / "tune.png", plot, "figure", args.force, inputs)
    print(
        f"{title}; unsteered held-out margin {result.baseline_margin:+.3f} nats/token; "
        f"noise rule ({result.rule}) {describe_levels(result.min_z, result.max_p)}, "
        f"damage bound ppl x{result.max_damage:g}"
    )
    for r in sorted(result.rows, key=lambda r: (r.method, r.site, r.k, r.alpha)):
        print(_row_line(r, result.chosen_by.get(r.method)))
    for m in methods:
        if m != "austeer":
            print(_choice_line(m, result.chosen_by.get(m), out))
    if "austeer" in methods:
        print(result.message)
    for m, retention in result.capability.items():
        print(f"{m}'s choice: {Retention.from_json(retention).line()}")
    if len(methods) > 1:
        b = result.best
        print(
            "use: none of the methods steers these pairs beyond noise within the bound"
            if b is None
            else f"use: {b.method} (the best choice by the rule: flips +{b.fixed}/-{b.broken}, "
            f"effect {b.effect:+.3f} nats/token, ppl x{b.ppl_ratio:.3g})"
        )
    print(f"table: {out / 'tune.json'}, figure: {out / 'tune.png'}")
    if result.spec is not None:
        print(f"spec: {out / 'spec'} (austeer generate --steer {out / 'spec'} ...)")
    return 0 if result.best is not None else 1


def register(sub: Any) -> None:
    p = sub.add_parser("tune", help="choose site, k and alpha from the pairs alone: effect vs damage")
    p.add_argument("--pairs", required=True, help="JSONL with prompt, positive, negative (optional system)")
    p.add_argument("--out", required=True, help="directory for tune.json, tune.png, spec/ (resumed if it exists)")
    p.add_argument("--sites", default="head,ffn,neuron", help="comma-separated sites to try")
    p.add_argument("--budget", type=positive_int, default=None, help="at most N configurations per method")
    p.add_argument("--max-damage", type=ratio, default=1.25, help="largest perplexity ratio on neutral text (1.25)")
    p.add_argument(
        "--method",
        default="austeer",
        help="comma-separated methods to measure and rank: austeer, caa, iti, au-add, prompt (with --instruction), ...",
    )
    p.add_argument(
        "--rule",
        default="either",
        help="the test an effect must pass: margin (the held-out margin's z), choice (the held-out two-way choice, "
        "McNemar) or either (the default; docs/TUNE.md)",
    )
    p.add_argument(
        "--instruction",
        default=None,
        help="--method prompt: the instruction to try as the system turn (alone, and with 3 fit pairs as examples)",
    )
    p.add_argument("--neutral", default=None, help="extra neutral texts: JSONL (strings or {text}) or text lines")
    p.add_argument("--batch-size", type=positive_int, default=16)
    add_capability_args(p, bound=True)
    add_force_arg(p)
    add_model_args(p)
    p.set_defaults(func=cmd_tune)
