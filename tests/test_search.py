"""compare, sweep and tune choose by one rule over one row interface (:mod:`austeer.evaluation.search`): the same
measurements give the same choice in all three, and the damage bound excludes the same rows."""

from __future__ import annotations

from austeer.evaluation.compare import Trial, pick
from austeer.evaluation.search import ranked
from austeer.evaluation.sweep import SweepRow, best_row
from austeer.evaluation.tune import TuneRow, choose

# (score on val, damage, steered activations, strength): three tie on the score; two of those on the damage too
MEASURED = [(0.6, 1.2, 8, 5.0), (0.6, 1.1, 32, 1.0), (0.6, 1.1, 8, 2.0), (0.5, 1.0, 2, 1.0), (0.6, 1.1, 8, 3.0)]


def as_trials() -> list[Trial]:
    return [Trial({"i": i}, size, score, damage) for i, (score, damage, size, _) in enumerate(MEASURED)]


def as_sweep_rows() -> list[SweepRow]:
    return [
        SweepRow("head", i, strength, size, score, damage) for i, (score, damage, size, strength) in enumerate(MEASURED)
    ]


def as_tune_rows() -> list[TuneRow]:
    return [
        TuneRow("austeer", "head", i, strength, -1, size, score, 0.01, 10.0, 0.9, score, 0.0, damage)
        for i, (score, damage, size, strength) in enumerate(MEASURED)
    ]


def test_compare_sweep_and_tune_choose_the_same_configuration_from_the_same_measurements():
    # best score; ties: less damage, then fewer activations; then the weaker strength (2.0 before 3.0)
    assert best_row(as_sweep_rows()).k == 2
    assert choose(as_tune_rows(), max_damage=10.0, min_z=2.0).k == 2
    assert pick(as_trials(), None) == 2  # compare's methods share no strength scale: the grid order decides
    assert [r.k for r in ranked(as_sweep_rows())] == [2, 4, 1, 0, 3]


def test_the_damage_bound_excludes_the_same_rows_in_every_search():
    assert [r.k for r in ranked(as_sweep_rows(), max_damage=1.1)] == [2, 4, 1, 3]
    assert choose(as_tune_rows(), max_damage=1.05, min_z=2.0).k == 3
    assert pick(as_trials(), 1.05) == 3
    assert pick(as_trials(), 0.5) == 3  # none within the bound: compare keeps the least damage alone
    assert choose(as_tune_rows(), max_damage=0.5, min_z=2.0) is None  # tune chooses nothing
