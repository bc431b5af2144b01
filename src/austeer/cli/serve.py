"""``austeer serve``: the OpenAI-compatible server with per-request steering."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from austeer.cli.argtypes import non_negative_float, port, positive_float, positive_int
from austeer.cli.common import add_model_args, load_from_args
from austeer.errors import UserError


def cmd_serve(args: argparse.Namespace) -> int:
    from austeer.serving.batched import batch_note
    from austeer.serving.openai_api import Limits
    from austeer.serving.server import Server, ServerConfig, check_listen, load_steers

    dirs = parse_steer_args(args.steer or [])
    if args.max_tokens_default > args.max_tokens_limit:
        raise UserError(
            f"--max-tokens-default {args.max_tokens_default} is above --max-tokens-limit {args.max_tokens_limit}"
        )
    limits = Limits(  # checked before the model loads, like the address
        max_tokens_default=args.max_tokens_default, max_tokens_limit=args.max_tokens_limit, max_alpha=args.max_alpha
    )
    if args.max_model_len is not None and args.max_tokens_default >= args.max_model_len:
        raise UserError(
            f"--max-tokens-default {args.max_tokens_default} leaves no room for a prompt in --max-model-len "
            f"{args.max_model_len}"
        )
    check_listen(args.host, args.port)
    model, tok, name = load_from_args(args)
    steers = load_steers(model, dirs)
    config = ServerConfig(
        host=args.host,
        port=args.port,
        model_name=args.served_model_name or name,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        max_model_len=args.max_model_len,
        backlog=args.backlog,
        read_timeout_s=args.read_timeout,
        limits=limits,
    )
    server = Server(model, tok, steers, config)
    listed = ", ".join(f"{n} ({s.k} AUs, alpha {s.alpha:g})" for n, s in steers.items()) or "none"
    print(f"austeer serve: model {config.model_name}; steers: {listed}", file=sys.stderr)
    note = batch_note(next(model.parameters()).dtype)
    if note:
        print(f"austeer serve: note: {note}", file=sys.stderr)
    print(f"listening on {server.url}/v1 (Ctrl-C to stop)", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server; each request may choose its own steer")
    p.add_argument("--steer", action="append", metavar="NAME=DIR", help="a spec directory to serve (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=port, default=8000, help="port (0: any free port)")
    p.add_argument("--served-model-name", default=None, help="model id in responses (default: --model)")
    p.add_argument("--max-batch", type=positive_int, default=8, help="rows per batched generate")
    p.add_argument(
        "--batch-wait-ms", type=non_negative_float, default=10.0, help="how long to collect requests into a batch"
    )
    p.add_argument("--max-model-len", type=positive_int, default=None, help="prompt + completion token limit")
    p.add_argument("--backlog", type=positive_int, default=1024, help="connections queued while none is accepted")
    p.add_argument("--read-timeout", type=positive_float, default=30.0, help="seconds a connection may stall a read")
    p.add_argument("--max-tokens-default", type=positive_int, default=128, help="max_tokens when a request gives none")
    p.add_argument("--max-tokens-limit", type=positive_int, default=1024, help="largest max_tokens accepted")
    p.add_argument("--max-alpha", type=non_negative_float, default=100.0, help="largest |alpha| a request may ask for")
    add_model_args(p)
    p.set_defaults(func=cmd_serve)


def parse_steer_args(items: list[str]) -> dict[str, str]:
    """``["NAME=DIR", ...]`` to ``{NAME: DIR}``.

    Example:
        >>> parse_steer_args(["pos=runs/pos", "neg=runs/neg"])
        {'pos': 'runs/pos', 'neg': 'runs/neg'}
    """
    out: dict[str, str] = {}
    for item in items:
        name, sep, directory = item.partition("=")
        if not sep or not name or not directory:
            raise UserError(f"--steer expects NAME=DIR, got {item!r}")
        if name in out:
            raise UserError(f"--steer name {name!r} given twice")
        out[name] = directory
    return out
