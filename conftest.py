"""Fixtures for the tests and the doctests: the embedded model is loaded once per session.

Doctests that use the names ``model`` and ``tok`` get them from here (the embedded SmolLM2-135M-Instruct,
float32 on the CPU: what ``model, tok = austeer.load_model()`` returns), so the docstring examples do not
load the model again each.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from _pytest.doctest import DoctestItem

from austeer.models.loading import load_model

_USES_MODEL = re.compile(r"\b(model|tok)\b")


@pytest.fixture(scope="session")
def smol() -> tuple[Any, Any]:
    """The real embedded SmolLM2-135M-Instruct (float32, CPU), loaded once per test session."""
    model, tok = load_model()
    return model, tok


@pytest.fixture(autouse=True)
def _doctest_model(request: pytest.FixtureRequest, doctest_namespace: dict[str, Any]) -> None:
    """``model`` and ``tok`` for a doctest that uses them (loaded only when one does)."""
    node = request.node
    if isinstance(node, DoctestItem) and node.dtest is not None:
        if any(_USES_MODEL.search(ex.source) for ex in node.dtest.examples):
            doctest_namespace["model"], doctest_namespace["tok"] = request.getfixturevalue("smol")


@pytest.fixture(autouse=True)
def _temp_files_in_the_test_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every temp file a test or doctest makes (``tempfile``, and ``TMPDIR`` in the processes it starts) lands in
    its own ``tmp_path``, which pytest deletes once the test passed (``tmp_path_retention_policy``): a full run
    writes gigabytes of exported checkpoints and must not leave them behind on the machine that runs it."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
