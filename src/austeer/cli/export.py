"""``austeer export --format FORMAT``: a spec folded into a model file, or written as an adapter.

A new export format is a library function in :mod:`austeer.exports` and one row of :data:`FORMATS` (the
command that writes it, and its help): the ``--format`` choices and the dispatch are read from that table.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from austeer.cli.argtypes import finite_float
from austeer.cli.common import add_force_arg, add_model_args, check_alpha, load_from_args

#: every ``--format``: the command that writes it (``module:function`` of this package) and what it writes
FORMATS: dict[str, tuple[str, str]] = {
    "hf": ("export:cmd_export_hf", "a Hugging Face checkpoint directory"),
    "gguf": (
        "llamacpp:cmd_export_gguf",
        "one .gguf file for llama.cpp / Ollama (a model loaded from a GGUF keeps its untouched tensors byte for "
        "byte; one from a Hugging Face checkpoint, llama or qwen2 family, is written whole)",
    ),
    "lora": (
        "lora:cmd_export_lora",
        "a PEFT LoRA adapter directory that vLLM and PEFT apply per request (head, neuron and bias-free ffn sites)",
    ),
    "gguf-lora": ("lora:cmd_export_lora", "the same adapter as a .gguf for llama.cpp's --lora"),
}


def cmd_export(args: argparse.Namespace) -> int:
    module, _, function = FORMATS[args.format][0].partition(":")
    command = getattr(importlib.import_module(f"austeer.cli.{module}"), function)
    return int(command(args))


def cmd_export_hf(args: argparse.Namespace) -> int:
    from austeer.core.spec import fingerprint, load
    from austeer.exports.checkpoint import export
    from austeer.io import check_replaceable

    check_replaceable(args.out, "export", args.force, [args.steer])
    spec = load(args.steer)
    check_alpha(spec, args)
    model, tok, _ = load_from_args(args, args.model or spec.model_id or None)
    spec.check_fits(fingerprint(model))
    path = export(model, tok, spec, args.out, alpha=args.alpha, force=args.force)
    print(
        f"folded {spec.k} AUs (alpha {spec.alpha if args.alpha is None else args.alpha:g}) into {path}; "
        "load it with AutoModelForCausalLM.from_pretrained"
    )
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="write the folded model as a Hugging Face checkpoint or a GGUF file, or the spec as a LoRA adapter",
    )
    p.add_argument("--steer", required=True)
    p.add_argument(
        "--out",
        required=True,
        help="model directory to write (a .gguf file with --format gguf or gguf-lora; an adapter directory with lora)",
    )
    add_force_arg(p)
    p.add_argument("--alpha", type=finite_float, default=None)
    p.add_argument(
        "--format",
        default="hf",
        choices=list(FORMATS),
        help="; ".join(f"{name}: {what}" for name, (_, what) in FORMATS.items()),
    )
    p.add_argument(
        "--source-gguf", default=None, help="the .gguf the model was loaded from (default: found); gguf-lora's base"
    )
    p.add_argument(
        "--gguf-dtype",
        default="f32",
        choices=["f32", "f16", "bf16"],
        help="how the folded tensors are stored (every matrix, for a model from a Hugging Face checkpoint)",
    )
    p.add_argument(
        "--lora-dtype",
        default="f32",
        choices=["f32", "f16", "bf16"],
        help="how LoRA factors are stored (lora, gguf-lora)",
    )
    add_model_args(p)
    p.set_defaults(func=cmd_export)
