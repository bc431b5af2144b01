"""The evidence stages (:data:`STAGES`), each ``stage(session, task_name)``: it measures what its results file
lacks, saves after every piece, and returns the file's content.

- ``confirm``: one configuration fixed in advance, unsteered and steered on every test item.
- ``compare``: :func:`austeer.evaluation.compare.compare` of every method, saved after each.
- ``capability``: the capability panel under each choice of a committed ``compare`` file.
- ``dose``: :func:`austeer.evaluation.compare.dose_response` per site, at one alpha.
- ``frontier``: each method over its strengths at its declared frontier configuration (and the prompt).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from austeer.errors import UserError
from austeer.evaluation.evidence.run import Session, capability_file, results_file, resume, save
from austeer.tasks import get_task


def record(metrics: dict[str, float], samples: list[dict[str, Any]]) -> dict[str, Any]:
    """What the confirmatory file keeps of one evaluation: metrics, each item's outcome and id, and the generated
    outputs of generation tasks."""
    from austeer.evaluation.compare import outcomes

    outputs = [s["output"] for s in samples if "output" in s]
    return {"metrics": metrics, "correct": outcomes(samples), "ids": [s["id"] for s in samples], "outputs": outputs}


def confirm(s: Session, task_name: str) -> dict[str, Any]:
    """The unsteered and the steered model (the fixed configuration: fitted on ``pairs_limit`` pairs, or the
    ``spec`` given) on every test item (or ``test_limit``), each item's outcome kept."""
    from austeer.core.fit import fit
    from austeer.core.reuse import LayerCache
    from austeer.core.spec import load
    from austeer.core.steer import folded
    from austeer.evaluation.evaluate import evaluate

    run, model, tok = s.run, s.model, s.tokenizer
    path, data = resume(run, "confirm", task_name, s.where)
    task = get_task(task_name)
    kw: dict[str, Any] = {"split": "test", "limit": run.test_limit, "batch_size": run.batch_size}
    cache = LayerCache(model)  # the steered pass replays the layers below its first steered layer
    if "unsteered" not in data:
        start, samples = time.perf_counter(), []  # type: ignore[var-annotated]
        with cache.reuse():
            metrics = evaluate(model, tok, task, samples=samples, **kw)
        data["unsteered"] = {**record(metrics, samples), "seconds": round(time.perf_counter() - start, 1)}
        save(path, data)
    if "steered" not in data:
        start = time.perf_counter()
        if run.spec:  # the shipped spec of the docs' run: the same AUs without refitting
            spec = load(run.spec).with_k(run.k).with_alpha(run.alpha)
        else:  # full texts, as in the recorded run (in bf16 the shared-prompt path rounds differently)
            pairs = task.pairs(model, tok, limit=run.pairs_limit)
            spec = fit(
                model,
                tok,
                pairs,
                run.site,
                run.k,
                run.alpha,
                batch_size=run.batch_size,
                model_id=run.model,
                share_prefix=False,
            )
            spec.save(s.where / f"confirm_{task_name}_spec")
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
    return data


def compare_stage(s: Session, task_name: str) -> dict[str, Any]:
    """:func:`~austeer.evaluation.compare.compare` of every method, saved after each one (a rerun keeps the
    methods already measured under the same protocol, and runs the rest)."""
    from austeer.evaluation.compare import Comparison, Result, compare, sites_for

    run = s.run
    task = get_task(task_name)
    methods = list(run.methods)
    if task.kind == "mc" and "calibration" not in methods:
        methods.append("calibration")
    path, old = resume(run, "compare", task_name, s.where)
    # methods measured under the same protocol are kept; a new method joins them
    done = [r for r in map(Result.from_json, old["results"]) if r.method in methods]
    if len(done) == len(methods):
        print(f"compare {task_name}: done ({path})")
        return old
    start = time.perf_counter() - old.get("seconds", 0) * bool(done)
    data = old

    def checkpoint(c: Comparison) -> None:
        nonlocal data
        data = {"model": run.model, "dtype": run.dtype, "seconds": round(time.perf_counter() - start, 1)}
        data["share_prefix"] = run.share_prefix
        data.update(c.to_json())
        save(path, data)
        print(f"compare {task_name}: {c.results[-1].method} done, test {c.results[-1].test_metric:.3f}", flush=True)

    compare(
        s.model,
        s.tokenizer,
        task,
        methods,
        share_prefix=run.share_prefix,  # about 2x faster on long prompts (BoolQ's passages)
        budget=run.budget,
        pairs_limit=run.pairs_limit,
        val_limit=run.val_limit,
        test_limit=run.test_limit,
        batch_size=run.batch_size,
        done=done,
        on_result=checkpoint,
        eval_kw=s.eval_kw(task),
        unsteered=s.unsteered(),
        evidence=s.read(task.pairs(s.model, s.tokenizer, limit=run.pairs_limit), sites_for(methods), run.share_prefix),
    )
    return data


