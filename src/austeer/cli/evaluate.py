"""``austeer eval | sweep``: evaluate a (steered) model on a task; grid-search k and alpha."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from austeer.cli.argtypes import finite_float, positive_int
from austeer.cli.core import add_force_arg, add_model_args, load_from_args
from austeer.sites import SITES


def _task(args: argparse.Namespace) -> Any:
    from austeer.tasks import get_task

    if args.task == "custom":
        return get_task("custom", pairs=args.pairs, eval=args.eval)
    if args.pairs or args.eval:
        raise ValueError("--pairs/--eval are for --task custom only")
    task = get_task(args.task)
    task.check_needs()  # the judge's package, before the model loads and generates
    return task


def _csv(text: str, cast: Any) -> list[Any]:
    try:
        values = [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected a comma-separated list, got {text!r}") from None
    if not values:
        raise ValueError(f"expected a comma-separated list, got {text!r}")
    return values


def cmd_eval(args: argparse.Namespace) -> int:
    from austeer.evaluate import evaluate
    from austeer.generate import steered
    from austeer.io import atomic_write_text, check_file_target
    from austeer.models import fingerprint, load_model
    from austeer.spec import load

    task = _task(args)
    if args.out:
        check_file_target(args.out)
    spec = load(args.steer) if args.steer else None
    if spec is not None and args.k is not None:
        spec = spec.with_k(args.k)
    model, tok, name = load_from_args(args, args.model or (spec.model_id if spec else None) or None)
    if spec is not None:
        spec.check_fits(fingerprint(model))
    ref = None
    if task.kind == "behaviour" and spec is not None:
        ref, _ = load_model(name, dtype=args.dtype, device=args.device, device_map=args.device_map)
    samples: list[dict[str, Any]] = []
    with steered(model, spec, args.mode, args.alpha):
        metrics = evaluate(
            model,
            tok,
            task,
            args.split,
            args.limit,
            args.batch_size,
            ref_model=ref,
            max_new_tokens=args.max_new_tokens,
            samples=samples,
        )
    alpha = None if spec is None else (spec.alpha if args.alpha is None else args.alpha)
    result = {
        "task": task.name,
        "split": args.split,
        "model": name,
        "steer": args.steer,
        "mode": args.mode if spec else None,
        "alpha": alpha,
        "n_steered": spec.k if spec else 0,
        "metrics": metrics,
        "samples": samples,
    }
    out = (
        Path(args.out)
        if args.out
        else Path("runs") / "eval" / f"{task.name}-{args.split}{'-steered' if spec else ''}.json"
    )
    atomic_write_text(out, json.dumps(result, indent=2, default=str) + "\n")
    steer_note = f"{spec.k} AUs, alpha {alpha:g}, {args.mode}" if spec else "unsteered"
    print(f"{task.name} / {args.split} ({int(metrics['n_items'])} items, {steer_note}):")
    for key, value in metrics.items():
        if key != "n_items":
            print(f"  {key:16s} {value:.4f}")
    print(f"  {'n_steered':16s} {result['n_steered']}")
    print(f"saved {out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from austeer.io import check_replaceable
    from austeer.models import load_model
    from austeer.sweep import sweep

    task = _task(args)
    sites = _csv(args.site, str)
    for s in sites:
        if s not in SITES:
            raise ValueError(f"unknown site {s!r}; expected some of {', '.join(SITES)}")
    for where in [Path(args.out) / "best", *(Path(args.out) / "scores" / s for s in sites)]:
        check_replaceable(where, "spec", args.force)  # before loading the model
    model, tok, name = load_from_args(args)
    ref = None
    if task.kind == "behaviour":
        ref, _ = load_model(name, dtype=args.dtype, device=args.device, device_map=args.device_map)
    state = sweep(
        model,
        tok,
        task,
        args.out,
        sites=sites,
        ks=_csv(args.k, int),
        alphas=_csv(args.alpha, float),
        model_id=name,
        pair_limit=args.pair_limit,
        val_limit=args.val_limit,
        test_limit=args.test_limit,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        ref_model=ref,
        run_test=not args.no_test,
        force=args.force,
    )
    m = state["metric"]
    print(f"{task.name}: val {m} unsteered {state['baseline'][m]:.4f}")
    for r in sorted(state["rows"], key=lambda r: -r["metric"]):
        print(
            f"  {r['site']:8s} k={r['k']:<4d} alpha={r['alpha']:<6g} {m} {r['metric']:.4f}  ppl {r['ppl_delta']:+.3f}"
        )
    b = state["best"]
    print(f"best on val: {b['site']} k={b['k']} alpha={b['alpha']:g} -> {Path(args.out) / 'best'}")
    if "test" in state:
        t = state["test"]
        print(
            f"test {m}: unsteered {t['unsteered'][m]:.4f}, steered {t['steered'][m]:.4f} "
            f"(ppl {t['unsteered']['ppl']:.2f} -> {t['steered']['ppl']:.2f})"
        )
    print(f"table: {Path(args.out) / 'sweep.csv'}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    from austeer.tasks import TASKS

    p.add_argument("--task", required=True, choices=[*TASKS, "custom"])
    p.add_argument("--pairs", default=None, help="custom task: pairs JSONL")
    p.add_argument("--eval", default=None, help="custom task: eval JSONL (see docs/EVALUATION.md)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation budget (math, behaviour)")
    add_model_args(p)


def register(sub: Any) -> None:
    p = sub.add_parser("eval", help="evaluate the model (optionally steered) on a task split")
    _common(p)
    p.add_argument("--steer", default=None, help="spec directory (unsteered when absent)")
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N items")
    p.add_argument("--mode", default="fold", choices=["hook", "fold"])
    p.add_argument("--alpha", type=finite_float, default=None, help="override the spec's alpha")
    p.add_argument("--k", type=positive_int, default=None, help="override the spec's k")
    p.add_argument("--out", default=None, help="JSON file to write (default runs/eval/TASK-SPLIT[-steered].json)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sweep", help="grid-search site, k and alpha on val; evaluate the best on test")
    _common(p)
    p.add_argument("--site", default="head,ffn", help=f"comma-separated, of {', '.join(SITES)}")
    p.add_argument("--k", default="2,8,32,100", help="comma-separated k values")
    p.add_argument("--alpha", default="1,5,15,50", help="comma-separated alpha values")
    p.add_argument("--out", required=True, help="sweep directory (resumed if it exists)")
    add_force_arg(p)
    p.add_argument("--pair-limit", type=positive_int, default=None, help="use only the first N pairs")
    p.add_argument("--val-limit", type=int, default=None, help="use only the first N val items")
    p.add_argument("--test-limit", type=int, default=None, help="use only the first N test items")
    p.add_argument("--no-test", action="store_true", help="stop after the validation grid")
    p.set_defaults(func=cmd_sweep)
