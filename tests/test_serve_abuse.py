"""Issue 12 items 8 and 9: one request cannot hurt another, and the server survives abuse.

Every test drives the real embedded model over real loopback sockets and stays bounded (small
``max_tokens``, client-side timeouts), so a regression fails instead of hanging.
"""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

import austeer.models.loading
from austeer.cli import main
from austeer.core.momentum import Unit
from austeer.core.spec import SteerSpec, fingerprint
from austeer.serving.openai_api import Limits
from austeer.serving.server import Server, ServerConfig

COUNTING = "1, 2, 3, 4, 5, 6,"  # greedy SmolLM2 counts on for hundreds of tokens: no early end of turn
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(smol) -> Iterator[Server]:
    model, tok = smol
    srv = Server(model, tok, {}, ServerConfig(port=0, max_batch=8, batch_wait_ms=20, max_model_len=400))
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


def _post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=120)


def _raw(server: Server, data: bytes, timeout: float = 20.0) -> bytes:
    """Send raw bytes on a new connection; everything the server answers until it closes or goes quiet."""
    host, port = server.httpd.server_address[:2]
    with socket.create_connection((str(host), port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and _complete(out):
                    break
        except TimeoutError:
            pass
    return out


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _post_bytes(path: str, body: bytes, length: str | None = None) -> bytes:
    n = str(len(body)) if length is None else length
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n\r\n"
    return head.encode("latin-1") + body


def _hold_batch(server: Server, send: list[threading.Thread], queued: int) -> None:
    """Start ``send`` while the worker is paused, so that their rows all land in one batch."""
    with server.engine.model_lock:
        for t in send:
            t.start()
        deadline = time.monotonic() + 60
        while server.engine.jobs.qsize() < queued and time.monotonic() < deadline:
            time.sleep(0.02)
    for t in send:
        t.join(timeout=120)


# ------------------------------------------------------------------ item 8: per-request failure isolation


@pytest.mark.slow
def test_tiny_temperature_is_greedy_and_fails_no_other_request(server):
    lone = _post(server.url, "/v1/chat/completions", {"messages": QUESTION, "max_tokens": 8})
    assert lone.status_code == 200
    want = lone.json()["choices"][0]["message"]["content"]
    bodies = [
        {"messages": QUESTION, "max_tokens": 8},
        {"messages": QUESTION, "max_tokens": 8, "temperature": 1e-45},
        {"messages": QUESTION, "max_tokens": 8, "temperature": 1e-6, "top_p": 1e-300},
    ]
    got: dict[int, httpx.Response] = {}
    send = [
        threading.Thread(target=lambda i=i, b=b: got.__setitem__(i, _post(server.url, "/v1/chat/completions", b)))
        for i, b in enumerate(bodies)
    ]
    _hold_batch(server, send, len(bodies) - 1)
    assert server.engine.batch_sizes[-1] == len(bodies)
    for i in range(len(bodies)):
        assert got[i].status_code == 200, got[i].text
        assert got[i].json()["choices"][0]["message"]["content"] == want  # below the floor: greedy


@pytest.mark.parametrize(
    "unit,needle",
    [
        (Unit("head", 3, 576, 0.5), r"steer 'broken'.*units\[1\]\.index: 576 is out of range"),
        (Unit("ffn", 30, 0, 0.5), r"steer 'broken'.*units\[1\]\.layer: 30 is out of range"),
    ],
)
def test_out_of_range_spec_fails_at_startup(smol, unit, needle):
    """A spec that is valid on its own but does not fit the served model is refused when the server starts."""
    model, tok = smol
    spec = SteerSpec(units=[Unit("head", 0, 1, 0.5), unit], alpha=2.0)  # built outside: only the server may refuse
    with pytest.raises(ValueError, match=needle):
        Server(model, tok, {"broken": spec}, ServerConfig(port=0)).httpd.server_close()


@pytest.fixture()
def poison(smol) -> Iterator[str]:
    """Make the logits of any row whose prompt is the returned marker NaN, in whatever batch it lands."""
    model, tok = smol
    marker = "Please poison this row."
    marker_ids = tok(marker).input_ids
    rows: set[int] = set()

    def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        ids = args[0]
        if ids.shape[1] > 1:  # prefill: find the rows that end with the marker
            rows.clear()
            rows.update(r for r in range(ids.shape[0]) if ids[r, -len(marker_ids) :].tolist() == marker_ids)
        out = output.clone()
        for r in rows:
            out[r] = float("nan")
        return out

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield marker
    finally:
        handle.remove()


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_non_finite_row_fails_only_its_request(server, poison, temperature):
    prompts = ["The capital of France is", poison, "My favourite colour is"]
    lone = [_post(server.url, "/v1/completions", {"prompt": p, "max_tokens": 6}) for p in (prompts[0], prompts[2])]
    got: dict[int, httpx.Response] = {}
    send = [
        threading.Thread(
            target=lambda i=i, p=p: got.__setitem__(
                i, _post(server.url, "/v1/completions", {"prompt": p, "max_tokens": 6, "temperature": temperature})
            )
        )
        for i, p in enumerate(prompts)
    ]
    _hold_batch(server, send, len(prompts) - 1)
    assert server.engine.batch_sizes[-1] == 3
    assert got[1].status_code == 500 and "non-finite" in got[1].json()["error"]["message"]
    if temperature == 0.0:  # sampled rows draw other tokens; only greedy ones can be compared
        assert [got[0].json()["choices"][0]["text"], got[2].json()["choices"][0]["text"]] == [
            r.json()["choices"][0]["text"] for r in lone
        ]
    else:
        assert got[0].status_code == 200 and got[2].status_code == 200


# ------------------------------------------------------------------ item 9: connections


@pytest.mark.slow
def test_backlog_holds_a_burst_of_connections(smol):
    """While nothing accepts, the kernel must queue the whole burst instead of dropping (or resetting) it."""
    model, tok = smol
    srv = Server(model, tok, {}, ServerConfig(port=0))  # listening, but not accepting yet
    host, port = srv.httpd.server_address[:2]
    socks = []
    try:
        for _ in range(64):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((str(host), port))
            socks.append(s)
        time.sleep(1.5)
        established = sum(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 and _connected(s) for s in socks)
        assert established == len(socks)
        srv.start()
        for s in socks:
            s.setblocking(True)
            s.settimeout(30)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answers = [s.recv(4096) for s in socks]
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
    finally:
        for s in socks:
            s.close()
        if srv.thread.is_alive():
            srv.close()
        else:
            srv.httpd.server_close()


def _connected(s: socket.socket) -> bool:
    try:
        s.getpeername()
        return True
    except OSError:
        return False


def test_disconnected_request_is_cancelled(server, smol):
    model, _ = smol
    steps = []
    handle = model.get_input_embeddings().register_forward_hook(lambda *a: steps.append(1))
    try:
        body = json.dumps({"prompt": COUNTING, "max_tokens": 300}).encode()
        host, port = server.httpd.server_address[:2]
        before = server.engine.batches
        s = socket.create_connection((str(host), port), timeout=10)
        s.sendall(_post_bytes("/v1/completions", body))
        deadline = time.monotonic() + 60
        while server.engine.batches == before and time.monotonic() < deadline:
            time.sleep(0.01)
        s.close()  # the client gives up on a non-streamed request
        t0 = time.monotonic()
        r = _post(server.url, "/v1/completions", {"prompt": "Hello", "max_tokens": 2})
        waited = time.monotonic() - t0
    finally:
        handle.remove()
    assert r.status_code == 200
    assert len(steps) < 60, f"the abandoned row ran {len(steps)} steps of 300 (the next request waited {waited:.1f}s)"


def test_slow_body_is_timed_out(smol):
    model, tok = smol
    with Server(model, tok, {}, ServerConfig(port=0, read_timeout_s=1.0)) as srv:
        threads = threading.active_count()
        t0 = time.monotonic()
        answer = _raw(srv, _post_bytes("/v1/completions", b'{"prompt": ', length="100"), timeout=15)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert 0.9 < time.monotonic() - t0 < 10
        deadline = time.monotonic() + 5
        while threading.active_count() > threads and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threading.active_count() <= threads  # the connection's thread is gone


C, CHAT = "/v1/completions", "/v1/chat/completions"
MALFORMED = [
    ("surrogate in chat", _post_bytes(CHAT, b'{"messages": [{"role": "user", "content": "a\\ud800"}]}'), "surrogate"),
    ("surrogate in a prompt", _post_bytes(C, b'{"prompt": ["ok", "\\udfff"]}'), "prompt[1]"),
    ("surrogate in the model", _post_bytes(C, b'{"prompt": "hi", "model": "\\ud83d"}'), "model"),
    ("surrogate in a stop", _post_bytes(C, b'{"prompt": "hi", "stop": ["\\ud800"]}'), "stop"),
    ("invalid UTF-8", _post_bytes(C, b'{"prompt": "\xff\xfe"}'), "not valid JSON"),
    ("superscript length", _post_bytes(C, b'{"prompt": "hi"}', length="\u00b2"), "Content-Length"),
    ("negative length", _post_bytes(C, b'{"prompt": "hi"}', length="-3"), "Content-Length"),
    ("length with a sign", _post_bytes(C, b'{"prompt": "hi"}', length="+16"), "Content-Length"),
    ("huge integer", _post_bytes(C, b'{"prompt": "hi", "max_tokens": ' + b"9" * 5000 + b"}"), "not valid JSON"),
    ("deep nesting", _post_bytes(C, b"[" * 100_000 + b"]" * 100_000), "not valid JSON"),
    ("NaN temperature", _post_bytes(C, b'{"prompt": "hi", "temperature": NaN}'), "temperature"),
    ("infinite top_p", _post_bytes(C, b'{"prompt": "hi", "top_p": -Infinity}'), "top_p"),
    ("infinite max_tokens", _post_bytes(C, b'{"prompt": "hi", "max_tokens": 1e999}'), "max_tokens"),
]  # fmt: skip


@pytest.mark.parametrize("name,data,needle", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_request_gets_a_400(server, name, data, needle):
    answer = _raw(server, data)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), (name, answer[:300])
    assert needle in json.loads(body)["error"]["message"], body
    assert _post(server.url, "/v1/completions", {"prompt": "Hello", "max_tokens": 1}).status_code == 200


# ------------------------------------------------------------------ the abuse test


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


VALID = [
    ("/v1/chat/completions", {"messages": QUESTION, "max_tokens": 6}),
    ("/v1/completions", {"prompt": "The food at this restaurant was", "max_tokens": 5}),
    ("/v1/completions", {"prompt": ["Once upon a time", COUNTING], "max_tokens": 4, "temperature": 1e-30}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 5}),
]
INVALID: list[bytes] = [
    _post_bytes("/v1/completions", b"{not json"),
    _post_bytes("/v1/completions", b'{"prompt": "\\ud800 lone"}'),
    _post_bytes("/v1/completions", b'{"prompt": "hi"}', length="\u00b9\u00b2"),
    _post_bytes("/v1/completions", b'{"prompt": "hi", "temperature": 3}'),
    _post_bytes("/v1/chat/completions", b'{"messages": []}'),
    _post_bytes("/v1/completions", b'{"prompt": "' + b"word " * 400 + b'"}'),
]


def _text(body: dict[str, Any]) -> list[str]:
    return [c["message"]["content"] if "message" in c else c["text"] for c in body["choices"]]


@pytest.mark.slow
def test_abuse_mixed_clients_answers_stay_exact_and_memory_flat(server):
    """Concurrent clients mix valid, invalid and abandoned requests; valid answers equal lone ones, RSS is flat."""
    want = [_text(_post(server.url, path, body).json()) for path, body in VALID]  # each alone: the reference
    host, port = server.httpd.server_address[:2]
    failures: list[str] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for step in range(4):
            kind = rng.choice(["valid", "valid", "invalid", "disconnect", "stream-disconnect"])
            try:
                if kind == "valid":
                    i = rng.randrange(len(VALID))
                    r = _post(server.url, *VALID[i])
                    if r.status_code != 200 or _text(r.json()) != want[i]:
                        failures.append(f"{seed}/{step}: {VALID[i]} -> {r.status_code} {r.text[:200]}")
                elif kind == "invalid":
                    answer = _raw(server, rng.choice(INVALID))
                    if not answer.startswith(b"HTTP/1.1 4"):
                        failures.append(f"{seed}/{step}: invalid request answered {answer[:100]!r}")
                else:
                    body = {"prompt": COUNTING, "max_tokens": 200, "stream": kind == "stream-disconnect"}
                    with socket.create_connection((str(host), port), timeout=10) as s:
                        s.sendall(_post_bytes("/v1/completions", json.dumps(body).encode()))
                        time.sleep(rng.uniform(0.0, 0.3))
            except Exception as exc:  # noqa: BLE001 - every failure is reported, none hides another
                failures.append(f"{seed}/{step}: {kind}: {type(exc).__name__}: {exc}")

    def round_(r: int) -> None:
        clients = [threading.Thread(target=client, args=(100 * r + c,), daemon=True) for c in range(5)]
        for t in clients:
            t.start()
        deadline = time.monotonic() + 90  # a round takes about 10 s on a loaded 2-core machine
        for t in clients:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in clients), f"round {r} did not finish within 90 s"

    threads = threading.active_count()
    round_(0)  # warm-up: the allocator and the thread pool reach their working size
    rss = [_rss_mib()]
    for r in range(1, 4):
        round_(r)
        rss.append(_rss_mib())
    assert not failures, "\n".join(failures)
    deadline = time.monotonic() + 30
    while threading.active_count() > threads and time.monotonic() < deadline:  # abandoned rows finish
        time.sleep(0.1)
    assert threading.active_count() <= threads
    growth = rss[-1] - rss[0]
    print(f"RSS MiB after each round: {[round(x, 1) for x in rss]}; growth {growth:.1f} MiB")
    assert growth < 48, f"RSS grew {growth:.1f} MiB over 3 rounds of abuse: {rss}"  # tolerance: 48 MiB


