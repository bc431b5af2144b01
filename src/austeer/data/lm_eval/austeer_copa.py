"""Dataset loader of the lm-evaluation-harness task ``austeer_copa`` (``custom_dataset`` in the YAML).

lm-eval resolves ``data_files`` against the working directory, not the YAML's folder; this loader reads
the JSONL beside it, so ``--include_path`` works from anywhere. ``data`` (from lm-eval's ``--metadata``)
names another file of the same format, e.g. one written by ``scripts/lm_eval_task.py --model ...``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "austeer_copa_test.jsonl"


def load(data: str | None = None, **_: Any) -> dict[str, Any]:
    """``{"test": datasets.Dataset}`` of the rows of ``data`` (default: the shipped SmolLM2 file)."""
    import datasets  # lm-eval's dependency; imported here so austeer never needs it

    path = Path(data) if data else DATA
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {"test": datasets.Dataset.from_list(rows)}
