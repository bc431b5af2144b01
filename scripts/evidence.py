"""Held-out evidence for AUSteer on a model that can do the tasks (default: the embedded Qwen2.5-Coder-1.5B).

Stages (each resumable: results go to ``docs/results/<model>/<stage>_<task>[<label>].json`` as soon as they
exist, finished pieces are skipped on a rerun of the same run; a file of another run (task, model, dtype, or
protocol: :data:`PROTOCOLS`) is one line before the model loads, ``--force`` starts it over):

- ``confirm``: a **confirmatory** test of one configuration fixed in advance (default: head, k=32,
  alpha=10 on 300 pairs, the best validation choice of an earlier bf16 sweep that saw only the first 200
  COPA test items). The unsteered and the steered model answer every test item; the file keeps each item's
  outcome so the paired test (McNemar) can be read on the items the earlier run never saw.
- ``compare``: ``austeer.evaluation.compare`` with every method on the same evidence (paired outcomes per item).
- ``capability``: the capability panel (:mod:`austeer.evaluation.capability`) under every method's choice of the
  committed ``compare`` file, added to it (for comparisons run before compare measured it); a choice another
  comparison of the task measured (same configuration, pairs, dtype and panel) is taken from it
  (``measured_in``), and the unsteered panel is answered once per process.
- ``frontier`` (behaviour tasks): effect against perplexity and continuation perplexity of each method at a
  fixed configuration over a strength grid (``--strengths``), on the first ``--test-limit`` test items,
  saved after each method; ``--prompt-point`` adds the prompting baseline (instruction alone, and with worked
  examples) on the same items.
- ``dose``: the dose-response (test metric and perplexity against the number of top AUs steered at
  ``--alpha``) for every site of ``--sites`` on every test item (or ``--test-limit``), saved after each site.

Behaviour tasks judge continuation perplexity under a second, unsteered copy of the model.

    python scripts/evidence.py --stages confirm --tasks copa
    python scripts/evidence.py --stages compare --tasks copa --budget 4
    python scripts/evidence.py --stages capability --tasks copa --dtype float32
    python scripts/evidence.py --stages dose --tasks copa --sites head,ffn --pairs-limit 300
    python scripts/evidence.py --stages frontier --tasks sentiment --pairs-limit 100 --test-limit 100 --prompt-point
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results"
DOC = ROOT / "docs" / "COMPARISON.md"


def render(model: str, fresh_from: int) -> None:
    """Rewrite ``model``'s generated section of COMPARISON.md and its plots from docs/results/<model>/."""
    from austeer.io import write_between
    from austeer.report.evidence import comparison_section, markers

    write_between(DOC, *markers(model), comparison_section(model, OUT, DOC.parent, fresh_from))


def save(path: Path, data: dict[str, Any]) -> None:
    from austeer.core.spec import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


#: what must be equal for an earlier run's finished pieces to be kept, read from a results file's own fields
PROTOCOLS: dict[str, tuple[str, ...]] = {
    "confirm": ("site", "k", "alpha", "pairs"),  # its config
    "compare": ("budget", "val_limit", "test_limit"),  # its settings (more methods join the same run)
    "dose": ("limit", "pairs", "alpha"),  # its settings (more doses add points to the same run)
    "frontier": ("limit", "pairs", "pairs_file"),  # its settings (more methods or strengths join the same run)
}


def results_file(stage: str, task_name: str, args: argparse.Namespace, where: Path) -> tuple[Path, dict[str, Any]]:
    """Where ``stage`` keeps its results for ``task_name``, and what a new file starts as."""
    label = "" if stage == "confirm" else args.label
    fresh: dict[str, Any] = {"task": task_name, "model": args.model, "dtype": args.dtype}
    if stage == "confirm":
        config = {"site": args.site, "k": args.k, "alpha": args.alpha, "pairs": args.pairs_limit}
        fresh.update(config=config, fresh_from=args.fresh_from, note=args.note)
    elif stage == "compare":
        fresh.update(settings={"budget": args.budget, "val_limit": args.val_limit, "test_limit": args.test_limit})
        fresh["results"] = []
    elif stage == "dose":
        settings = {"limit": args.test_limit, "pairs": args.pairs_limit, "alpha": args.alpha, "doses": args.doses}
        fresh.update(settings=settings, rows=[])
    else:
        settings = {"limit": args.test_limit, "pairs": args.pairs_limit, "strengths": parse_strengths(args.strengths)}
        fresh.update(settings={**settings, **({"pairs_file": args.pairs_file} if args.pairs_file else {})}, rows=[])
    return where / f"{stage}_{task_name}{label}.json", fresh


