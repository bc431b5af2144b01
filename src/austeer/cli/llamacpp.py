"""llama.cpp outputs: ``austeer export --format gguf`` (:data:`austeer.cli.export.FORMATS`) and
``austeer control-vector`` (CAA as a control vector)."""

from __future__ import annotations

import argparse
from typing import Any

from austeer.cli.argtypes import finite_float, layer_or_fraction, positive_int
from austeer.cli.common import add_force_arg, add_model_args, check_alpha, load_from_args
from austeer.errors import UserError


def cmd_export_gguf(args: argparse.Namespace) -> int:
    from austeer.extras import GGUF, require

    require(*GGUF, "austeer export --format gguf")
    from austeer.core.spec import fingerprint, load
    from austeer.exports.gguf_export import export_gguf
    from austeer.exports.gguf_write import is_austeer_gguf
    from austeer.io import check_file_output

    check_file_output(args.out, "gguf", args.force, [args.steer, args.source_gguf], owned=is_austeer_gguf)
    spec = load(args.steer)
    check_alpha(spec, args)
    model, tok, _ = load_from_args(args, args.model or spec.model_id or None)
    spec.check_fits(fingerprint(model))
    path = export_gguf(
        model,
        spec,
        args.out,
        alpha=args.alpha,
        source=args.source_gguf,
        dtype=args.gguf_dtype,
        force=args.force,
        tokenizer=tok,
    )
    alpha = spec.alpha if args.alpha is None else args.alpha
    print(f"folded {spec.k} AUs (alpha {alpha:g}) into {path}; run it with llama-cli -m {path}")
    return 0


def cmd_control_vector(args: argparse.Namespace) -> int:
    from austeer.extras import GGUF, require

    require(*GGUF, "austeer control-vector")
    from austeer.core.pairs import read_pairs
    from austeer.exports.control_vector import is_austeer_control_vector
    from austeer.io import check_file_output
    from austeer.methods import caa
    from austeer.methods.base import gather

    check_file_output(args.out, "control-vector", args.force, [args.pairs], owned=is_austeer_control_vector)
    pairs = read_pairs(args.pairs)[: args.limit]
    model, tok, _ = load_from_args(args)
    from austeer.core.sites import decoder_layers

    index = caa.layer_index(args.layer, len(decoder_layers(model)))  # before the pairs are read through the model
    if index < 1:
        raise UserError(f"--layer {args.layer:g} is layer 0, whose output llama.cpp cannot steer; use a layer >= 1")
    evidence = gather(model, tok, pairs, ["residual"], batch_size=args.batch_size, progress=False)
    steerer = caa.build(model, evidence, layer=args.layer, multiplier=args.multiplier)
    path = caa.to_control_vector(steerer, model, args.out, force=args.force)
    layer = steerer.config["layer_index"]
    print(f"CAA on {len(pairs)} pairs, layer {layer}, multiplier {args.multiplier:g} -> {path}")
    print(f"run it with: llama-cli -m MODEL.gguf --control-vector {path}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("control-vector", help="fit CAA on pairs and write it as a llama.cpp control vector (.gguf)")
    p.add_argument("--pairs", required=True, help="JSONL with prompt, positive, negative (optional system)")
    p.add_argument(
        "--layer", type=layer_or_fraction, default=0.5, help="a fraction of the depth (< 1) or a layer index (>= 1)"
    )
    p.add_argument("--multiplier", type=finite_float, default=1.0, help="strength: the vector is multiplier * v")
    p.add_argument("--out", required=True, help="control vector file to write (.gguf)")
    add_force_arg(p)
    p.add_argument("--batch-size", type=positive_int, default=16, help="pairs per forward pass")
    p.add_argument("--limit", type=positive_int, default=None, help="use only the first N pairs")
    add_model_args(p)
    p.set_defaults(func=cmd_control_vector)
