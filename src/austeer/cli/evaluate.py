"""``austeer eval | sweep``: evaluate a (steered) model on a task; grid-search k and alpha."""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from austeer.cli.argtypes import finite_float, finite_floats, positive_int, positive_ints
from austeer.cli.common import (
    add_capability_args,
    add_force_arg,
    add_model_args,
    capability_panel,
    check_alpha,
    check_capability_args,
    load_from_args,
)
from austeer.core.sites import SITES
from austeer.errors import UserError


def _task(args: argparse.Namespace) -> Any:
    from austeer.tasks import get_task

    if args.task == "custom":
        return get_task("custom", pairs=args.pairs, eval=args.eval)
    if args.pairs or args.eval:
        raise UserError("--pairs/--eval are for --task custom only")
    task = get_task(args.task)
    task.check_needs()  # the judge's package, before the model loads and generates
    return task


def _csv(text: str, cast: Any) -> list[Any]:
    try:
        values = [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"expected a comma-separated list, got {text!r}") from None
    if not values:
        raise UserError(f"expected a comma-separated list, got {text!r}")
    return values


def cmd_eval(args: argparse.Namespace) -> int:
    from austeer.core.spec import fingerprint, load
    from austeer.evaluation.evaluate import evaluate
    from austeer.io import check_file_output, signed_json, write_output
    from austeer.models.loading import load_model
    from austeer.run.generate import steered

    task = _task(args)
    if args.paired and not args.steer:
        raise UserError("--paired compares the unsteered and the steered model: it needs --steer DIR")
    if args.capability and not args.steer:
        raise UserError("--capability measures what a steer costs: it needs --steer DIR")
    out = (
        Path(args.out)
        if args.out
        else Path("runs") / "eval" / f"{task.name}-{args.split}{'-steered' if args.steer else ''}.json"
    )
    inputs = [args.pairs, args.eval, args.steer]
    check_file_output(out, "eval", args.force, inputs)  # before loading the model
    spec = load(args.steer) if args.steer else None
    if spec is not None and args.k is not None:
        spec = spec.with_k(args.k)
    if spec is not None:
        check_alpha(spec, args)
    model, tok, name = load_from_args(args, args.model or (spec.model_id if spec else None) or None)
    if spec is not None:
        spec.check_fits(fingerprint(model))
    ref = None
    if task.kind == "behaviour" and spec is not None:
        ref, _ = load_model(name, dtype=args.dtype, device=args.device, device_map=args.device_map)
    run = {"split": args.split, "limit": args.limit, "batch_size": args.batch_size, "ref_model": ref}
    run["max_new_tokens"] = args.max_new_tokens
    base: dict[str, Any] | None = None
    cache = None
    if args.paired:
        from austeer.core.reuse import LayerCache

        cache = LayerCache(model)  # the steered pass replays the layers below its first steered layer
        base_samples: list[dict[str, Any]] = []
        print(f"evaluating the unsteered model on {task.name} / {args.split} ...", file=sys.stderr, flush=True)
        with cache.reuse():
            base_metrics = evaluate(model, tok, task, samples=base_samples, **run)
        base = {"metrics": base_metrics, "samples": base_samples}
        print(f"evaluating the steered model ({args.mode}) ...", file=sys.stderr, flush=True)
    samples: list[dict[str, Any]] = []
    with steered(model, spec, args.mode, args.alpha), cache.reuse() if cache else nullcontext():
        metrics = evaluate(model, tok, task, samples=samples, **run)
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
    if base is not None:
        result["unsteered"] = base
        result["paired"] = paired_summary(task.metric, base, result)
    panel = capability_panel(args, model, tok, task.name)
    if panel is not None:
        print(f"the capability panel ({', '.join(panel.names)}, {args.capability} items each) ...", file=sys.stderr)
        retention = panel.measure(lambda: steered(model, spec, args.mode, args.alpha))
        result["capability"] = retention.to_json()
    write_output(out, signed_json(result, "eval"), "eval", args.force, inputs)
    steer_note = f"{spec.k} AUs, alpha {alpha:g}, {args.mode}" if spec else "unsteered"
    print(f"{task.name} / {args.split} ({int(metrics['n_items'])} items, {steer_note}):")
    for key, value in metrics.items():
        if key != "n_items":
            print(f"  {key:16s} {value:.4f}")
    print(f"  {'n_steered':16s} {result['n_steered']}")
    if base is not None:
        prompts = {it.id: it.prompt for it in task.items(args.split, args.limit)}
        print_paired(result["paired"], base["samples"], samples, args.show, prompts)
    if panel is not None:
        print(retention.line())
    print(f"saved {out}")
    return 0


def paired_summary(metric: str, base: dict[str, Any], steered: dict[str, Any]) -> dict[str, Any]:
    """The paired test of an ``eval --paired`` run: both metrics and, where the task records per-item outcomes,
    the items fixed and broken and McNemar's exact p."""
    from austeer.evaluation.compare import outcomes
    from austeer.stats import discordant, mcnemar

    out: dict[str, Any] = {
        "metric": metric,
        "unsteered": base["metrics"][metric],
        "steered": steered["metrics"][metric],
        "ppl": [base["metrics"]["ppl"], steered["metrics"]["ppl"]],
        "n_items": int(steered["metrics"]["n_items"]),
    }
    a, b = outcomes(base["samples"]), outcomes(steered["samples"])
    if a and b:
        fixed, broken = discordant(a, b)
        out.update(fixed=fixed, broken=broken, p=mcnemar(fixed, broken))
    return out