def resume(stage: str, task_name: str, args: argparse.Namespace, where: Path) -> tuple[Path, dict[str, Any]]:
    """``stage``'s results file for ``task_name`` and its content: an earlier run's when it has the same task,
    model, dtype and protocol (:data:`PROTOCOLS`), else a new one; another run's file is one line naming the
    difference, or with ``--force`` started over (the one resume scheme: :func:`austeer.evaluation.search.load_state`).
    ``main`` calls it for every stage and task before the model loads."""
    from austeer.evaluation.search import load_state

    path, fresh = results_file(stage, task_name, args, where)
    keys = PROTOCOLS[stage]

    def protocol(state: dict[str, Any]) -> dict[str, Any]:
        held = state["config"] if stage == "confirm" else state["settings"]
        return {k: held.get(k) for k in keys}

    def derive(state: dict[str, Any]) -> None:
        state["protocol"] = protocol(state)

    identity = ("task", "model", "dtype", "protocol")
    rows = {"confirm": None, "compare": "results"}.get(stage, "rows")
    fresh["protocol"] = protocol(fresh)
    data = load_state(path, f"evidence.py {stage}", fresh, identity, migrate=derive, rows=rows, replace=args.force)
    data.pop("protocol")
    return path, data


def confirm(task_name: str, args: argparse.Namespace, model: Any, tok: Any, where: Path) -> None:
    from austeer.core.fit import fit
    from austeer.core.reuse import LayerCache
    from austeer.core.steer import folded
    from austeer.evaluation.evaluate import evaluate
    from austeer.tasks import get_task

    path, data = resume("confirm", task_name, args, where)
    task = get_task(task_name)
    kw: dict[str, Any] = {"split": "test", "limit": args.test_limit, "batch_size": args.batch_size}
    cache = LayerCache(model)  # the steered pass replays the layers below its first steered layer
    if "unsteered" not in data:
        start, samples = time.perf_counter(), []  # type: ignore[var-annotated]
        with cache.reuse():
            metrics = evaluate(model, tok, task, samples=samples, **kw)
        data["unsteered"] = {**record(metrics, samples), "seconds": round(time.perf_counter() - start, 1)}
        save(path, data)
    if "steered" not in data:
        start = time.perf_counter()
        if args.spec:  # the shipped spec of the docs' run: the same AUs without refitting
            from austeer.core.spec import load

            spec = load(args.spec).with_k(args.k).with_alpha(args.alpha)
        else:  # full texts, as in the recorded run (in bf16 the shared-prompt path rounds differently)
            pairs = task.pairs(model, tok, limit=args.pairs_limit)
            fit_kw = {"site": args.site, "k": args.k, "alpha": args.alpha, "batch_size": args.batch_size}
            spec = fit(model, tok, pairs, model_id=args.model, share_prefix=False, **fit_kw)
            spec.save(where / f"confirm_{task_name}_spec")
        fit_seconds = round(time.perf_counter() - start, 1)
        samples = []
        with folded(model, spec), cache.reuse():
            metrics = evaluate(model, tok, task, samples=samples, **kw)
        data["steered"] = {
            **record(metrics, samples),
            "fit_seconds": fit_seconds,
            "seconds": round(time.perf_counter() - start, 1),
        }
        save(path, data)
    from austeer.report.evidence import confirm_table

    print("\n".join(confirm_table(data, args.fresh_from)[1:]), flush=True)


