"""Answer-bias calibration (multiple-choice tasks): a constant offset on one option's logit, no steering.

The options are the distinct first tokens of the pairs' answers (``Yes``/``No``, ``A``/``B``, ...). The
offset is added to the logit of the first option (in token-id order) at every position; with two options
that is any relative shift between them. It touches no activation (``n_steered = 0``) and folds exactly
into a bias on the LM head. It shows how much of a steering gain on a choice task is a bias shift.

Example:
    >>> options_of([(10, 20), (20, 10), (10, 20)])
    [10, 20]
"""

from __future__ import annotations

import torch
from torch import nn

from austeer.errors import UserError
from austeer.methods.base import AddSteerer, Evidence, Method


def options_of(answer_tokens: list[tuple[int, int]], most: int = 8) -> list[int]:
    """The distinct answer first tokens, sorted; an error when the answers are not a small option set."""
    opts = sorted({t for pair in answer_tokens for t in pair if t >= 0})
    if not 2 <= len(opts) <= most:
        raise UserError(
            f"calibration needs a multiple-choice task whose answers start with 2..{most} distinct tokens; "
            f"these pairs have {len(opts)}"
        )
    return opts


def build(model: nn.Module, evidence: Evidence, offset: float = 0.0) -> AddSteerer:
    """A logit offset ``offset`` on the first option's token."""
    opts = options_of(evidence.answer_tokens)
    vocab = int(model.get_output_embeddings().weight.shape[0])  # type: ignore[operator]
    v = torch.zeros(vocab)
    v[opts[0]] = float(offset)
    return AddSteerer("calibration", "logits", {0: v}, {"offset": offset, "token": opts[0], "options": opts})


GRID = tuple({"offset": o} for o in (-4.0, -2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 4.0))

METHOD = Method(
    "calibration",
    ("residual",),
    GRID,
    build,
    "as a bias on the LM head",
    adds_at="logits",
    strength="offset",
    kind="mc",
)
