from __future__ import annotations

from pathlib import Path

import pytest

from austeer.models import load_model
from austeer.pairs import Pair, read_pairs

DATA = Path(__file__).resolve().parents[1] / "src" / "austeer" / "data"


@pytest.fixture(scope="session")
def smol():
    """The real embedded SmolLM2-135M-Instruct (float32, CPU), loaded once per test session."""
    model, tok = load_model()
    return model, tok


@pytest.fixture(scope="session")
def sentiment_pairs() -> list[Pair]:
    return read_pairs(DATA / "pairs" / "sentiment.jsonl")