def record(metrics: dict[str, float], samples: list[dict[str, Any]]) -> dict[str, Any]:
    """What the confirmatory file keeps of one evaluation: metrics, each item's outcome and id, and the generated
    outputs of generation tasks."""
    from austeer.evaluation.compare import outcomes

    outputs = [s["output"] for s in samples if "output" in s]
    return {"metrics": metrics, "correct": outcomes(samples), "ids": [s["id"] for s in samples], "outputs": outputs}


def compare_stage(task_name: str, args: argparse.Namespace, model: Any, tok: Any, where: Path) -> None:
    """``austeer.evaluation.compare`` of every method, saved after each one (a rerun keeps the methods already
    measured with the same budget and limits, and runs the rest)."""
    from austeer.evaluation.compare import Comparison, Result, compare
    from austeer.tasks import get_task

    task = get_task(task_name)
    methods = args.methods.split(",")
    if task.kind == "mc" and "calibration" not in methods:
        methods.append("calibration")
    path, old = resume("compare", task_name, args, where)
    # methods measured under the same protocol are kept; a new method joins them
    done = [r for r in map(Result.from_json, old["results"]) if r.method in methods]
    if len(done) == len(methods):
        print(f"compare {task_name}: done ({path})")
        return
    start = time.perf_counter() - old.get("seconds", 0) * bool(done)

    def checkpoint(c: Comparison) -> None:
        data = {"model": args.model, "dtype": args.dtype, "seconds": round(time.perf_counter() - start, 1)}
        data["share_prefix"] = args.share_prefix
        save(path, {**data, **c.to_json()})
        print(f"compare {task_name}: {c.results[-1].method} done, test {c.results[-1].test_metric:.3f}", flush=True)

    compare(
        model,
        tok,
        task,
        methods,
        share_prefix=args.share_prefix,  # about 2x faster on long prompts (BoolQ's passages)
        budget=args.budget,
        pairs_limit=args.pairs_limit,
        val_limit=args.val_limit,
        test_limit=args.test_limit,
        batch_size=args.batch_size,
        done=done,
        on_result=checkpoint,
        eval_kw=eval_kw(task, args),
        unsteered=unsteered_memo(model, tok),
    )


def capability_stage(task_name: str, args: argparse.Namespace, model: Any, tok: Any, where: Path) -> None:
    """The capability panel (``--panel-items`` validation items of each other shipped multiple-choice task) under
    each method's chosen configuration of the committed ``compare_<task><label>.json``, rebuilt from the same
    pairs (in ``--dtype``; the file says which); saved after each method, a rerun measures the rest."""
    from austeer.evaluation.capability import PANEL_TASKS, Panel
    from austeer.evaluation.compare import Comparison, Result, measure_capability

    path = where / f"compare_{task_name}{args.label}.json"
    data = json.loads(path.read_text())
    run = {"dtype": args.dtype, "items_per_task": args.panel_items}
    if data.get("capability_run", run) != run:
        raise SystemExit(f"{path}: its capability was measured as {data['capability_run']}, not {run}")
    comparison = Comparison.from_json(data)
    if all(r.capability for r in comparison.results):
        print(f"capability {task_name}: done ({path})")
        return
    start = time.perf_counter() - data.get("capability_run", {}).get("seconds", 0)
    for kept, r in zip(data["results"], comparison.results, strict=True):  # measured in another comparison
        r.capability = kept["capability"] = r.capability or known_retention(path, data, run, r.method, r.config)
    if all(r.capability for r in comparison.results):
        data["capability_run"] = {**run, "seconds": round(time.perf_counter() - start, 1)}
        save(path, data)
        print(f"capability {task_name}: done from other comparisons' measurements ({path})")
        return
    names = tuple(t for t in PANEL_TASKS if t != task_name)  # one panel per process and task set: unsteered once
    if ("panel", names) not in _MEMO:
        _MEMO[("panel", names)] = Panel(
            model, tok, names=names, n=args.panel_items, batch_size=args.batch_size, progress=True
        )
    panel = _MEMO[("panel", names)]

    def checkpoint(measured: Result) -> None:
        for kept, r in zip(data["results"], comparison.results, strict=True):  # the file otherwise as it was
            kept["capability"] = r.capability
        data["capability_run"] = {**run, "seconds": round(time.perf_counter() - start, 1)}
        save(path, data)
        drop = (measured.capability or {})["drop"]
        print(f"capability {task_name}: {measured.method} drop {drop:+.3f}", flush=True)

    measure_capability(
        model,
        tok,
        comparison,
        panel,
        data["settings"]["pairs"],
        batch_size=args.batch_size,
        share_prefix=bool(data.get("share_prefix")),
        on_result=checkpoint,
    )


