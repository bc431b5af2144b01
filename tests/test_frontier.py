"""The effect/damage frontier on the real embedded model: every point keeps its per-item outcomes, so the table
shows the paired test of each point against the unsteered model."""

from __future__ import annotations

import pytest

from austeer.evaluation.compare import frontier
from austeer.methods import gather
from austeer.report.comparison import frontier_table
from austeer.stats import discordant
from austeer.tasks import get_task


@pytest.mark.slow
def test_frontier_points_keep_their_outcomes(smol, sentiment_pairs):
    model, tok = smol
    task = get_task("sentiment")
    evidence = gather(model, tok, sentiment_pairs[:8], ["residual"], progress=False)
    rows = frontier(
        model,
        tok,
        task,
        evidence,
        {"caa": {"layer": 0.33}},
        {"caa": [4.0, 16.0]},
        limit=6,
        progress=False,
        eval_kw={"max_new_tokens": 8},
    )
    assert [r.method for r in rows] == ["none", "caa", "caa"]
    for r in rows:
        assert len(r.correct) == 6 and sum(r.correct) / 6 == r.metric
    table = frontier_table(rows, task.metric)
    assert "fixed / broken (McNemar p)" in table.splitlines()[0]
    fixed, broken = discordant(rows[0].correct, rows[2].correct)
    assert f"| caa | 16 | {rows[2].metric:.3f}" in table and f" {fixed} / {broken} (p = " in table.splitlines()[-1]