def print_paired(
    p: dict[str, Any], base: list[dict[str, Any]], steered: list[dict[str, Any]], show: int, prompts: dict[str, str]
) -> None:
    """The paired table, then up to ``show`` items whose outcome changed (fixed first), with their prompts."""
    print(
        f"\npaired, {p['n_items']} items: {p['metric']} {p['unsteered']:.3f} unsteered -> {p['steered']:.3f} steered "
        f"({p['steered'] - p['unsteered']:+.3f}); neutral-text ppl {p['ppl'][0]:.2f} -> {p['ppl'][1]:.2f}"
    )
    if "p" not in p:
        print("  (this task records no per-item right/wrong outcome: no paired test)")
        return
    verdict = "beyond noise" if p["p"] < 0.05 else "within noise"
    print(f"  fixed {p['fixed']} / broken {p['broken']} items, McNemar exact p = {p['p']:.2g} ({verdict} at 5%)")
    changed = [(b, s) for b, s in zip(base, steered) if bool(b.get("correct")) != bool(s.get("correct"))]
    changed.sort(key=lambda bs: not bs[1].get("correct"))
    for b, s in changed[:show]:
        said = {k: v for k, v in s.items() if k not in ("id", "correct")}
        was = {k: v for k, v in b.items() if k not in ("id", "correct")}
        tag = "fixed" if s.get("correct") else "broken"
        question = " ".join(prompts.get(s["id"], "").split())
        print(f"  {tag} {s['id']}: {question[:300]}")
        print(f"      unsteered {was}\n      steered   {said}")


def cmd_sweep(args: argparse.Namespace) -> int:
    import torch

    from austeer.core.spec import first_overflow, overflow_text
    from austeer.evaluation.capability import Retention
    from austeer.evaluation.sweep import SWEEP_FILES, SWEEP_NAMES, sweep
    from austeer.io import check_file_output, check_output_dir, check_replaceable
    from austeer.models.loading import load_model

    task = _task(args)
    sites = _csv(args.site, str)
    for s in sites:
        if s not in SITES:
            raise UserError(f"unknown site {s!r}; expected some of {', '.join(SITES)}")
    check_capability_args(args)
    inputs = [args.pairs, args.eval]
    check_output_dir(args.out, SWEEP_NAMES, args.force)  # before loading the model
    for where in [Path(args.out) / "best", *(Path(args.out) / "scores" / s for s in sites)]:
        check_replaceable(where, "spec", args.force, inputs)
    for name, owned in SWEEP_FILES.items():
        check_file_output(Path(args.out) / name, "sweep", args.force, inputs, owned)
    widest = max(args.alpha, key=abs)  # |beta| <= 1: the largest gain of the grid is 1 + |alpha|
    if first_overflow([1.0 + abs(widest)], torch.float32) is not None:
        raise UserError(
            f"--alpha {widest:g}: the gain 1 + alpha * beta reaches {overflow_text(1.0 + abs(widest), torch.float32)}"
        )
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
        ks=args.k,
        alphas=args.alpha,
        model_id=name,
        pairs_limit=args.pairs_limit,
        val_limit=args.val_limit,
        test_limit=args.test_limit,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        ref_model=ref,
        run_test=not args.no_test,
        force=args.force,
        panel=capability_panel(args, model, tok, task.name),
    )
    m = state["metric"]
    print(f"{task.name}: val {m} unsteered {state['baseline'][m]:.4f}")
    for r in sorted(state["rows"], key=lambda r: -r["metric"]):
        print(
            f"  {r['site']:8s} k={r['k']:<4d} alpha={r['alpha']:<6g} {m} {r['metric']:.4f}  ppl {r['ppl_delta']:+.3f}"
        )
    b = state["best"]
    print(f"best on val: {b['site']} k={b['k']} alpha={b['alpha']:g} -> {Path(args.out) / 'best'}")
    if "capability" in state:
        print(f"  {Retention.from_json(state['capability']['chosen']).line()}")
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
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="generation budget (math, behaviour)")
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
    p.add_argument(
        "--paired",
        action="store_true",
        help="also evaluate the unsteered model on the same items; print fixed/broken items and McNemar's p",
    )
    p.add_argument("--show", type=positive_int, default=4, help="--paired: how many changed items to print")
    add_capability_args(p)
    add_force_arg(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sweep", help="grid-search site, k and alpha on val; evaluate the best on test")
    _common(p)
    p.add_argument("--site", default="head,ffn", help=f"comma-separated, of {', '.join(SITES)}")
    p.add_argument("--k", type=positive_ints, default=[2, 8, 32, 100], help="comma-separated k values")
    p.add_argument("--alpha", type=finite_floats, default=[1.0, 5.0, 15.0, 50.0], help="comma-separated alpha values")
    p.add_argument("--out", required=True, help="sweep directory (resumed if it exists)")
    add_force_arg(p)
    p.add_argument("--pairs-limit", type=positive_int, default=None, help="use only the first N pairs")
    p.add_argument("--val-limit", type=positive_int, default=None, help="use only the first N val items")
    p.add_argument("--test-limit", type=positive_int, default=None, help="use only the first N test items")
    p.add_argument("--no-test", action="store_true", help="stop after the validation grid")
    add_capability_args(p, bound=True)
    p.set_defaults(func=cmd_sweep)