_MEMO: dict[Any, Any] = {}


def known_retention(
    path: Path, data: dict[str, Any], run: dict[str, Any], method: str, config: dict[str, Any]
) -> dict[str, Any] | None:
    """The capability another comparison of the same task already measured for ``method`` at ``config``: same
    pairs (number and how they were read), same capability run (dtype, panel items); the rebuild is deterministic,
    so the panel's answers are the same."""
    for other in sorted(path.parent.glob(f"compare_{data['task']}*.json")):
        if other == path:
            continue
        theirs = json.loads(other.read_text())
        same = theirs.get("capability_run", {}) | {"seconds": 0} == run | {"seconds": 0}
        same &= theirs["settings"]["pairs"] == data["settings"]["pairs"]
        same &= bool(theirs.get("share_prefix")) == bool(data.get("share_prefix"))
        for r in theirs["results"] if same else []:
            if r["method"] == method and r["config"] == config and r.get("capability"):
                return dict(r["capability"], measured_in=other.name)
    return None


def unsteered_memo(model: Any, tok: Any) -> Any:
    """One memo of unsteered evaluations (and their hidden states) for every stage of this process."""
    from austeer.evaluation.evaluate import Unsteered

    if "unsteered" not in _MEMO:
        _MEMO["unsteered"] = Unsteered(model, tok, progress=True)
    return _MEMO["unsteered"]


