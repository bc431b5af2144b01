"""llama.cpp outputs: ``austeer export --format gguf`` and ``austeer control-vector`` (CAA as a control vector)."""

from __future__ import annotations

import argparse
from typing import Any

from austeer.cli.argtypes import finite_float, positive_int
from austeer.cli.core import add_force_arg, add_model_args, load_from_args


def add_export_args(p: argparse.ArgumentParser) -> None:
    """The options ``austeer export`` gets for the GGUF format."""
    p.add_argument(
        "--format",
        default="hf",
        choices=["hf", "gguf"],
        help="hf: a Hugging Face checkpoint directory; gguf: one .gguf file for llama.cpp / Ollama (a model loaded "
        "from a GGUF keeps its untouched tensors byte for byte; one from a Hugging Face checkpoint, llama or qwen2 "
        "family, is written whole)",
    )
    p.add_argument("--source-gguf", default=None, help="the .gguf the model was loaded from (default: found)")
    p.add_argument(
        "--gguf-dtype",
        default="f32",
        choices=["f32", "f16", "bf16"],
        help="how the folded tensors are stored (every matrix, for a model from a Hugging Face checkpoint)",
    )


def cmd_export_gguf(args: argparse.Namespace) -> int:
    from austeer.extras import GGUF, require

    require(*GGUF, "austeer export --format gguf")
    from austeer.gguf_export import export_gguf
    from austeer.io import check_file_target
    from austeer.models import fingerprint
    from austeer.spec import load

    check_file_target(args.out)
    spec = load(args.steer)
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
    from austeer.baselines import caa
    from austeer.baselines.base import gather
    from austeer.io import check_file_target
    from austeer.pairs import read_pairs

    check_file_target(args.out)
    pairs = read_pairs(args.pairs)[: args.limit]
    model, tok, _ = load_from_args(args)
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
        "--layer", type=finite_float, default=0.5, help="a fraction of the depth (< 1) or a layer index (>= 1)"
    )
    p.add_argument("--multiplier", type=finite_float, default=1.0, help="strength: the vector is multiplier * v")
    p.add_argument("--out", required=True, help="control vector file to write (.gguf)")
    add_force_arg(p)
    p.add_argument("--batch-size", type=positive_int, default=16, help="pairs per forward pass")
    p.add_argument("--limit", type=positive_int, default=None, help="use only the first N pairs")
    add_model_args(p)
    p.set_defaults(func=cmd_control_vector)
