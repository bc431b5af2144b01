"""``austeer export --format lora | gguf-lora``: a spec as a LoRA adapter for vLLM and PEFT, or for llama.cpp.

Everything that can be refused without the model (a spec no LoRA expresses, an output austeer did not write)
is refused before it loads."""

from __future__ import annotations

import argparse
import json

from austeer.cli.common import load_from_args


def _check_out(args: argparse.Namespace) -> None:
    from austeer.exports.gguf_meta import is_austeer_gguf
    from austeer.exports.lora import KIND
    from austeer.io import check_file_output, check_replaceable

    if args.format == "lora":
        check_replaceable(args.out, KIND, args.force)
    else:
        check_file_output(args.out, "gguf-lora", args.force, owned=is_austeer_gguf)


def cmd_export_lora(args: argparse.Namespace) -> int:
    from austeer.core.spec import fingerprint, load
    from austeer.exports.lora import check_lora_spec, export_lora, vllm_max_lora_rank

    _check_out(args)
    spec = load(args.steer)
    check_lora_spec(spec)  # residual, positions last, no units
    model, _, _ = load_from_args(args, args.model or spec.model_id or None)
    spec.check_fits(fingerprint(model))
    alpha = spec.alpha if args.alpha is None else args.alpha
    if args.format == "gguf-lora":
        from austeer.exports.gguf_lora import export_gguf_lora

        path = export_gguf_lora(
            model, spec, args.out, alpha=args.alpha, dtype=args.lora_dtype, source=args.source_gguf, force=args.force
        )
        print(f"wrote {spec.k} AUs (alpha {alpha:g}) as a LoRA adapter GGUF ({args.lora_dtype}) -> {path}")
        print(f"llama.cpp: llama-cli -m BASE.gguf --lora {path}   (--lora-scaled {path} S scales the gains by S)")
        return 0
    path = export_lora(model, spec, args.out, alpha=args.alpha, dtype=args.lora_dtype, force=args.force)
    config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    rank, n = int(config["r"]), len(config["target_modules"])
    print(
        f"wrote {spec.k} AUs (alpha {alpha:g}) as a rank-{rank} LoRA adapter on {n} modules ({args.lora_dtype}) "
        f"-> {path}"
    )
    vllm_rank = vllm_max_lora_rank(rank)
    if vllm_rank is None:
        print(f"rank {rank} is above vLLM's largest --max-lora-rank (512): PEFT loads it, vLLM does not (lower k)")
    else:
        print(f"vLLM: --enable-lora --lora-modules NAME={path} --max-lora-rank {vllm_rank}")
    print("serve it on the weights it was exported from (the adapter carries columns of W)")
    return 0
