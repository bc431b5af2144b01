"""Held-out evidence on a model that can do the tasks: the stages behind ``docs/results/`` (``scripts/evidence.py``
is their command line; :mod:`austeer.report.evidence` reads and renders what they write).

Each stage is resumable: results go to ``<where>/<stage>_<task>[<label>].json`` as soon as they exist, finished
pieces are skipped on a rerun of the same run; a file of another run (task, model, dtype, or protocol:
:data:`~austeer.evaluation.evidence.run.PROTOCOLS`) is one :class:`~austeer.errors.UserError` before the model
loads (:func:`~austeer.evaluation.evidence.run.check`), ``force`` starts it over.

- ``confirm``: a **confirmatory** test of one configuration fixed in advance (default: head, k=32, alpha=10 on
  300 pairs). The unsteered and the steered model answer every test item; the file keeps each item's outcome so
  the paired test (McNemar) can be read on the items an earlier exploratory run never saw.
- ``compare``: :func:`austeer.evaluation.compare.compare` with every method on the same evidence (paired outcomes
  per item).
- ``capability``: the capability panel (:mod:`austeer.evaluation.capability`) under every method's choice of a
  committed ``compare`` file, added to it; a choice another comparison of the task measured (same configuration,
  pairs, dtype and panel) is taken from it (``measured_in``), and the unsteered panel is answered once per session.
- ``frontier`` (behaviour tasks): effect against perplexity and continuation perplexity of each method at a fixed
  configuration over a strength grid, on the first ``test_limit`` test items, saved after each method;
  ``prompt_point`` adds the prompting baseline (instruction alone, and with worked examples) on the same items.
- ``dose``: the dose-response (test metric and perplexity against the number of top AUs steered at ``alpha``)
  for every site of ``sites`` on every test item (or ``test_limit``), saved after each point.

Behaviour tasks judge continuation perplexity under a second, unsteered copy of the model.

Example (the SmolLM2 model of the tests; two test items, so only a check that it runs):
    >>> import tempfile
    >>> from austeer.evaluation.evidence import EvidenceRun, run_stages
    >>> run = EvidenceRun(model="embedded:smollm2-135m-instruct", dtype="float32", sites=("head",), doses=(0, 2),
    ...                   pairs_limit=8, test_limit=2)
    >>> where = Path(tempfile.mkdtemp())
    >>> out = run_stages(run, ["dose"], ["copa"], where, model, tok)  # doctest: +ELLIPSIS
    dose copa ... k=0: ...
    dose copa ... k=2: ...
    >>> [r["k"] for r in out[("dose", "copa")]["rows"]]
    [0, 2]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from austeer.errors import UserError
from austeer.evaluation.evidence.run import PROTOCOLS, EvidenceRun, Session, check, resume
from austeer.evaluation.evidence.stages import STAGES

__all__ = ["PROTOCOLS", "STAGES", "EvidenceRun", "Session", "check", "check_stages", "resume", "run_stages"]


def run_stages(
    run: EvidenceRun,
    stages: Sequence[str],
    tasks: Sequence[str],
    where: Path,
    model: nn.Module | Callable[[], tuple[nn.Module, Any]],
    tokenizer: Any = None,
    on_done: Callable[[str, str, dict[str, Any]], None] | None = None,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Each stage for each task, in that order, in one :class:`Session` (``on_done(stage, task, results)`` after each);
    the stages and every results file are checked first (:func:`check`). ``model`` is the model (with
    ``tokenizer``), or a function that loads both, called once every check passed (the command line: bad input
    is one line before an hour of loading). Returns each ``(stage, task)``'s results."""
    check_stages(stages)
    check(run, stages, tasks, where)
    if not isinstance(model, nn.Module):
        model, tokenizer = model()
    where.mkdir(parents=True, exist_ok=True)
    session = Session(run, model, tokenizer, where)
    out = {}
    for stage in stages:
        for name in tasks:
            out[(stage, name)] = STAGES[stage](session, name)
            if on_done is not None:
                on_done(stage, name, out[(stage, name)])
    return out


def check_stages(stages: Sequence[str]) -> None:
    """One :class:`~austeer.errors.UserError` naming the stages that do not exist."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UserError(f"unknown stages {unknown}; expected some of {sorted(STAGES)}")
