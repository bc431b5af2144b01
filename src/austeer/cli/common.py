"""What the commands share: the model, force and capability flags, loading the model, fitting from flags."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from austeer.cli.argtypes import fraction, non_negative_int
from austeer.errors import UserError


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="hub id, local path or embedded:NAME (default: embedded SmolLM2)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto (default): bfloat16 on a GPU and on CPUs with avx512_bf16/amx_bf16, else float32",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: where the model loads)")
    p.add_argument("--device-map", default=None, help="e.g. auto, to split a large model over GPUs")


def add_capability_args(p: argparse.ArgumentParser, bound: bool = False) -> None:
    """``--capability N`` (the capability panel, :mod:`austeer.evaluation.capability`) and, with ``bound``,
    ``--max-capability-drop``."""
    p.add_argument(
        "--capability",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="also answer N validation items of each other shipped multiple-choice task (COPA, BoolQ, WinoGrande) "
        "steered and unsteered: the capability cost, as paired counts (0: off)",
    )
    if bound:
        p.add_argument(
            "--max-capability-drop",
            type=fraction,
            default=None,
            help="choose the best configuration on val whose capability-panel accuracy drops by at most this "
            "(default with --capability: 0.05, from the measurements in docs/COMPARISON.md; 1: no bound)",
        )


def check_capability_args(args: argparse.Namespace) -> None:
    """Refuse ``--max-capability-drop`` without ``--capability`` (before any model loads)."""
    if getattr(args, "max_capability_drop", None) is not None and not args.capability:
        raise UserError("--max-capability-drop needs --capability N (the panel it bounds)")


def capability_panel(args: argparse.Namespace, model: Any, tokenizer: Any, task: str) -> Any:
    """The capability panel ``--capability`` asks for (None when off), without the steered ``task``."""
    if not args.capability:
        return None
    from austeer.evaluation.capability import DEFAULT_MAX_DROP, Panel

    bound = getattr(args, "max_capability_drop", None)  # eval measures the cost; the searches bound it
    if bound is None and hasattr(args, "max_capability_drop"):
        bound = DEFAULT_MAX_DROP
    return Panel(
        model, tokenizer, exclude=(task,), n=args.capability, batch_size=args.batch_size, progress=True, max_drop=bound
    )


def load_from_args(args: argparse.Namespace, model: str | None = None) -> tuple[Any, Any, str]:
    from austeer.models.loading import DEFAULT_MODEL, load_model

    name = model or args.model or DEFAULT_MODEL
    why = ""
    if args.dtype == "auto":  # resolved (and told) once; later loads of this run (a reference copy) reuse it
        from austeer.models.loading import resolve_dtype

        dtype, why = resolve_dtype("auto", args.device, args.device_map)
        args.dtype = str(dtype).removeprefix("torch.")
    m, tok = load_model(name, dtype=args.dtype, device=args.device, device_map=args.device_map)
    if why:  # told once the model has loaded: a bad --model stays a one-line error
        print(f"austeer: dtype auto -> {args.dtype} ({why}); --dtype float32 for full precision", file=sys.stderr)
    return m, tok, name


def check_alpha(spec: Any, args: argparse.Namespace) -> None:
    """Before the model loads: every gain ``1 + alpha * beta`` of ``spec`` (``--alpha`` overriding its alpha)
    must be finite in float32 and in an explicit ``--dtype`` (the model's own dtype is checked once loaded)."""
    import torch

    from austeer.core.spec import check_gains_fit

    spec.gains(args.alpha)  # float32: the dtype every path makes its gains in
    if args.dtype != "auto":
        alpha, where = (spec.alpha, spec.path or "spec") if args.alpha is None else (args.alpha, "spec")
        check_gains_fit(spec.units, alpha, getattr(torch, args.dtype), where)


def fit_from_args(args: argparse.Namespace, rank: int = 0, world: int = 1) -> Any:
    """Read the pairs, load the model and fit (over the process group when ``world > 1``)."""
    from austeer.core.distributed import fit_distributed
    from austeer.core.fit import fit
    from austeer.core.pairs import read_pairs

    pairs = read_pairs(args.pairs)
    if args.limit is not None:
        pairs = pairs[: args.limit]
    model, tok, name = load_from_args(args)
    start = time.perf_counter()
    sites = [s.strip() for s in args.site.split(",")]
    fitter = fit if world == 1 else fit_distributed
    spec = fitter(
        model,
        tok,
        pairs,
        site=sites,
        k=args.k,
        alpha=args.alpha,
        batch_size=args.batch_size,
        max_length=args.max_length,
        model_id=name,
        progress=rank == 0,
        share_prefix=bool(getattr(args, "share_prefix", True)),
        positions=getattr(args, "positions", "all"),
        selection=getattr(args, "selection", "sign"),
    )
    spec.info.update(pairs_file=str(args.pairs), seconds=round(time.perf_counter() - start, 2))
    if world > 1:
        spec.info["processes"] = world
    return spec


def add_force_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out even when it is not an output austeer wrote (never a file)",
    )
