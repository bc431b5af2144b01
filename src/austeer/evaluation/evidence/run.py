"""One evidence run: its settings (:class:`EvidenceRun`), where each stage keeps its results and when an earlier
file is kept (:func:`resume`), and what every stage of one process shares (:class:`Session`).

Example:
    >>> import tempfile
    >>> run = EvidenceRun(model="embedded:smollm2-135m-instruct", dtype="float32", test_limit=4)
    >>> where = Path(tempfile.mkdtemp())
    >>> path, data = resume(run, "dose", "copa", where)
    >>> path.name, data["settings"]["alpha"], data["rows"]
    ('dose_copa.json', 10.0, [])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from austeer.core.spec import atomic_write_text
from austeer.errors import UserError
from austeer.evaluation.search import load_state

#: what must be equal for an earlier run's finished pieces to be kept, read from a results file's own fields
PROTOCOLS: dict[str, tuple[str, ...]] = {
    "confirm": ("site", "k", "alpha", "pairs"),  # its config
    "compare": ("budget", "val_limit", "test_limit"),  # its settings (more methods join the same run)
    "dose": ("limit", "pairs", "alpha", "pairs_file"),  # its settings (more doses add points to the same run)
    "frontier": ("limit", "pairs", "pairs_file"),  # its settings (more methods or strengths join the same run)
}

#: the settings only some stages read: one set away from its default with none of them in the run is refused
#: (a flag silently ignored would measure something else than asked)
READ_BY: dict[str, tuple[str, ...]] = {
    "site": ("confirm",),
    "k": ("confirm",),
    "spec": ("confirm",),
    "note": ("confirm",),
    "fresh_from": ("confirm",),
    "alpha": ("confirm", "dose"),
    "methods": ("compare",),
    "budget": ("compare",),
    "share_prefix": ("compare",),
    "val_limit": ("compare",),
    "sites": ("dose",),
    "method": ("dose",),
    "doses": ("dose",),
    "base_from": ("dose",),
    "strengths": ("frontier",),
    "prompt_point": ("frontier",),
    "panel_items": ("capability",),
}

DEFAULT_STRENGTHS = {"austeer": [5.0, 10.0, 20.0, 50.0], "caa": [0.5, 1.0, 2.0, 4.0], "iti": [2.0, 5.0, 10.0, 20.0]}


@dataclass(frozen=True)
class EvidenceRun:
    """Every setting of an evidence run (``scripts/evidence.py``'s flags, one field each)."""

    model: str = "embedded:qwen2.5-coder-1.5b-instruct"
    dtype: str = "bfloat16"
    #: confirm: the configuration fixed in advance (site, k, alpha; ``pairs_limit`` pairs), or its ``spec``
    site: str = "head"
    k: int = 32
    alpha: float = 10.0  # confirm's gain; dose: the alpha of every point
    spec: str | None = None
    note: str = ""  # confirm: where the fixed configuration came from
    fresh_from: int = 200  # confirm: the first test item the earlier exploratory run never saw
    #: compare
    methods: tuple[str, ...] = ("austeer", "caa", "iti", "sadi", "block", "random", "fixed")
    budget: int = 4
    share_prefix: bool = False
    #: dose: one curve per site; ``None`` in ``doses`` is every AU of the site
    sites: tuple[str, ...] = ("head", "ffn", "neuron")
    method: str = "austeer"
    doses: tuple[int | None, ...] = (0, 2, 8, 32, 100, 1000, None)
    base_from: str | None = None  # an earlier dose file whose unsteered point is reused
    #: frontier: method -> strengths, each at the method's declared frontier configuration
    strengths: dict[str, list[float]] = field(default_factory=lambda: dict(DEFAULT_STRENGTHS))
    prompt_point: bool = False
    pairs_file: str | None = None
    #: capability: validation items of each panel task
    panel_items: int = 50
    #: every stage
    pairs_limit: int = 300
    val_limit: int = 100
    test_limit: int | None = None
    batch_size: int = 16
    max_new_tokens: int | None = None
    label: str = ""  # compare, capability, dose, frontier: a suffix of the results file (another protocol)
    force: bool = False  # start a results file of another run over

    @property
    def panel_protocol(self) -> dict[str, Any]:
        """How the capability stage measures (a comparison's ``capability_run`` without its seconds)."""
        return {"dtype": self.dtype, "items_per_task": self.panel_items}

    @property
    def doses_text(self) -> str:
        """The doses as the results files write them (``0,2,all``)."""
        return ",".join("all" if d is None else str(d) for d in self.doses)


def save(path: Path, data: dict[str, Any]) -> None:
    """Write a results file atomically (indented JSON)."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def results_file(run: EvidenceRun, stage: str, task_name: str, where: Path) -> tuple[Path, dict[str, Any]]:
    """Where ``stage`` keeps its results for ``task_name``, and what a new file starts as."""
    label = "" if stage == "confirm" else run.label
    fresh: dict[str, Any] = {"task": task_name, "model": run.model, "dtype": run.dtype}
    if stage == "confirm":
        config = {"site": run.site, "k": run.k, "alpha": run.alpha, "pairs": run.pairs_limit}
        fresh.update(config=config, fresh_from=run.fresh_from, note=run.note)
    elif stage == "compare":
        fresh.update(settings={"budget": run.budget, "val_limit": run.val_limit, "test_limit": run.test_limit})
        fresh["results"] = []
    else:  # dose, frontier: steered from the task's pairs or, where given, the pairs file
        settings: dict[str, Any] = {"limit": run.test_limit, "pairs": run.pairs_limit}
        if stage == "dose":
            settings.update(alpha=run.alpha, doses=run.doses_text)
        else:
            settings["strengths"] = run.strengths
        fresh.update(settings={**settings, **({"pairs_file": run.pairs_file} if run.pairs_file else {})}, rows=[])
    return where / f"{stage}_{task_name}{label}.json", fresh


def resume(run: EvidenceRun, stage: str, task_name: str, where: Path) -> tuple[Path, dict[str, Any]]:
    """``stage``'s results file for ``task_name`` and its content: an earlier run's when it has the same task,
    model, dtype and protocol (:data:`PROTOCOLS`), else a new one; another run's file is one line naming the
    difference (:class:`~austeer.errors.UserError`), or with ``force`` started over (the one resume scheme:
    :func:`austeer.evaluation.search.load_state`)."""
    path, fresh = results_file(run, stage, task_name, where)
    keys = PROTOCOLS[stage]

    def protocol(state: dict[str, Any]) -> dict[str, Any]:
        held = state["config"] if stage == "confirm" else state["settings"]
        return {k: held.get(k) for k in keys}

    def derive(state: dict[str, Any]) -> None:
        state["protocol"] = protocol(state)

    identity = ("task", "model", "dtype", "protocol")
    rows = {"confirm": None, "compare": "results"}.get(stage, "rows")
    fresh["protocol"] = protocol(fresh)
    data = load_state(path, f"evidence.py {stage}", fresh, identity, migrate=derive, rows=rows, replace=run.force)
    data.pop("protocol")
    return path, data


def capability_file(run: EvidenceRun, task_name: str, where: Path) -> tuple[Path, dict[str, Any]]:
    """The committed ``compare_<task><label>.json`` the capability stage measures under, and its content; one
    whose capability was measured another way (dtype, panel items; the seconds spent so far aside) or a missing
    one is :class:`~austeer.errors.UserError`."""
    path = where / f"compare_{task_name}{run.label}.json"
    if not path.is_file():
        raise UserError(f"{path}: no such comparison to measure capability under (run the compare stage first)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = None
    shaped = isinstance(data, dict) and isinstance(data.get("results"), list) and "settings" in data
    held = data.get("capability_run", run.panel_protocol) if shaped else None
    if not isinstance(held, dict):
        raise UserError(f"{path}: not a comparison austeer wrote (a JSON object with its settings and results)")
    held = {k: v for k, v in held.items() if k != "seconds"}
    if held != run.panel_protocol:
        raise UserError(f"{path}: its capability was measured as {held}, not {run.panel_protocol}")
    return path, data


def check(run: EvidenceRun, stages: Sequence[str], tasks: Sequence[str], where: Path) -> None:
    """What can be checked before the model loads, each one :class:`~austeer.errors.UserError` now, not after an
    hour of loading and reading pairs: the tasks, methods and sites named, and every results file the stages would
    resume (another run's is refused)."""
    from austeer.core.sites import check_site
    from austeer.evaluation.compare import sites_for
    from austeer.methods import METHODS
    from austeer.tasks import get_task

    for name in tasks:
        get_task(name)
    ignoring = [s for s in stages if s not in ("frontier", "dose")]
    if run.pairs_file and ignoring:
        raise UserError(f"--pairs-file steers the frontier and dose stages only, not {', '.join(ignoring)}")
    default = EvidenceRun()
    for name, readers in READ_BY.items():
        if getattr(run, name) != getattr(default, name) and not set(readers) & set(stages):
            flag = "--" + name.replace("_", "-")
            which = f"{' and '.join(readers)} stage{'s' if len(readers) > 1 else ''}"
            raise UserError(f"{flag} is read by the {which} only, and this run has none of them")
    if "compare" in stages:
        sites_for(run.methods)
    if "frontier" in stages:
        sites_for([m for m in run.strengths if m != "prompt"])
        undeclared = [m for m in run.strengths if m != "prompt" and METHODS[m].frontier is None]
        if undeclared:
            raise UserError(f"no frontier configuration is declared for {', '.join(undeclared)}")
        shots = max(int(c.get("shots", 0)) for c in METHODS["prompt"].grid)
        if run.prompt_point and run.pairs_limit < shots:
            raise UserError(
                f"--prompt-point shows {shots} worked examples from the pairs; --pairs-limit is {run.pairs_limit}"
            )
    if "dose" in stages:
        sites_for([run.method])
        for site in run.sites:
            check_site(site)
    for stage in (s for s in stages if s in PROTOCOLS):
        for name in tasks:
            resume(run, stage, name, where)
    compared_first = "capability" in stages and "compare" in stages[: list(stages).index("capability")]
    for name in tasks if "capability" in stages else ():
        if not (compared_first and not (where / f"compare_{name}{run.label}.json").exists()):  # compare writes it
            capability_file(run, name, where)


@dataclass
class Session:
    """What the stages of one process share: the run, the model, where results go, and what is measured once
    per process (the unsteered evaluations, the unsteered reference model of behaviour tasks, the capability
    panels)."""

    run: EvidenceRun
    model: nn.Module
    tokenizer: Any
    where: Path
    memo: dict[Any, Any] = field(default_factory=dict)

    def unsteered(self) -> Any:
        """One memo of unsteered evaluations (and their hidden states) for every stage."""
        from austeer.evaluation.evaluate import Unsteered

        if "unsteered" not in self.memo:
            self.memo["unsteered"] = Unsteered(self.model, self.tokenizer, progress=True)
        return self.memo["unsteered"]

    def eval_kw(self, task: Any) -> dict[str, Any]:
        """``max_new_tokens``; behaviour tasks: continuation perplexity under an unsteered copy of the model
        (loaded once)."""
        kw: dict[str, Any] = {"max_new_tokens": self.run.max_new_tokens} if self.run.max_new_tokens else {}
        if task.kind != "behaviour":
            return kw
        if "ref" not in self.memo:
            from austeer.models.loading import load_model

            self.memo["ref"] = load_model(self.run.model, dtype=self.run.dtype)[0]
        return {**kw, "ref_model": self.memo["ref"]}

    def read(self, pairs: Sequence[Any], sites: Sequence[str], share_prefix: bool) -> Any:
        """``pairs`` read at ``sites`` (:func:`~austeer.methods.base.gather`), once per process: a later stage on
        the same pairs (capability after compare) takes them from the memo where they hold its sites."""
        from austeer.core.pairs import pairs_sha256
        from austeer.methods.base import gather

        key = ("evidence", pairs_sha256(pairs), share_prefix)
        held = self.memo.get(key)
        if held is None or not set(sites) <= set(held.pos):
            read = sorted(set(sites) | set(held.pos if held is not None else ()))
            self.memo[key] = gather(
                self.model, self.tokenizer, list(pairs), read, self.run.batch_size, share_prefix=share_prefix
            )
        return self.memo[key]
