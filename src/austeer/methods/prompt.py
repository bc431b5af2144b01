"""The prompting baseline: ask for the behaviour in words and steer nothing; and AUSteer on top of it.

AxBench (Wu et al. 2025) found that prompting beats every steering method it tried, so a steering
comparison has to include a prompt. A prompt is not a hook: a steerer carries it as ``system`` (the
system turn, or the start of the user turn where the chat template has none) and the comparison
evaluates every prompt with it (:func:`austeer.evaluation.evaluate.evaluate`'s ``system``).

- ``prompt``: the task's :attr:`~austeer.tasks.base.Task.instruction`; its grid is {the instruction alone,
  the instruction and :data:`SHOTS` worked examples}. The examples are the first pairs' prompts with their
  positive answers, and pairs come from the task's pair split, never from val or test. It steers nothing
  (``n_steered = 0``; ``hooks`` and ``fold`` leave the model as it is), so its neutral-text perplexity is
  the unsteered model's.
- ``prompt+austeer``: AUSteer with AUSteer's grid, fitted on the pairs read with the instruction in their
  system turn and evaluated with the instruction: whether the two add up.

Both are ``prompted`` methods: :func:`austeer.evaluation.compare.compare` builds them from evidence gathered on the
prompted pairs (:attr:`~austeer.methods.base.Evidence.system` holds the instruction).

Example:
    >>> print(with_examples("Answer with A or B.", [("Is 2 > 1?\\nA. yes\\nB. no", "A")]))
    Answer with A or B.
    <BLANKLINE>
    Example 1:
    Is 2 > 1?
    A. yes
    B. no
    Answer: A
    >>> s = PromptSteerer("prompt", {"shots": 0}, "Be kind.")
    >>> s.n_steered, s.system
    (0, 'Be kind.')
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from torch import nn

from austeer.errors import UserError
from austeer.methods import au
from austeer.methods.base import Evidence, GainSteerer, Method

#: worked examples of the few-shot variant
SHOTS = 3


@dataclass
class PromptSteerer:
    """A system prompt and nothing else: ``hooks`` and ``fold`` change nothing in the model."""

    name: str
    config: dict[str, Any]
    system: str | None
    n_steered: int = 0

    def hooks(self, model: nn.Module) -> Any:
        return nullcontext()

    def fold(self, model: nn.Module) -> Any:
        return nullcontext()


def with_examples(instruction: str, examples: Sequence[tuple[str, str]]) -> str:
    """``instruction`` followed by numbered worked examples ``(prompt, answer)``."""
    blocks = [f"Example {i}:\n{prompt}\nAnswer: {answer}" for i, (prompt, answer) in enumerate(examples, start=1)]
    return "\n\n".join([instruction, *blocks])


def instruction_of(evidence: Evidence) -> str:
    """The instruction the pairs were read with (an error when there is none)."""
    if not evidence.system:
        raise UserError(
            "a prompted method needs evidence gathered on pairs whose system turn holds the task's instruction "
            "(austeer.evaluation.compare.compare does this for every prompted method)"
        )
    return evidence.system


def build(model: nn.Module, evidence: Evidence, shots: int = 0) -> PromptSteerer:
    """The instruction, followed by the first ``shots`` pairs as worked examples (prompt and positive answer)."""
    instruction = instruction_of(evidence)
    if shots > len(evidence.prompts):
        raise UserError(f"{shots} examples asked for, but the evidence holds only {len(evidence.prompts)} pairs")
    examples = [(p, pos) for p, (pos, _) in zip(evidence.prompts[:shots], evidence.answers)]
    return PromptSteerer("prompt", {"shots": shots}, with_examples(instruction, examples))


def build_with_austeer(
    model: nn.Module, evidence: Evidence, site: str = "head", k: int = 32, alpha: float = 5.0
) -> GainSteerer:
    """AUSteer (:func:`austeer.methods.au.build`) on prompted evidence, evaluated with the same instruction."""
    steerer = au.build(model, evidence, site, k, alpha)
    return GainSteerer("prompt+austeer", steerer.gains, steerer.config, system=instruction_of(evidence))


METHOD = Method(
    "prompt",
    (),
    ({"shots": 0}, {"shots": SHOTS}),
    build,
    "nothing to fold: a prompt, the weights are unchanged",
    prompted=True,
    default=True,
)

WITH_AUSTEER = Method(
    "prompt+austeer",
    au.METHOD.sites,
    au.GRID,
    build_with_austeer,
    "exact: AUSteer's gains folded, the instruction stays in the prompt",
    prompted=True,
    strength="alpha",
)
