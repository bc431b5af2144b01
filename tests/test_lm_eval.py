"""lm-evaluation-harness on exported checkpoints agrees with ``austeer eval`` (docs/SERVING.md, section 4).

``lm_eval`` comes with the dev extra (it keeps torch as it is), so this runs in CI. The local task ``austeer_copa``
(src/austeer/data/lm_eval/) holds austeer's COPA test items with the chat-formatted prompt; lm-eval's
``multiple_choice`` scores the log-likelihood of each letter after it. The embedded model is exported twice: at
alpha 0 (gains exactly 1: the unsteered weights) and steered. For the first ``N`` items, per item, lm-eval's choice
equals austeer's restricted choice (``choice_accuracy``) and lm-eval's log-likelihood difference of ``A`` and ``B``
equals austeer's logit difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lm_eval  # the dev extra installs it
import pytest
import torch

import austeer
from austeer.core.pairs import format_prompt
from austeer.core.spec import SteerSpec
from austeer.evaluation.evaluate import evaluate
from austeer.run.generate import steered
from austeer.run.likelihood import next_token_logits
from austeer.tasks import get_task

TASK_DIR = Path(austeer.__file__).resolve().parent / "data" / "lm_eval"
N = 20
ALPHA = 40.0  # strong enough to change answers with this small spec (16 pairs, k = 16)


def _lm_eval(model_dir: Path) -> dict[str, Any]:
    """lm-eval's ``hf`` model on ``model_dir``: the accuracy and the samples of the first ``N`` items."""
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},dtype=float32",
        tasks=["austeer_copa"],
        task_manager=TaskManager(include_path=str(TASK_DIR)),
        limit=N,
        batch_size=1,
        device="cpu",
        log_samples=True,
    )
    assert out is not None
    return {"acc": out["results"]["austeer_copa"]["acc,none"], "samples": out["samples"]["austeer_copa"]}


def _austeer(model: Any, tok: Any, spec: SteerSpec | None, alpha: float) -> dict[str, Any]:
    """``austeer eval --task copa --split test --limit N [--steer]`` (fold mode), plus the A-B logit margins."""
    task = get_task("copa")
    items = task.items("test", N)
    samples: list[dict[str, Any]] = []
    with steered(model, spec, "fold", alpha):
        metrics = evaluate(model, tok, task, "test", N, samples=samples)
        logits = next_token_logits(model, tok, [format_prompt(tok, it.prompt) for it in items])
    a, b = (tok(c, add_special_tokens=False).input_ids[0] for c in ("A", "B"))
    margins = {it.id: float(row[a] - row[b]) for it, row in zip(items, logits)}
    return {"metrics": metrics, "choice": {s["id"]: s["choice"] for s in samples}, "margin": margins}


@pytest.fixture(scope="module")
def runs(smol: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    model, tok = smol
    spec = austeer.fit(model, tok, get_task("copa").pairs(limit=16), site="head", k=16, alpha=ALPHA, progress=False)
    root = tmp_path_factory.mktemp("lm_eval")
    out: dict[str, dict[str, Any]] = {}
    for name, alpha in (("unsteered", 0.0), ("steered", ALPHA)):
        path = austeer.export(model, tok, spec, root / name, alpha=alpha)
        ours = _austeer(model, tok, spec if alpha else None, alpha)  # unsteered: plain austeer eval
        out[name] = {"lm_eval": _lm_eval(path), "austeer": ours}
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unsteered", "steered"])
def test_lm_eval_equals_austeer_eval(runs: dict[str, dict[str, Any]], name: str) -> None:
    ours, theirs = runs[name]["austeer"], runs[name]["lm_eval"]
    items = {it.id: it for it in get_task("copa").items("test", N)}
    assert len(theirs["samples"]) == N
    for s in theirs["samples"]:
        doc = s["doc"]
        it = items[doc["id"]]  # the same items, in the same order
        # the same prompt: lm-eval's context is austeer's formatted prompt, the continuations the letters
        assert [tuple(a) for a in s["arguments"]] == [(doc["text"], "A"), (doc["text"], "B")]
        assert doc["label"] == it.label
        (ll_a, _), (ll_b, _) = s["resps"][0][0], s["resps"][1][0]
        # lm-eval scores "\nA" vs "\nB" (it moves the prompt's trailing newline into the continuation);
        # the newline's log-probability is common to both, so the difference is austeer's logit margin
        torch.testing.assert_close(ll_a - ll_b, ours["margin"][it.id], rtol=0, atol=2e-4)
        assert ("A" if ll_a > ll_b else "B") == ours["choice"][it.id], it.id
    assert theirs["acc"] == pytest.approx(ours["metrics"]["choice_accuracy"], abs=1e-12)


@pytest.mark.slow
def test_steering_changes_the_answers(runs: dict[str, dict[str, Any]]) -> None:
    plain, steer = runs["unsteered"], runs["steered"]
    assert plain["austeer"]["choice"] != steer["austeer"]["choice"]
    lm_plain = [s["acc"] for s in plain["lm_eval"]["samples"]]
    lm_steer = [s["acc"] for s in steer["lm_eval"]["samples"]]
    assert lm_plain != lm_steer or plain["lm_eval"]["acc"] != steer["lm_eval"]["acc"]
