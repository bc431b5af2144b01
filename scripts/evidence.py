"""Held-out evidence on a model that can do the tasks (default: the embedded Qwen2.5-Coder-1.5B): the command line
of :mod:`austeer.evaluation.evidence` (its stages: confirm, compare, capability, dose, frontier; each resumable,
another run's results file refused before the model loads, ``--force`` starts it over). Results go to
``docs/results/<model>/`` and COMPARISON.md's generated section is rewritten after every stage
(:mod:`austeer.report.evidence`).

- confirm: one configuration fixed in advance (--site, --k, --alpha on --pairs-limit pairs, or --spec), unsteered
  and steered on every test item
- compare: every method of --methods, chosen on --val-limit val items with --budget configurations, on the test
- capability: the capability panel under each choice of compare_<task><--label>.json
- dose: test metric and perplexity against the number of top AUs (--doses) per site of --sites, at --alpha
- frontier (behaviour tasks): effect against perplexity of each method over --strengths (+ --prompt-point)

    python scripts/evidence.py --stages confirm --tasks copa
    python scripts/evidence.py --stages compare --tasks copa --budget 4
    python scripts/evidence.py --stages capability --tasks copa --dtype float32
    python scripts/evidence.py --stages dose --tasks copa --sites head,ffn --pairs-limit 300
    python scripts/evidence.py --stages frontier --tasks sentiment --pairs-limit 100 --test-limit 100 --prompt-point
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from austeer.errors import UserError
from austeer.evaluation.evidence import EvidenceRun, run_stages

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results"
DOC = ROOT / "docs" / "COMPARISON.md"


def render(model: str, fresh_from: int) -> None:
    """Rewrite ``model``'s generated section of COMPARISON.md and its plots from docs/results/<model>/."""
    from austeer.io import write_between
    from austeer.report.evidence import comparison_section, markers

    write_between(DOC, *markers(model), comparison_section(model, OUT, DOC.parent, fresh_from))


def parse_strengths(text: str) -> dict[str, list[float]]:
    """``"austeer=5,10;caa=1,2"`` -> ``{"austeer": [5.0, 10.0], "caa": [1.0, 2.0]}``."""
    out: dict[str, list[float]] = {}
    for part in filter(None, (x.strip() for x in text.split(";"))):
        name, _, values = part.partition("=")
        out[name.strip()] = [float(v) for v in values.split(",")]
    return out


def run_of(args: argparse.Namespace) -> EvidenceRun:
    """The flags as the library's settings object."""
    from austeer.cli.argtypes import parse_doses

    names = ["model", "dtype", "site", "k", "alpha", "spec", "note", "fresh_from", "budget", "share_prefix"]
    names += ["method", "base_from", "prompt_point", "pairs_file", "panel_items", "pairs_limit", "val_limit"]
    names += ["test_limit", "batch_size", "max_new_tokens", "label", "force"]
    return EvidenceRun(
        **{n: getattr(args, n) for n in names},
        methods=tuple(args.methods.split(",")),
        sites=tuple(args.sites.split(",")),
        doses=tuple(parse_doses(args.doses)),
        strengths=parse_strengths(args.strengths),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded:qwen2.5-coder-1.5b-instruct")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--tasks", default="copa")
    p.add_argument("--stages", default="confirm,compare")
    p.add_argument("--site", default="head")
    p.add_argument("--sites", default="head,ffn,neuron", help="dose: one curve per site")
    p.add_argument("--method", default="austeer", help="dose: austeer or a variant (austeer-last, austeer-signed)")
    p.add_argument("--doses", default="0,2,8,32,100,1000,all", help="dose: numbers of top AUs (all: every AU)")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--alpha", type=float, default=10.0)
    p.add_argument("--methods", default="austeer,caa,iti,sadi,block,random,fixed")
    p.add_argument("--budget", type=int, default=4)
    p.add_argument("--pairs-limit", type=int, default=300)
    p.add_argument("--val-limit", type=int, default=100)
    p.add_argument("--test-limit", type=int, default=None, help="default: every test item")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--max-new-tokens", type=int, default=None, help="generation tasks: the budget (default: the task's)"
    )
    p.add_argument("--fresh-from", type=int, default=200, help="first test item the earlier exploratory run never saw")
    p.add_argument("--spec", default=None, help="confirm: steer with this spec directory instead of fitting")
    p.add_argument(
        "--strengths",
        default="austeer=5,10,20,50;caa=0.5,1,2,4;iti=2,5,10,20",
        help="frontier: method=strength,... separated by ';' (each at its declared frontier configuration)",
    )
    p.add_argument(
        "--prompt-point",
        action="store_true",
        help="frontier: also the prompt (instruction alone, and with examples) on the same items",
    )
    p.add_argument("--share-prefix", action="store_true", help="compare: read each pair's shared prompt once")
    p.add_argument(
        "--pairs-file", default=None, help="frontier, dose: steer from these pairs (JSONL) instead of the task's"
    )
    p.add_argument("--base-from", default=None, help="dose: reuse the unsteered point of this earlier dose file")
    p.add_argument("--panel-items", type=int, default=50, help="capability: validation items of each panel task")
    p.add_argument("--label", default="", help="every stage but confirm: a suffix of the results file")
    p.add_argument("--note", default="", help="confirm: a sentence on where the fixed configuration came from")
    p.add_argument("--out", default=str(OUT), help="results folder (docs/results: also rewrites COMPARISON.md)")
    p.add_argument("--render-only", action="store_true")
    p.add_argument(
        "--force", action="store_true", help="start a results file of another run (task, model, dtype, protocol) over"
    )
    args = p.parse_args()
    from austeer.report.evidence import confirm_table, folder_of, rendered_models

    if args.render_only:  # every model with results in docs/results, each in its own section of COMPARISON.md
        for model in rendered_models(DOC):
            render(model, args.fresh_from)
        return
    from austeer.models.loading import load_model

    where = folder_of(Path(args.out), args.model)
    stages, tasks = args.stages.split(","), args.tasks.split(",")

    def done(stage: str, task: str, data: dict[str, Any]) -> None:
        if stage == "confirm":
            print("\n".join(confirm_table(data, args.fresh_from)[1:]), flush=True)
        if Path(args.out).resolve() == OUT and args.model in rendered_models(DOC):
            render(args.model, args.fresh_from)

    try:
        run = run_of(args)  # the stages and results files are checked before the model loads
        run_stages(run, stages, tasks, where, lambda: load_model(args.model, dtype=args.dtype), on_done=done)
    except UserError as exc:
        print(f"evidence.py: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
