"""Fixtures for the tests and the doctests: the embedded model is loaded once per session.

Doctests that use the names ``model`` and ``tok`` get them from here (the embedded SmolLM2-135M-Instruct,
float32 on the CPU: what ``model, tok = austeer.load_model()`` returns), so the docstring examples do not
load the model again each.
"""

from __future__ import annotations

import re
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