# ------------------------------------------------------------------ numbers and start-up (reliability issue, item 8)


def test_huge_integer_alpha_is_a_400_not_a_500(server):
    for body, param in (
        ({"prompt": "hi", "max_tokens": 1, "steer": {"name": "x", "alpha": 10**400}}, "steer.alpha"),
        ({"prompt": "hi", "max_tokens": 1, "temperature": -(10**400)}, "temperature"),
        ({"prompt": "hi", "max_tokens": 1, "top_p": 10**400}, "top_p"),
    ):
        r = _post(server.url, "/v1/completions", body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == param and "...(401 digits)" in error["message"], error


@pytest.mark.slow
def test_tiny_top_p_samples_the_most_likely_token(server):
    """top_p 1e-300 is 0 in float32: the nucleus must still hold the most likely token (it was a 500)."""
    greedy = _post(server.url, "/v1/chat/completions", {"messages": QUESTION, "max_tokens": 8})
    for top_p in (1e-300, 5e-324, 1e-30):
        body = {"messages": QUESTION, "max_tokens": 8, "temperature": 0.8, "top_p": top_p, "seed": 3}
        r = _post(server.url, "/v1/chat/completions", body)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == greedy.json()["choices"][0]["message"]["content"]


def test_alpha_whose_gains_overflow_the_model_is_a_400(smol):
    model, tok = smol
    spec = SteerSpec(units=[Unit("head", 3, 7, 1.0)], alpha=2.0, fingerprint=fingerprint(model))
    config = ServerConfig(port=0, max_model_len=400, limits=Limits(max_alpha=1e300))  # the operator lifted it
    with Server(model, tok, {"pos": spec}, config) as srv:
        r = _post(
            srv.url, "/v1/completions", {"prompt": "hi", "max_tokens": 2, "steer": {"name": "pos", "alpha": 1e39}}
        )
        assert r.status_code == 400, r.text
        assert "not finite in float32" in r.json()["error"]["message"] and r.json()["error"]["param"] == "steer.alpha"
        ok = _post(srv.url, "/v1/completions", {"prompt": "hi", "max_tokens": 2, "steer": {"name": "pos", "alpha": 3}})
        assert ok.status_code == 200, ok.text


def test_last_position_spec_is_refused_at_startup(smol, tmp_path, capsys):
    model, tok = smol
    spec = SteerSpec(units=[Unit("head", 3, 7, 1.0)], alpha=2.0, fingerprint=fingerprint(model), positions="last")
    with pytest.raises(ValueError, match=r"steer 'last': positions 'last' steers the last position .* refit with"):
        Server(model, tok, {"last": spec}, ServerConfig(port=0)).close()
    spec.save(tmp_path / "last")
    assert main(["serve", "--port", "0", "--steer", f"last={tmp_path / 'last'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("austeer: error: steer 'last': positions 'last'"), err


def test_limits_that_remove_a_limit_or_fail_every_request_are_refused(smol):
    model, tok = smol
    for kwargs, needle in (
        ({"max_alpha": float("nan")}, "max_alpha must be a finite number >= 0"),
        ({"max_tokens_default": 0}, "max_tokens_default must be an integer in [1, max_tokens_limit = 1024]"),
        ({"max_tokens_default": 2000}, "max_tokens_default must be an integer in [1, max_tokens_limit = 1024]"),
    ):
        with pytest.raises(ValueError, match=re.escape(needle)):
            Limits(**kwargs)
    with pytest.raises(ValueError, match="max_tokens_default 128 leaves no room for a prompt in the context of 100"):
        Server(model, tok, {}, ServerConfig(port=0, max_model_len=100)).close()


@pytest.fixture()
def no_model_load(monkeypatch):
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(austeer.models.loading, "load_model", refuse)


def test_bad_serve_options_are_one_line_before_the_model_loads(capsys, no_model_load):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    cases = [
        (["--port", str(port)], f"austeer: error: cannot listen on 127.0.0.1:{port}: Address already in use"),
        (["--host", "256.1.1.1"], "austeer: error: cannot listen on 256.1.1.1:8000: "),
        (["--port", "99999"], "austeer: error: argument --port: expected an integer >= 0 and <= 65535, got '99999'"),
        (["--max-alpha", "nan"], "austeer: error: argument --max-alpha: expected a finite number >= 0, got 'nan'"),
        (["--max-tokens-default", "0"], "austeer: error: argument --max-tokens-default: expected an integer >= 1"),
        (["--max-tokens-default", "300", "--max-tokens-limit", "200"], "austeer: error: --max-tokens-default 300 is"),
        (["--max-tokens-default", "300", "--max-model-len", "300"], "austeer: error: --max-tokens-default 300 leaves"),
    ]
    try:
        for extra, needle in cases:
            try:
                code = main(["serve", *extra])
            except SystemExit as exc:
                code = exc.code
            err = capsys.readouterr().err
            assert code == 2 and err.count("\n") == 1 and err.startswith(needle), (extra, err)
    finally:
        busy.close()
