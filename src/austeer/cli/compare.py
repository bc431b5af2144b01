"""``austeer compare``: every method on one task with the same validation budget; table, JSON and plot."""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from austeer.cli.argtypes import finite_float, positive_int, ratio
from austeer.cli.common import (
    add_capability_args,
    add_force_arg,
    add_model_args,
    capability_panel,
    check_capability_args,
    load_from_args,
)
from austeer.methods import DEFAULT_METHODS as _DEFAULTS
from austeer.methods import METHODS

#: the methods run when none are named (those that declare ``Method.default``)
DEFAULT_METHODS = ",".join(_DEFAULTS)

#: the files ``compare --out DIR`` writes, and the kind each is signed as (see :func:`austeer.io.signed`)
COMPARE_FILES = {
    "compare.json": "compare",
    "compare.md": "compare",
    "compare.png": "figure",
    "dose.json": "dose",
    "dose.png": "figure",
}

#: the methods a dose-response can run: those built from ``(site, k, alpha)`` alone on the pairs' evidence
DOSE_METHODS = [name for name, m in METHODS.items() if m.params == {"site", "k", "alpha"} and not m.prompted]


def cmd_compare(args: argparse.Namespace) -> int:
    from austeer.extras import REPORT, require

    require(*REPORT, "austeer compare")  # compare.png and dose.png are drawn after the evaluation
    from austeer.cli.argtypes import parse_doses
    from austeer.core.sites import check_site
    from austeer.evaluation.compare import Result, compare, dose_response, sites_for
    from austeer.evaluation.evaluate import Unsteered
    from austeer.evaluation.search import load_state, save_state
    from austeer.io import check_file_output, check_output_dir, signature, signed_json, write_output
    from austeer.methods.base import gather
    from austeer.models.loading import DEFAULT_MODEL
    from austeer.report.comparison import plot_comparison, plot_dose, table
    from austeer.tasks import get_task

    inputs = [args.pairs, args.eval]
    check_output_dir(args.out, COMPARE_FILES, args.force)  # before the long run
    for name, kind in COMPARE_FILES.items():
        if args.doses or not name.startswith("dose"):
            check_file_output(Path(args.out) / name, kind, args.force, inputs)  # before the long run
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise NotADirectoryError(f"{args.out}: a file is in the way; --out is the directory for the compare files")
    task = get_task(args.task, pairs=args.pairs, eval=args.eval)
    task.check_needs()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    doses = parse_doses(args.doses) if args.doses else []
    dose_sites = [s.strip() for s in args.dose_sites.split(",") if s.strip()]
    for site in dose_sites:
        check_site(site)
    sites = sites_for(methods, dose_sites if doses else ())  # raises on an unknown method before the model loads
    check_capability_args(args)
    state_path = Path(args.out) / "compare.json"
    fresh: dict[str, Any] = {"model": args.model or DEFAULT_MODEL, "protocol": protocol(args), "results": []}
    state = load_state(state_path, "compare", fresh, ("model", "protocol"), rows="results", replace=args.force)
    done = [r for r in map(Result.from_json, state["results"]) if r.method in methods]
    if done:
        print(f"austeer: resuming {state_path}: {', '.join(r.method for r in done)} measured", file=sys.stderr)
    model, tok, name = load_from_args(args)
    eval_kw: dict[str, Any] = {}
    if args.max_new_tokens is not None:
        eval_kw["max_new_tokens"] = args.max_new_tokens
    if task.kind == "behaviour":  # judge continuations' fluency under an unsteered copy
        eval_kw["ref_model"] = load_from_args(args)[0]
    pairs = task.pairs(model, tok, limit=args.pairs_limit)  # one pass for the methods and the dose-response
    evidence = gather(model, tok, pairs, sites, batch_size=args.batch_size, share_prefix=args.share_prefix)
    unsteered = Unsteered(model, tok, progress=True)  # unsteered evaluations and perplexity: once per run
    panel = capability_panel(args, model, tok, task.name)
    result = compare(
        model,
        tok,
        task,
        methods,
        budget=args.budget,
        pairs_limit=args.pairs_limit,
        val_limit=args.val_limit,
        test_limit=args.test_limit,
        max_ppl_ratio=args.max_ppl_ratio,
        batch_size=args.batch_size,
        evidence=evidence,
        eval_kw=eval_kw,
        unsteered=unsteered,
        panel=panel,
        done=done,
        on_result=lambda c: save_state(state_path, {**fresh, **c.to_json()}, "compare", args.force, inputs=inputs),
    )
    out = Path(args.out)
    save_state(state_path, {**fresh, **result.to_json()}, "compare", args.force, inputs=inputs)
    text = table(result)
    write_output(out / "compare.md", f"<!-- {signature('compare')} -->\n{text}\n", "compare", args.force, inputs)
    plot_comparison(result, out / "compare.png", force=args.force)
    print(text)
    print(f"-> {out}/compare.json, compare.md, compare.png")
    if doses:
        alpha = args.dose_alpha or result.chosen_alpha()
        limit = args.dose_limit or args.test_limit
        kw = {"limit": limit, "batch_size": args.batch_size, "eval_kw": eval_kw, "unsteered": unsteered}
        kw["method"] = args.dose_method
        rows = dose_response(model, tok, task, evidence, dose_sites, doses, alpha, **kw)
        dose = {"model": name, "task": task.name, "alpha": alpha, "limit": limit, "rows": [asdict(r) for r in rows]}
        write_output(out / "dose.json", signed_json(dose, "dose"), "dose", args.force, inputs)
        plot_dose(rows, task.name, task.metric, out / "dose.png", force=args.force)
        for curve in dict.fromkeys(r.curve for r in rows):
            pts = ", ".join(f"{r.k}: {r.metric:.3f}" for r in rows if r.curve == curve)
            print(f"dose-response {curve} (alpha {alpha:g}): {pts}")
        print(f"-> {out}/dose.json, dose.png")
    return 0


