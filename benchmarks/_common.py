"""Shared helpers of the benchmark scripts: real pairs, interleaved timing, medians, machine line, tables.

Benchmarks are scripts, not tests. Each repetition runs every contender once, in a rotated order
(A B C, B C A, C A B, ...), so a change of machine load hits all of them alike; figures are the median
over repetitions with the min-max spread, and ratios are medians of the per-repetition ratios (paired).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent / "src" / "austeer" / "data"


def quiet() -> None:
    """No download / weight-loading progress bars in benchmark output."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging

        logging.disable_progress_bar()
        logging.set_verbosity_error()
    except ImportError:
        pass


def set_threads(n: int | None) -> None:
    """``torch.set_num_threads(n)`` when given (default: torch's own choice, one per core)."""
    if n:
        import torch

        torch.set_num_threads(n)


def machine() -> dict[str, Any]:
    """CPU model, cores, torch / transformers versions, threads and the current load average."""
    import torch
    import transformers

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


def print_machine() -> dict[str, Any]:
    quiet()
    info = machine()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    return info


def copa_pairs(n: int) -> list[Any]:
    """``n`` real COPA pairs (balanced-COPA dev): premise + question + options; correct vs wrong letter.

    Repeats the 1000 items cyclically when ``n`` is larger (used by the memory benchmark).
    """
    from austeer.core.pairs import Pair

    rows = [json.loads(line) for line in (DATA / "COPA" / "derived_balanced_copa_dev.jsonl").open() if line.strip()]
    out = []
    for i in range(n):
        r = rows[i % len(rows)]
        question = "What was the cause?" if r["question"] == "cause" else "What happened as a result?"
        prompt = (
            f"Premise: {r['premise']}\n{question}\nA. {r['choice1']}\nB. {r['choice2']}\n"
            "Answer with the letter of the correct option."
        )
        good, bad = ("A", "B") if r["label"] == 0 else ("B", "A")
        out.append(Pair(prompt, good, bad))
    return out


def copa_items(n: int, split: str = "derived_superglue_val.jsonl") -> list[tuple[str, int]]:
    """``(prompt, gold option index)`` for restricted-choice evaluation (options A/B)."""
    rows = [json.loads(line) for line in (DATA / "COPA" / split).open() if line.strip()][:n]
    items = []
    for r in rows:
        question = "What was the cause?" if r["question"] == "cause" else "What happened as a result?"
        prompt = (
            f"Premise: {r['premise']}\n{question}\nA. {r['choice1']}\nB. {r['choice2']}\n"
            "Answer with the letter of the correct option."
        )
        items.append((prompt, int(r["label"])))
    return items


def interleaved(
    contenders: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: bool | dict[str, Callable[[], Any]] = True,
    cpu: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Wall seconds per call of each contender, ``repeats`` times, in rotated order.

    ``warmup``: True runs each contender once untimed first; a dict gives cheaper warm-up calls instead.
    ``cpu``: when a dict, receives the process CPU seconds (user + system, all threads) of each call:
    on a machine shared with other jobs this is the figure that load does not inflate (with one thread).
    """
    names = list(contenders)
    if warmup:
        for fn in (warmup if isinstance(warmup, dict) else contenders).values():
            fn()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            c0, t0 = time.process_time(), time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t0)
            if cpu is not None:
                cpu.setdefault(name, []).append(time.process_time() - c0)
        print(f"  rep {r + 1}/{repeats}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names), flush=True)
    return times


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def spread(xs: Sequence[float], fmt: str = "{:.3f}") -> str:
    """``median [min-max]``."""
    return f"{fmt.format(med(xs))} [{fmt.format(min(xs))}-{fmt.format(max(xs))}]"


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """Per-repetition ratios ``num[i] / den[i]`` (both measured in the same repetition)."""
    return [a / b for a, b in zip(num, den, strict=True)]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def dump(path: str | None, payload: dict[str, Any]) -> None:
    """Write the raw figures as JSON when ``--json PATH`` was given."""
    if path:
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"raw figures written to {path}")
