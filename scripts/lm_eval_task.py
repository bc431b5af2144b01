#!/usr/bin/env python
"""Write the data of the local lm-evaluation-harness task ``austeer_copa`` (src/austeer/data/lm_eval/).

Each row is one COPA item of austeer's ``copa`` task, with the prompt exactly as ``austeer eval`` feeds it
to the model (``austeer.core.pairs.format_prompt``: the model's chat template, generation prompt included):

    {"id": "copa-...", "prompt": <plain prompt>, "text": <chat-formatted prompt>, "label": 0 or 1}

The task YAML (``austeer_copa.yaml``) scores ``text`` followed by ``A`` or ``B``. ``text`` depends on the
model's chat template, so the shipped file is for the embedded SmolLM2-135M-Instruct; write one for
another model with ``--model`` and pass it to lm-eval with ``--metadata '{"data": "FILE"}'``.

    python scripts/lm_eval_task.py                               # the shipped file (SmolLM2, test split)
    python scripts/lm_eval_task.py --model Qwen/Qwen2.5-0.5B-Instruct --out runs/qwen_copa.jsonl
    python scripts/lm_eval_task.py --pairs-out runs/copa_pairs.jsonl --pairs-limit 64   # + pairs for fit

``--pairs-out`` also writes COPA contrastive pairs (``prompt``, ``positive``, ``negative``; from the
task's pair split, never from val/test) for ``austeer fit --pairs``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "src" / "austeer" / "data" / "lm_eval" / "austeer_copa_test.jsonl"


def task_rows(tok: Any, split: str = "test", system: str | None = None) -> list[dict[str, Any]]:
    """The COPA ``split`` items as lm-eval rows, in austeer's item order."""
    from austeer.core.pairs import format_prompt
    from austeer.tasks import get_task

    return [
        {"id": it.id, "prompt": it.prompt, "text": format_prompt(tok, it.prompt, system), "label": it.label}
        for it in get_task("copa").items(split)
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    from austeer.models.loading import load_model
    from austeer.tasks import get_task

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="whose chat template formats the prompts (default: embedded)")
    ap.add_argument("--split", default="test", choices=["val", "test"])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--pairs-out", type=Path, default=None, help="also write COPA pairs JSONL for austeer fit")
    ap.add_argument("--pairs-limit", type=int, default=None, help="keep the first N pairs")
    args = ap.parse_args(argv)

    _, tok = load_model(args.model)
    rows = task_rows(tok, args.split)
    write_jsonl(args.out, rows)
    print(f"wrote {len(rows)} COPA {args.split} items to {args.out}")
    if args.pairs_out is not None:
        pairs = get_task("copa").pairs(limit=args.pairs_limit)
        write_jsonl(
            args.pairs_out, [{"prompt": p.prompt, "positive": p.positive, "negative": p.negative} for p in pairs]
        )
        print(f"wrote {len(pairs)} COPA pairs to {args.pairs_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
