"""``austeer export --format lora``: a spec as a PEFT LoRA adapter (vLLM, PEFT), checked before the model loads."""

from __future__ import annotations

import argparse
import json

from austeer.cli.core import load_from_args


def cmd_export_lora(args: argparse.Namespace) -> int:
    from austeer.io import check_replaceable
    from austeer.lora import KIND, check_lora_spec, export_lora, vllm_max_lora_rank
    from austeer.models import fingerprint
    from austeer.spec import load

    check_replaceable(args.out, KIND, args.force)
    spec = load(args.steer)
    check_lora_spec(spec)  # residual, positions last, no units: refused before the model loads
    model, _, _ = load_from_args(args, args.model or spec.model_id or None)
    spec.check_fits(fingerprint(model))
    path = export_lora(model, spec, args.out, alpha=args.alpha, dtype=args.lora_dtype, force=args.force)
    config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    rank, n = int(config["r"]), len(config["target_modules"])
    alpha = spec.alpha if args.alpha is None else args.alpha
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