def capability_stage(s: Session, task_name: str) -> dict[str, Any]:
    """The capability panel (``panel_items`` validation items of each other shipped multiple-choice task) under
    each method's chosen configuration of the committed ``compare_<task><label>.json``, rebuilt from the same
    pairs (in the run's dtype; the file says which); saved after each method, a rerun measures the rest. A choice
    another comparison of the task measured is taken from it (:func:`known_retention`); the unsteered panel is
    answered once per session."""
    from austeer.evaluation.capability import PANEL_TASKS, Panel
    from austeer.evaluation.compare import Comparison, Result, measure_capability

    run = s.run
    path, data = capability_file(run, task_name, s.where)
    comparison = Comparison.from_json(data)
    if all(r.capability for r in comparison.results):
        print(f"capability {task_name}: done ({path})")
        return data
    start = time.perf_counter() - data.get("capability_run", {}).get("seconds", 0)
    others = other_comparisons(path, data, run.panel_protocol)
    for kept, r in zip(data["results"], comparison.results, strict=True):  # measured in another comparison
        r.capability = kept["capability"] = r.capability or known_retention(others, r.method, r.config)
    if all(r.capability for r in comparison.results):
        data["capability_run"] = {**run.panel_protocol, "seconds": round(time.perf_counter() - start, 1)}
        save(path, data)
        print(f"capability {task_name}: done from other comparisons' measurements ({path})")
        return data
    names = tuple(t for t in PANEL_TASKS if t != task_name)  # one panel per session and task set: unsteered once
    if ("panel", names) not in s.memo:
        s.memo[("panel", names)] = Panel(
            s.model, s.tokenizer, names=names, n=run.panel_items, batch_size=run.batch_size, progress=True
        )

    def checkpoint(done: Result) -> None:
        for kept, r in zip(data["results"], comparison.results, strict=True):  # the file otherwise as it was
            kept["capability"] = r.capability
        data["capability_run"] = {**run.panel_protocol, "seconds": round(time.perf_counter() - start, 1)}
        save(path, data)
        print(f"capability {task_name}: {done.method} drop {(done.capability or {})['drop']:+.3f}", flush=True)

    share_prefix = bool(data.get("share_prefix"))
    measure_capability(
        s.model,
        s.tokenizer,
        comparison,
        s.memo[("panel", names)],
        batch_size=run.batch_size,
        share_prefix=share_prefix,
        on_result=checkpoint,
        reader=lambda pairs, sites: s.read(pairs, sites, share_prefix),  # a compare of this run read them already
    )
    return data


def other_comparisons(path: Path, data: dict[str, Any], measured: dict[str, Any]) -> list[tuple[str, Any]]:
    """``(file name, results)`` of every other comparison of the same task whose capability was measured the same
    way (dtype, panel items) on the same pairs (number, and how they were read): the rebuild is deterministic, so
    the panel's answers under the same choice are the same."""
    found = []
    for other in sorted(path.parent.glob(f"compare_{data['task']}*.json")):
        if other == path:
            continue
        theirs = json.loads(other.read_text())
        same = theirs.get("capability_run", {}) | {"seconds": 0} == measured | {"seconds": 0}
        same &= theirs["settings"]["pairs"] == data["settings"]["pairs"]
        same &= bool(theirs.get("share_prefix")) == bool(data.get("share_prefix"))
        if same:
            found.append((other.name, theirs["results"]))
    return found