def protocol(args: argparse.Namespace) -> dict[str, Any]:
    """What a resumed compare must share with the run it continues (its methods may be more or fewer): the task,
    its input files' contents, the budget, the limits and bounds, the panel, the evidence pass."""
    named = (("pairs", args.pairs), ("eval", args.eval))
    files = {name: hashlib.sha256(Path(path).read_bytes()).hexdigest() for name, path in named if path}
    keys = ["task", "budget", "pairs_limit", "val_limit", "test_limit", "max_ppl_ratio", "max_new_tokens"]
    keys += ["capability", "max_capability_drop", "share_prefix", "dtype"]
    return {**{k: getattr(args, k) for k in keys}, "files_sha256": files}


def register(sub: Any) -> None:
    p = sub.add_parser("compare", help="compare AUSteer with the baselines on a task (same validation budget)")
    p.add_argument("--task", required=True, help="built-in task name, or custom (with --pairs and --eval)")
    p.add_argument("--pairs", default=None, help="pairs JSONL (custom task)")
    p.add_argument("--eval", default=None, help="eval JSONL (custom task)")
    p.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated; also: calibration (mc), prompt+austeer")
    p.add_argument("--budget", type=positive_int, default=8, help="configurations tried on val, per method")
    p.add_argument("--pairs-limit", type=positive_int, default=200)
    p.add_argument("--val-limit", type=positive_int, default=100)
    p.add_argument("--test-limit", type=positive_int, default=300)
    p.add_argument("--max-ppl-ratio", type=ratio, default=2.0, help="eligible configs keep ppl within this factor")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="override the task's generation length")
    p.add_argument("--batch-size", type=positive_int, default=16)
    add_capability_args(p, bound=True)
    p.add_argument(
        "--doses",
        default="",
        help="also the dose-response: numbers of top AUs to steer, e.g. 0,2,8,32,100,1000,all (dose.json, dose.png)",
    )
    p.add_argument("--dose-sites", default="head,ffn,neuron", help="one dose-response curve per site")
    p.add_argument(
        "--dose-method",
        default="austeer",
        choices=DOSE_METHODS,
        help="the dose-response of AUSteer (default) or of a method built the same way from site, k and alpha",
    )
    p.add_argument(
        "--share-prefix",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="read each pair's shared prompt once (about 2x faster on long prompts; activations equal up to "
        "float rounding); off by default so that the comparisons in docs/ reproduce bit for bit",
    )
    p.add_argument(
        "--dose-alpha", type=finite_float, default=None, help="default: the alpha AUSteer chose on val, else 4"
    )
    p.add_argument(
        "--dose-limit", type=positive_int, default=None, help="test items of the dose-response (default: test-limit)"
    )
    p.add_argument("--out", required=True, help="directory for compare.json, compare.md, compare.png")
    add_force_arg(p)
    add_model_args(p)
    p.set_defaults(func=cmd_compare)
