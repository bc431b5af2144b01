"""Baselines behind one interface shared with AUSteer (METHOD.md section 6).

``METHODS[name]`` is a :class:`~austeer.methods.base.Method`: read the pairs once with
:func:`~austeer.methods.base.gather`, then ``method.build(model, evidence, **config)`` gives a steerer
with ``n_steered``, ``hooks(model)`` and ``fold(model)`` (context managers), and ``system`` (the system
turn it is evaluated with; the prompting baseline's, :mod:`austeer.methods.prompt`).

Example:
    >>> from austeer.methods import METHODS
    >>> sorted(METHODS)  # doctest: +NORMALIZE_WHITESPACE
    ['attribution', 'au-add', 'au-add-attr', 'au-add-diff', 'austeer', 'austeer-ffn', 'austeer-last',
     'austeer-neuron', 'austeer-signed', 'block', 'caa', 'calibration', 'fixed', 'iti', 'prompt', 'prompt+austeer',
     'random', 'sadi']
    >>> len(METHODS["caa"].grid)
    8
    >>> DEFAULT_METHODS
    ('austeer', 'caa', 'iti', 'sadi', 'block', 'random', 'fixed', 'prompt')

Adding a method is one file that declares its ``METHOD`` (:class:`~austeer.methods.base.Method`) and one
line in :data:`METHODS`.
"""

from __future__ import annotations

from austeer.methods import (
    attribution,
    au,
    au_add,
    block,
    caa,
    calibration,
    fixed,
    iti,
    prompt,
    random_units,
    sadi,
)
from austeer.methods.base import AddSteerer, CannotFold, Evidence, Frontier, GainSteerer, Method, Steerer, gather

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        au.METHOD,
        caa.METHOD,
        iti.METHOD,
        sadi.METHOD,
        block.METHOD,
        random_units.METHOD,
        fixed.METHOD,
        calibration.METHOD,
        prompt.METHOD,
        prompt.WITH_AUSTEER,
        au.FFN,
        au.NEURON,
        au.LAST,
        au.SIGNED,
        attribution.METHOD,
        au_add.METHOD,
        au_add.DIFF,
        au_add.ATTR,
    )
}

#: the methods ``austeer compare`` runs when none are named, in registry order
DEFAULT_METHODS: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.default)

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "AddSteerer",
    "CannotFold",
    "Evidence",
    "Frontier",
    "GainSteerer",
    "Method",
    "Steerer",
    "gather",
]