def eval_kw(task: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``--max-new-tokens``; behaviour tasks: continuation perplexity under an unsteered copy of the model (loaded
    once)."""
    kw: dict[str, Any] = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
    if task.kind != "behaviour":
        return kw
    if "ref" not in _MEMO:
        from austeer.models.loading import load_model

        _MEMO["ref"] = load_model(args.model, dtype=args.dtype)[0]
    return {**kw, "ref_model": _MEMO["ref"]}


def task_pairs(task: Any, model: Any, tok: Any, args: argparse.Namespace) -> list[Any]:
    """The first ``--pairs-limit`` pairs of the task, or of ``--pairs-file`` (written pairs instead of the task's)."""
    if not args.pairs_file:
        return list(task.pairs(model, tok, limit=args.pairs_limit))
    from austeer.core.pairs import read_pairs

    return read_pairs(args.pairs_file)[: args.pairs_limit]


def parse_strengths(text: str) -> dict[str, list[float]]:
    """``"austeer=5,10;caa=1,2"`` -> ``{"austeer": [5.0, 10.0], "caa": [1.0, 2.0]}``."""
    out: dict[str, list[float]] = {}
    for part in filter(None, (x.strip() for x in text.split(";"))):
        name, _, values = part.partition("=")
        out[name.strip()] = [float(v) for v in values.split(",")]
    return out


def dose_stage(task_name: str, args: argparse.Namespace, model: Any, tok: Any, where: Path) -> None:
    """:func:`austeer.evaluation.compare.dose_response` per site, at ``--alpha``; saved after every point (a rerun
    measures only the points not yet saved)."""
    from austeer.cli.argtypes import parse_doses
    from austeer.evaluation.compare import DoseRow, dose_curve, dose_response
    from austeer.methods.base import gather
    from austeer.tasks import get_task

    task = get_task(task_name)
    path, data = resume("dose", task_name, args, where)
    data["settings"] = results_file("dose", task_name, args, where)[1]["settings"]  # the doses asked for now

    def left(site: str) -> list[int | None]:
        have = [r for r in (DoseRow(**r) for r in data["rows"]) if r.curve == dose_curve(site, args.method)]
        measured = {None if r.all else r.k for r in have}
        return [d for d in parse_doses(args.doses) if d not in measured]

    todo = {s: left(s) for s in args.sites.split(",") if left(s)}
    if not todo:
        print(f"dose {task_name}: done ({path})")
        return
    start = time.perf_counter() - data.get("seconds", 0)

    def keep(row: DoseRow) -> None:
        if row.k == 0 and 0 not in todo[row.site]:
            return  # the unsteered point, measured again only because every curve needs it
        data["rows"].append(asdict(row))
        data["seconds"] = round(time.perf_counter() - start, 1)
        save(path, data)
        print(f"dose {task_name} {row.curve} k={row.k}: {row.metric:.3f} (ppl {row.ppl:.2f})", flush=True)

    base = reused_base(args)  # the unsteered point of an earlier run on the same items, or None
    pairs = task.pairs(model, tok, limit=args.pairs_limit)
    evidence = gather(model, tok, pairs, list(todo), batch_size=args.batch_size)
    for site, doses in todo.items():
        dose_response(
            model,
            tok,
            task,
            evidence,
            [site],
            doses,
            args.alpha,
            limit=args.test_limit,
            batch_size=args.batch_size,
            eval_kw=eval_kw(task, args),
            unsteered=unsteered_memo(model, tok),
            method=args.method,
            on_row=keep,
            base=base,
        )


def reused_base(args: argparse.Namespace) -> Any:
    """``--base-from FILE``: the unsteered point (k = 0, its per-item outcomes) of an earlier dose run of the same
    model, dtype, pairs and test items (greedy answers: the same), so a run at another alpha does not measure it
    again."""
    if not args.base_from:
        return None
    earlier = json.loads(Path(args.base_from).read_text())
    same = (
        earlier.get("model"),
        earlier.get("dtype"),
        earlier["settings"].get("limit"),
        earlier["settings"].get("pairs"),
    )
    if same != (args.model, args.dtype, args.test_limit, args.pairs_limit):
        raise SystemExit(
            f"{args.base_from}: another model, dtype, test items or pairs ({same}); cannot reuse its k = 0"
        )
    from austeer.evaluation.compare import DoseRow

    return DoseRow(**next(r for r in earlier["rows"] if r["k"] == 0))


def frontier_stage(task_name: str, args: argparse.Namespace, model: Any, tok: Any, where: Path) -> None:
    """Each method of ``--strengths`` at its declared frontier configuration over its strengths, on the first
    ``--test-limit`` test items; saved after every method (a rerun skips the methods done)."""
    from austeer.evaluation.compare import frontier
    from austeer.methods import METHODS
    from austeer.methods.base import gather
    from austeer.tasks import get_task

    task = get_task(task_name)
    path, data = resume("frontier", task_name, args, where)
    settings = results_file("frontier", task_name, args, where)[1]["settings"]
    strengths = settings["strengths"]
    # same items and pairs: keep the methods measured at the strengths asked for now (a method added runs)
    before = data["settings"].get("strengths", {})
    kept = {"none", "prompt", *(m for m, v in strengths.items() if before.get(m) == v)}
    data["rows"], data["settings"] = [r for r in data["rows"] if r["method"] in kept], settings
    strengths = {m: v for m, v in strengths.items() if m != "prompt"}
    data["configs"] = {m: METHODS[m].frontier.config for m in strengths if METHODS[m].frontier}  # type: ignore[union-attr]
    done = {r["method"] for r in data["rows"]}
    todo = [m for m in strengths if m not in done]
    if not todo and (not args.prompt_point or "prompt" in done):
        print(f"frontier {task_name}: done ({path})")
        return
    start = time.perf_counter() - data.get("seconds", 0)
    pairs = task_pairs(task, model, tok, args)
    sites = sorted({s for m in todo for s in METHODS[m].sites})
    evidence = gather(model, tok, pairs, sites, batch_size=args.batch_size)
    for name in todo:
        rows = frontier(
            model,
            tok,
            task,
            evidence,
            {name: data["configs"][name]},
            {name: strengths[name]},
            limit=args.test_limit,
            batch_size=args.batch_size,
            eval_kw=eval_kw(task, args),
            unsteered=unsteered_memo(model, tok),
        )
        new = [asdict(r) for r in rows]
        data["rows"] = [r for r in data["rows"] if r["method"] != "none"] + new  # the unsteered row once
        data["rows"].sort(key=lambda r: r["method"] != "none")
        data["seconds"] = round(time.perf_counter() - start, 1)
        save(path, data)
        best = max((r for r in rows if r.method == name), key=lambda r: r.metric)
        print(f"frontier {task_name}: {name} done, best {best.metric:.3f} at {best.strength:g}", flush=True)
    if args.prompt_point and not any(r["method"] == "prompt" for r in data["rows"]):
        data["rows"] += [asdict(r) for r in prompt_points(model, tok, task, args)]
        data["seconds"] = round(time.perf_counter() - start, 1)
        save(path, data)
        print(f"frontier {task_name}: prompt done", flush=True)


def prompt_points(model: Any, tok: Any, task: Any, args: argparse.Namespace) -> list[Any]:
    """The prompting baseline on the frontier's items: the task's instruction alone and with worked examples
    (``strength`` = the number of examples); it steers nothing."""
    from austeer.evaluation.compare import FrontierRow, evaluate_steered, outcomes, prompted_evidence
    from austeer.methods import METHODS

    method = METHODS["prompt"]
    evidence = prompted_evidence(model, tok, task, ["prompt"], args.pairs_limit, args.batch_size)
    rows = []
    for config in method.grid:
        samples: list[dict[str, Any]] = []
        m = evaluate_steered(
            model,
            tok,
            task,
            method.build(model, evidence, **config),
            split="test",
            limit=args.test_limit,
            batch_size=args.batch_size,
            samples=samples,
            **eval_kw(task, args),
        )
        rows.append(FrontierRow("prompt", float(config["shots"]), 0, m[task.metric], m, outcomes(samples)))
    return rows


STAGES = {
    "confirm": confirm,
    "compare": compare_stage,
    "capability": capability_stage,
    "dose": dose_stage,
    "frontier": frontier_stage,
}


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
    p.add_argument("--pairs-file", default=None, help="frontier: steer from these pairs (JSONL) instead of the task's")
    p.add_argument("--base-from", default=None, help="dose: reuse the unsteered point of this earlier dose file")
    p.add_argument("--panel-items", type=int, default=50, help="capability: validation items of each panel task")
    p.add_argument("--label", default="", help="compare, capability: a suffix of the results file (another protocol)")
    p.add_argument("--note", default="", help="confirm: a sentence on where the fixed configuration came from")
    p.add_argument("--out", default=str(OUT), help="results folder (docs/results: also rewrites COMPARISON.md)")
    p.add_argument("--render-only", action="store_true")
    p.add_argument(
        "--force", action="store_true", help="start a results file of another run (task, model, dtype, protocol) over"
    )
    args = p.parse_args()
    from austeer.report.evidence import folder_of, rendered_models

    if args.render_only:  # every model with results in docs/results, each in its own section of COMPARISON.md
        for model in rendered_models(DOC):
            render(model, args.fresh_from)
        return
    from austeer.errors import UserError
    from austeer.models.loading import load_model

    where = folder_of(Path(args.out), args.model)
    stages, tasks = args.stages.split(","), args.tasks.split(",")
    try:  # another run's results file is one line before the model loads
        for stage in (s for s in stages if s in PROTOCOLS):
            for name in tasks:
                resume(stage, name, args, where)
    except UserError as exc:
        print(f"evidence.py: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    where.mkdir(parents=True, exist_ok=True)
    model, tok = load_model(args.model, dtype=args.dtype)
    for stage in stages:
        for name in tasks:
            STAGES[stage](name, args, model, tok, where)
            if Path(args.out).resolve() == OUT and args.model in rendered_models(DOC):
                render(args.model, args.fresh_from)


if __name__ == "__main__":
    main()
