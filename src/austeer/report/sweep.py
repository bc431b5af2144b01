"""Read a sweep result (``DIR/sweep.json``) for the report, with errors naming file and field.

Format (written by ``austeer sweep``)::

    {"task": ..., "model": ..., "metric": "<primary metric name>", "baseline": {...},
     "rows": [{"site", "k", "alpha", "n_steered", "metric", "ppl_delta", "metrics": {...}}, ...],
     "best": {"site", "k", "alpha"}, "test": {...}}

Only ``rows`` (with ``site``, ``k``, ``alpha``, ``metric``) is required.

Example:
    >>> import json, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "sweep.json").write_text(json.dumps({"metric": "accuracy", "baseline": {"accuracy": 0.5},
    ...     "rows": [{"site": "head", "k": 8, "alpha": 5, "metric": 0.6}]}))
    >>> s = read_sweep(d)
    >>> s.metric, s.baseline_value, s.rows[0]["k"]
    ('accuracy', 0.5, 8)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from austeer.errors import UserError


@dataclass
class Sweep:
    """The parts of a sweep the report shows."""

    path: Path
    metric: str
    rows: list[dict[str, Any]]
    task: str = ""
    model: str = ""
    baseline: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)

    @property
    def baseline_value(self) -> float | None:
        """The unsteered value of the primary metric, when the sweep recorded it."""
        b = self.baseline
        for key in (self.metric, "metric"):
            if isinstance(b.get(key), int | float):
                return float(b[key])
        metrics = b.get("metrics")
        if isinstance(metrics, dict) and isinstance(metrics.get(self.metric), int | float):
            return float(metrics[self.metric])
        return None


def read_sweep(path: str | Path) -> Sweep:
    """Load ``path`` (a sweep directory or its ``sweep.json``) and check the fields the plots need."""
    path = Path(path)
    file = path if path.suffix == ".json" and not path.is_dir() else path / "sweep.json"
    if not file.exists():
        raise FileNotFoundError(f"{file} does not exist: expected a sweep directory holding sweep.json")
    try:
        obj = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{file}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("rows"), list):
        raise UserError(f"{file}: expected an object with a list field 'rows'")
    rows = []
    for i, r in enumerate(obj["rows"]):
        if not isinstance(r, dict):
            raise UserError(f"{file}: rows[{i}] must be an object")
        for key, kind in (("site", str), ("k", int), ("alpha", int | float)):
            if not isinstance(r.get(key), kind) or isinstance(r.get(key), bool):
                raise UserError(f"{file}: rows[{i}].{key} missing or not a {getattr(kind, '__name__', 'number')}")
        if r.get("metric") is not None and not isinstance(r["metric"], int | float):
            raise UserError(f"{file}: rows[{i}].metric must be a number or null, got {r['metric']!r}")
        rows.append(r)
    if not rows:
        raise UserError(f"{file}: 'rows' is empty")

    def section(key: str) -> dict[str, Any]:
        value = obj.get(key) or {}
        if not isinstance(value, dict):
            raise UserError(f"{file}: field {key!r} must be an object")
        return value

    return Sweep(
        path=file,
        metric=str(obj.get("metric", "metric")),
        rows=rows,
        task=str(obj.get("task", "")),
        model=str(obj.get("model", "")),
        baseline=section("baseline"),
        best=section("best"),
        test=section("test"),
    )
