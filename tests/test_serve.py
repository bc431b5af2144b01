"""The OpenAI-compatible server, driven over real HTTP (httpx) on 127.0.0.1 with the real model."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from austeer.run.generate import generate, steered
from austeer.serving.server import Server, ServerConfig, load_steers

BASE = "smol"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def spec_dirs(sentiment_fit, tmp_path_factory):
    root = tmp_path_factory.mktemp("steers")
    pos, neg = sentiment_fit("head", 32, 5.0), sentiment_fit("head", 16, -6.0)
    return {"pos": pos.save(root / "pos"), "neg": neg.save(root / "neg")}


@pytest.fixture(scope="module")
def server(smol, spec_dirs):
    model, tok = smol
    config = ServerConfig(port=0, model_name=BASE, max_batch=8, batch_wait_ms=20, max_model_len=200)
    srv = Server(model, tok, load_steers(model, spec_dirs), config)
    srv.start()
    try:
        yield srv
    finally:
        srv.close()
        assert not srv.thread.is_alive() and not srv.engine.worker.is_alive()
        host, port = srv.httpd.server_address[:2]
        with pytest.raises(OSError):
            socket.create_connection((str(host), port), timeout=2).close()


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=300) as c:
        yield c


def test_models_and_steers(client):
    models = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in models] == [BASE, f"{BASE}:neg", f"{BASE}:pos"]
    steers = {s["name"]: s for s in client.get("/v1/steers").json()["data"]}
    assert steers["pos"]["k"] == 32 and steers["neg"]["alpha"] == -6.0


def _one_by_one(model, tok, prompt, steer, chat, n):
    spec, alpha = None, None
    if steer is not None:
        from austeer.core.spec import load

        spec, alpha = load(steer["dir"]), steer.get("alpha")
    with steered(model, spec, "hook", alpha):
        return generate(model, tok, [prompt], max_new_tokens=n, chat=chat)[0]


@pytest.mark.slow
def test_mixed_concurrent_requests_batch_and_match_one_by_one(smol, server, spec_dirs):
    model, tok = smol
    cases = [
        ("chat", "How was your holiday?", None),
        ("chat", "How was your holiday?", {"name": "pos"}),
        ("chat", "Describe the weather today.", {"name": "neg"}),
        ("completion", "The food at this restaurant was", {"name": "pos", "alpha": 9.0}),
        ("completion", "The food at this restaurant was", None),
        ("chat", "Tell me about your new phone.", {"name": "pos", "alpha": -3.0}),
    ]
    results: dict[int, httpx.Response] = {}

    def send(i: int, kind: str, prompt: str, steer: dict | None) -> None:
        body: dict = {"model": BASE, "max_tokens": 16}
        if steer is not None:
            body["steer"] = steer
        if kind == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
            results[i] = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=300)
        else:
            body["prompt"] = prompt
            results[i] = httpx.post(f"{server.url}/v1/completions", json=body, timeout=300)

    # hold the worker so that all requests are queued, then let it run them as one batch
    with server.engine.model_lock:
        threads = [threading.Thread(target=send, args=(i, *c)) for i, c in enumerate(cases)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while server.engine.jobs.qsize() < len(cases) - 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    for t in threads:
        t.join()
    assert server.engine.batch_sizes[-1] == len(cases)
    for i, (kind, prompt, steer) in enumerate(cases):
        r = results[i]
        assert r.status_code == 200, r.text
        body = r.json()
        text = body["choices"][0]["message"]["content"] if kind == "chat" else body["choices"][0]["text"]
        ref_steer = None if steer is None else {"dir": spec_dirs[steer["name"]], "alpha": steer.get("alpha")}
        assert text == _one_by_one(model, tok, prompt, ref_steer, kind == "chat", 16), (i, steer)
        assert body["usage"]["completion_tokens"] <= 16
    texts = [results[i].json()["choices"][0]["message"]["content"] for i in (0, 1)]
    assert texts[0] != texts[1]  # the steer changed the answer to the same prompt


@pytest.mark.slow
def test_streaming_equals_non_streaming(client):
    body = {
        "model": f"{BASE}:pos",  # the steer chosen by model id
        "messages": [{"role": "user", "content": "Write a short review of a movie."}],
        "max_tokens": 20,
    }
    whole = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    pieces, reasons, done = [], [], False
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            choice = json.loads(line[6:])["choices"][0]
            pieces.append(choice["delta"].get("content", ""))
            reasons.append(choice["finish_reason"])
    assert done and "".join(pieces) == whole and reasons[-1] in ("stop", "length")
    assert len([p for p in pieces if p]) > 1  # really streamed in several events

    comp = {"prompt": ["Once upon a time", "My favourite colour is"], "max_tokens": 8, "stream": True}
    texts: dict[int, str] = {0: "", 1: ""}
    with client.stream("POST", "/v1/completions", json=comp) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                c = json.loads(line[6:])["choices"][0]
                texts[c["index"]] += c["text"]
    whole2 = client.post("/v1/completions", json={**comp, "stream": False}).json()["choices"]
    assert [whole2[0]["text"], whole2[1]["text"]] == [texts[0], texts[1]]


@pytest.mark.parametrize(
    "path,body,status,needle",
    [
        ("/v1/chat/completions", {"messages": HI, "steer": {"name": "nope"}}, 404, "unknown steer"),
        ("/v1/chat/completions", {"messages": HI, "steer": {"name": "pos", "alpha": 1e6}}, 400, "out of range"),
        ("/v1/chat/completions", {"messages": HI, "steer": {"name": "pos", "beta": 1}}, 400, "unknown field"),
        ("/v1/completions", {"prompt": "word " * 300}, 400, "too long"),
        ("/v1/completions", {"prompt": 5}, 400, "'prompt' must be"),
        ("/v1/completions", {"prompt": ["ok", ""]}, 400, "prompt 1 is empty"),
        ("/v1/completions", {"prompt": "hi", "model": "gpt-4"}, 404, "unknown model"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
        ("/v1/chat/completions", {"messages": []}, 400, "messages"),
        ("/v1/nothing", {}, 404, "no route"),
    ],
)
def test_errors_are_4xx_json_and_server_keeps_serving(client, path, body, status, needle):
    r = client.post(path, json=body)
    assert r.status_code == status
    assert needle in r.json()["error"]["message"]
    ok = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 2})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2


def test_malformed_json(client):
    r = client.post("/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


@pytest.mark.slow
def test_cli_serve_starts_lists_and_stops(spec_dirs):
    cmd = [sys.executable, "-m", "austeer", "serve", "--port", "0", "--steer", f"pos={spec_dirs['pos']}"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("listening on "):
                url = line.split()[2]
                break
        assert url is not None and url.startswith("http://127.0.0.1:")
        names = [s["name"] for s in httpx.get(f"{url}/steers", timeout=60).json()["data"]]
        assert names == ["pos"]
        r = httpx.post(f"{url}/completions", json={"prompt": "Hi", "max_tokens": 3, "steer": "pos"}, timeout=120)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    finally:
        proc.send_signal(signal.SIGTERM)  # the server shuts down cleanly
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


@pytest.mark.slow
def test_openai_client(server, client):
    import openai  # the dev extra installs it: this test runs in CI

    oa = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "How was your weekend?"}]
    steer = {"name": "pos", "alpha": 8.0}
    r = oa.chat.completions.create(model=BASE, messages=messages, max_tokens=12, extra_body={"steer": steer})
    direct = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 12, "steer": steer}).json()
    assert r.choices[0].message.content == direct["choices"][0]["message"]["content"]
    stream = oa.chat.completions.create(model=f"{BASE}:neg", messages=messages, max_tokens=12, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    plain = oa.chat.completions.create(model=f"{BASE}:neg", messages=messages, max_tokens=12)
    assert streamed == plain.choices[0].message.content
    with pytest.raises(openai.NotFoundError, match="unknown steer"):
        oa.chat.completions.create(model=BASE, messages=messages, max_tokens=2, extra_body={"steer": "nope"})