def known_retention(others: list[tuple[str, Any]], method: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """The capability one of ``others`` (:func:`other_comparisons`) measured for ``method`` at ``config``."""
    for name, results in others:
        for r in results:
            if r["method"] == method and r["config"] == config and r.get("capability"):
                return dict(r["capability"], measured_in=name)
    return None


def dose_stage(s: Session, task_name: str) -> dict[str, Any]:
    """:func:`austeer.evaluation.compare.dose_response` per site, at the run's alpha; saved after every point (a
    rerun measures only the points not yet saved)."""
    from austeer.evaluation.compare import DoseRow, dose_curve, dose_response
    from austeer.methods.base import gather

    run = s.run
    task = get_task(task_name)
    path, data = resume(run, "dose", task_name, s.where)
    data["settings"] = results_file(run, "dose", task_name, s.where)[1]["settings"]  # the doses asked for now

    def left(site: str) -> list[int | None]:
        have = [r for r in (DoseRow(**r) for r in data["rows"]) if r.curve == dose_curve(site, run.method)]
        measured = {None if r.all else r.k for r in have}
        return [d for d in run.doses if d not in measured]

    todo = {site: left(site) for site in run.sites if left(site)}
    if not todo:
        print(f"dose {task_name}: done ({path})")
        return data
    start = time.perf_counter() - data.get("seconds", 0)

    def keep(row: DoseRow) -> None:
        if row.k == 0 and 0 not in todo[row.site]:
            return  # the unsteered point, measured again only because every curve needs it
        data["rows"].append(asdict(row))
        data["seconds"] = round(time.perf_counter() - start, 1)
        save(path, data)
        print(f"dose {task_name} {row.curve} k={row.k}: {row.metric:.3f} (ppl {row.ppl:.2f})", flush=True)

    base = reused_base(s)  # the unsteered point of an earlier run on the same items, or None
    pairs = task_pairs(s, task)
    evidence = gather(s.model, s.tokenizer, pairs, list(todo), batch_size=run.batch_size)
    for site, doses in todo.items():
        dose_response(
            s.model,
            s.tokenizer,
            task,
            evidence,
            [site],
            doses,
            run.alpha,
            limit=run.test_limit,
            batch_size=run.batch_size,
            eval_kw=s.eval_kw(task),
            unsteered=s.unsteered(),
            method=run.method,
            on_row=keep,
            base=base,
        )
    return data


def reused_base(s: Session) -> Any:
    """``base_from``: the unsteered point (k = 0, its per-item outcomes) of an earlier dose run of the same model,
    dtype, pairs and test items (greedy answers: the same), so a run at another alpha does not measure it again."""
    from austeer.evaluation.compare import DoseRow

    run = s.run
    if not run.base_from:
        return None
    earlier = json.loads(Path(run.base_from).read_text())
    settings = earlier["settings"]
    same = (earlier.get("model"), earlier.get("dtype"), settings.get("limit"), settings.get("pairs"))
    if same != (run.model, run.dtype, run.test_limit, run.pairs_limit):
        raise UserError(f"{run.base_from}: another model, dtype, test items or pairs ({same}); cannot reuse its k = 0")
    return DoseRow(**next(r for r in earlier["rows"] if r["k"] == 0))


def frontier_stage(s: Session, task_name: str) -> dict[str, Any]:
    """Each method of the run's strengths at its declared frontier configuration over its strengths, on the first
    ``test_limit`` test items; saved after every method (a rerun skips the methods done)."""
    from austeer.evaluation.compare import frontier
    from austeer.methods import METHODS
    from austeer.methods.base import gather

    run = s.run
    task = get_task(task_name)
    path, data = resume(run, "frontier", task_name, s.where)
    settings = results_file(run, "frontier", task_name, s.where)[1]["settings"]
    strengths = settings["strengths"]
    # same items and pairs: keep the methods measured at the strengths asked for now (a method added runs)
    before = data["settings"].get("strengths", {})
    kept = {"none", "prompt", *(m for m, v in strengths.items() if before.get(m) == v)}
    data["rows"], data["settings"] = [r for r in data["rows"] if r["method"] in kept], settings
    strengths = {m: v for m, v in strengths.items() if m != "prompt"}
    data["configs"] = {m: METHODS[m].frontier.config for m in strengths if METHODS[m].frontier}  # type: ignore[union-attr]
    done = {r["method"] for r in data["rows"]}
    todo = [m for m in strengths if m not in done]
    if not todo and (not run.prompt_point or "prompt" in done):
        print(f"frontier {task_name}: done ({path})")
        return data
    start = time.perf_counter() - data.get("seconds", 0)
    pairs = task_pairs(s, task)
    sites = sorted({site for m in todo for site in METHODS[m].sites})
    evidence = gather(s.model, s.tokenizer, pairs, sites, batch_size=run.batch_size)
    for name in todo:
        rows = frontier(
            s.model,
            s.tokenizer,
            task,
            evidence,
            {name: data["configs"][name]},
            {name: strengths[name]},
            limit=run.test_limit,
            batch_size=run.batch_size,
            eval_kw=s.eval_kw(task),
            unsteered=s.unsteered(),
        )
        new = [asdict(r) for r in rows]
        data["rows"] = [r for r in data["rows"] if r["method"] != "none"] + new  # the unsteered row once
        data["rows"].sort(key=lambda r: r["method"] != "none")
        data["seconds"] = round(time.perf_counter() - start, 1)
        save(path, data)
        best = max((r for r in rows if r.method == name), key=lambda r: r.metric)
        print(f"frontier {task_name}: {name} done, best {best.metric:.3f} at {best.strength:g}", flush=True)
    if run.prompt_point and not any(r["method"] == "prompt" for r in data["rows"]):
        data["rows"] += [asdict(r) for r in prompt_points(s, task)]
        data["seconds"] = round(time.perf_counter() - start, 1)
        save(path, data)
        print(f"frontier {task_name}: prompt done", flush=True)
    return data


def task_pairs(s: Session, task: Any) -> list[Any]:
    """The first ``pairs_limit`` pairs of the task, or of ``pairs_file`` (written pairs instead of the task's)."""
    if not s.run.pairs_file:
        return list(task.pairs(s.model, s.tokenizer, limit=s.run.pairs_limit))
    from austeer.core.pairs import read_pairs

    return read_pairs(s.run.pairs_file)[: s.run.pairs_limit]


def prompt_points(s: Session, task: Any) -> list[Any]:
    """The prompting baseline on the frontier's items: the task's instruction alone and with worked examples
    (``strength`` = the number of examples); it steers nothing."""
    from austeer.evaluation.compare import FrontierRow, evaluate_steered, outcomes, prompted_evidence
    from austeer.methods import METHODS

    run, method = s.run, METHODS["prompt"]
    evidence = prompted_evidence(s.model, s.tokenizer, task, ["prompt"], run.pairs_limit, run.batch_size)
    rows = []
    for config in method.grid:
        samples: list[dict[str, Any]] = []
        m = evaluate_steered(
            s.model,
            s.tokenizer,
            task,
            method.build(s.model, evidence, **config),
            split="test",
            limit=run.test_limit,
            batch_size=run.batch_size,
            samples=samples,
            **s.eval_kw(task),
        )
        rows.append(FrontierRow("prompt", float(config["shots"]), 0, m[task.metric], m, outcomes(samples)))
    return rows


#: every stage by its name, in the order a run of several takes them
STAGES: dict[str, Callable[[Session, str], dict[str, Any]]] = {
    "confirm": confirm,
    "compare": compare_stage,
    "capability": capability_stage,
    "dose": dose_stage,
    "frontier": frontier_stage,
}
