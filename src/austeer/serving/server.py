"""``austeer serve``: an OpenAI-compatible HTTP server where every request picks its own steering.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both with ``"stream": true`` for
server-sent events), ``GET /v1/models`` (the base model, and one ``BASE:NAME`` id per loaded steer),
``GET /v1/steers`` and ``GET /health``. The extra request field ``steer: {"name": NAME, "alpha": A}``
chooses a loaded spec (and optionally another alpha or k); without it the request is unsteered.

Concurrency: HTTP requests are handled on threads; each prompt becomes a job on one queue. A single
worker thread owns the model: it takes the first waiting job, collects more for ``batch_wait_ms`` (up to
``max_batch`` rows), and runs them all in ONE ``model.generate`` with per-row gains
(:func:`austeer.serving.batched.run_rows`), whatever mix of steers they ask for. Text is streamed back as it
is produced. Static micro-batching: a request that arrives while a batch runs waits for the next one.

Failure isolation: a request's bad parameters are a 4xx for that request alone (checked on admission); a
row whose logits stop being finite fails alone (:func:`austeer.serving.batched.run_rows`); if a whole batch
raises, its rows are rerun one by one so that only the request at fault gets the 500. Connections: a
listen backlog of ``backlog``, a read timeout of ``read_timeout_s`` per connection (a 408 for a body
that does not arrive), and a client that goes away cancels its rows (polled every 0.1 s).

Example (binds a port, so not run by the doctests):
    >>> from austeer.models.loading import load_model
    >>> from austeer.serving.server import Server, ServerConfig
    >>> model, tok = load_model()
    >>> with Server(model, tok, {}, ServerConfig(port=0)) as server:   # doctest: +SKIP
    ...     print(server.url)                                           # http://127.0.0.1:PORT
"""

from __future__ import annotations

import copy
import json
import queue
import re
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from torch import nn

from austeer.core.pairs import format_prompt, has_chat_template
from austeer.core.spec import SpecError, SteerSpec, fingerprint
from austeer.core.steer import spec_gains
from austeer.errors import UserError
from austeer.serving.batched import RowRequest, RowResult, RowSteer, run_rows
from austeer.serving.openai_api import (
    Limits,
    Request,
    RequestError,
    SteerChoice,
    chunk_body,
    completion_body,
    new_id,
    parse_request,
    sse,
)

MAX_BODY = 4 * 1024 * 1024
POLL_S = 0.1  # how often a request thread checks that its client is still there
_LENGTH = re.compile(r"[0-9]{1,12}")


class ListenError(UserError):
    """The server cannot listen on its host and port (in use, not an address of this machine): one line."""


def check_listen(host: str, port: int) -> None:
    """Raise :class:`ListenError` unless a server could listen on ``host:port`` now (a trial bind, closed
    at once; the CLI calls it before loading the model).

    Example:
        >>> check_listen("256.1.1.1", 8000)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        austeer.serving.server.ListenError: cannot listen on 256.1.1.1:8000: ...
    """
    httpd = _bind(host, port, 1)
    httpd.server_close()


def _bind(host: str, port: int, backlog: int) -> _HTTPServer:
    """An HTTP server bound and listening on ``host:port``; any failure is one :class:`ListenError` line."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ListenError(f"cannot listen on {host}:{port}: a port is an integer in 0..65535")
    try:
        httpd = _HTTPServer((host, port), _Handler, bind_and_activate=False)
    except OSError as exc:  # the address family lookup of an unknown host
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    httpd.request_queue_size = backlog  # read by listen() in server_activate
    try:
        httpd.server_bind()
        httpd.server_activate()
    except (OSError, OverflowError) as exc:  # in use, not this machine's address, unknown host
        httpd.server_close()
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ListenError(f"cannot listen on {host}:{port}: {why}") from None
    return httpd


@dataclass(frozen=True)
class ServerConfig:
    """Where to listen and how to batch; the defaults bind to loopback only."""

    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str = "austeer"
    max_batch: int = 8
    batch_wait_ms: float = 10.0
    max_model_len: int | None = None  # default: the model's max_position_embeddings
    request_timeout_s: float = 600.0
    backlog: int = 1024  # connections the kernel queues while none is accepted (capped by net.core.somaxconn)
    read_timeout_s: float = 30.0  # per socket read: a request (head or body) that stalls longer gets a 408
    limits: Limits = field(default_factory=Limits)


def load_steers(model: nn.Module, dirs: Mapping[str, str | Path]) -> dict[str, SteerSpec]:
    """Load ``{name: spec dir}`` and check every spec fits ``model`` (fails at startup, not per request)."""
    from austeer.core.spec import fingerprint, load

    fp = fingerprint(model)
    out = {}
    for name, directory in dirs.items():
        if not name or ":" in name:
            raise UserError(f"steer name {name!r} must be non-empty and contain no ':'")
        spec = load(directory)
        spec.check_fits(fp)
        check_units(model, name, spec)  # servable: every position, gains finite in the model's dtype
        out[name] = spec
    return out


def check_units(model: nn.Module, name: str, spec: SteerSpec) -> None:
    """Raise a one-line ``ValueError`` naming steer ``name`` unless ``spec`` can be served on ``model``: it
    fits (the shared validator, :meth:`~austeer.core.spec.SteerSpec.check_fits`: family, layers, widths, every
    unit in range), steers every position (per-row serving cannot steer the last one only) and its gains
    are finite in the model's dtype (:func:`~austeer.core.steer.spec_gains`, the path every request takes).

    Example:
        >>> from austeer.core.momentum import Unit
        >>> check_units(model, "wide", SteerSpec(units=[Unit("head", 0, 9999, 0.5)], alpha=1.0))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        austeer.errors.UserError: steer 'wide': spec: units[0].index: 9999 is out of range 0..575 for site 'head'
    """
    if spec.positions != "all":
        raise UserError(
            f"steer {name!r}: positions {spec.positions!r} steers the last position of each pass only, which the "
            "server cannot do (it steers every position of each row); refit with --positions all, or steer it "
            "with austeer generate"
        )
    try:
        spec.check_fits(fingerprint(model))
        spec_gains(model, spec)
    except ValueError as exc:
        raise UserError(f"steer {name!r}: {exc}") from None


@dataclass
class Job:
    """One prompt of one HTTP request, waiting for (or in) a batch; events go back on ``events``."""

    row: RowRequest
    index: int
    events: queue.Queue[tuple[str, Any]]
    cancelled: threading.Event = field(default_factory=threading.Event)
    emitted: bool = False  # some text of this row went out already (a rerun would repeat it)


class Engine:
    """The model, the loaded steers, the job queue and the worker thread that batches jobs."""

    def __init__(self, model: nn.Module, tokenizer: Any, steers: dict[str, SteerSpec], config: ServerConfig) -> None:
        for name, spec in steers.items():  # at start-up: a bad spec must not fail every batch it joins
            check_units(model, name, spec)
        self.model, self.tokenizer, self.steers, self.config = model, tokenizer, steers, config
        self.front_tokenizer = copy.deepcopy(tokenizer)  # request threads never share the worker's tokenizer
        self.front_lock = threading.Lock()
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.with_k: dict[tuple[str, int], SteerSpec] = {}
        limit = int(getattr(getattr(model, "config", None), "max_position_embeddings", 0) or 0)
        self.max_model_len = config.max_model_len or limit or 2048
        if config.limits.max_tokens_default >= self.max_model_len:  # every request without max_tokens would fail
            raise UserError(
                f"max_tokens_default {config.limits.max_tokens_default} leaves no room for a prompt in the "
                f"context of {self.max_model_len} tokens (max_model_len)"
            )
        self.batches = 0
        self.batch_sizes: list[int] = []  # rows of the most recent batches (newest last, at most 1000)
        self.model_lock = threading.Lock()  # held by the worker while it generates; hold it to pause the worker
        self.worker = threading.Thread(target=self._loop, name="austeer-batcher", daemon=True)

    def start(self) -> None:
        self.worker.start()

    def close(self) -> None:
        self.jobs.put(None)
        self.worker.join(timeout=60)

    # -- request side

    def resolve(self, choice: SteerChoice | None) -> RowSteer | None:
        if choice is None:
            return None
        spec = self.steers.get(choice.name)
        if spec is None:
            loaded = ", ".join(sorted(self.steers)) or "none"
            raise RequestError(f"unknown steer {choice.name!r}; loaded: {loaded}", 404, "steer.name", "steer_not_found")
        if choice.alpha is not None:  # within --max-alpha, but its gains may still overflow the model's dtype
            try:
                spec_gains(self.model, spec, choice.alpha)
            except SpecError as exc:
                raise RequestError(f"steer {choice.name!r}: {exc}", 400, "steer.alpha") from None
        if choice.k is not None:
            key = (choice.name, choice.k)
            with self.front_lock:
                if key not in self.with_k:
                    if not spec.scores:
                        msg = f"steer {choice.name!r} has no stored scores; k cannot change"
                        raise RequestError(msg, 400, "steer.k")
                    if len(self.with_k) >= 64:
                        self.with_k.clear()
                    reselected = spec.with_k(choice.k)
                    try:
                        check_units(self.model, choice.name, reselected)
                    except ValueError as exc:
                        raise RequestError(f"{exc} (with k={choice.k})", 400, "steer.k") from None
                    self.with_k[key] = reselected
                spec = self.with_k[key]
        return RowSteer(spec, choice.alpha)

    def rows(self, req: Request) -> list[RowRequest]:
        """Format and count the prompts; a prompt that does not fit the context is a 400."""
        steer = self.resolve(req.steer)
        with self.front_lock:
            tok = self.front_tokenizer
            if req.chat:
                if not has_chat_template(tok):
                    raise RequestError("this model has no chat template; use /v1/completions", 400, "messages")
                texts = [str(tok.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True))]
            else:
                texts = req.prompts
            add_special = not has_chat_template(tok)
            lengths = [len(tok(t, add_special_tokens=add_special).input_ids) for t in texts]
        out = []
        for i, (text, n) in enumerate(zip(texts, lengths)):
            if n == 0:
                raise RequestError(f"prompt {i} is empty: nothing to continue", 400, "prompt")
            if n + req.max_tokens > self.max_model_len:
                raise RequestError(
                    f"prompt{'' if len(texts) == 1 else f' {i}'} is too long: {n} tokens + max_tokens "
                    f"{req.max_tokens} > the context of {self.max_model_len} tokens",
                    400,
                    "messages" if req.chat else "prompt",
                    "context_length_exceeded",
                )
            out.append(RowRequest(text, steer, req.max_tokens, req.temperature, req.top_p, req.seed, req.stop))
        return out

    def submit(self, rows: list[RowRequest]) -> tuple[list[Job], queue.Queue[tuple[str, Any]]]:
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        jobs = [Job(row, i, events) for i, row in enumerate(rows)]
        for job in jobs:
            self.jobs.put(job)
        return jobs, events

    # -- worker side

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.config.batch_wait_ms / 1000.0
        while len(batch) < self.config.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = self.jobs.get(timeout=remaining) if remaining > 0 else self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            batch.append(job)
        return [j for j in batch if not j.cancelled.is_set()], stop

    def _loop(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            with self.model_lock:
                batch, stop = self._collect(first)
                if batch:
                    self._run(batch)
            if stop:
                return

    def _run(self, batch: list[Job]) -> None:
        self.batches += 1
        self.batch_sizes = [*self.batch_sizes[-999:], len(batch)]

        def on_delta(r: int, text: str) -> None:
            batch[r].emitted = True
            batch[r].events.put(("delta", (batch[r].index, text)))

        try:
            results: list[RowResult] = run_rows(
                self.model,
                self.tokenizer,
                [j.row for j in batch],
                on_delta=on_delta,
                cancelled=lambda r: batch[r].cancelled.is_set(),
            )
        except Exception as exc:  # the server keeps serving
            if len(batch) > 1 and not any(j.emitted for j in batch):
                for job in batch:  # one by one: only the row at fault fails
                    self._run([job])
                return
            for job in batch:
                job.events.put(("error", (job.index, f"generation failed: {type(exc).__name__}: {exc}")))
            return
        for job, res in zip(batch, results):
            if res.error is not None:
                job.events.put(("error", (job.index, f"generation failed for this request: {res.error}")))
            else:
                job.events.put(("done", (job.index, res)))


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    engine: Engine

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client that went away is no server error
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.engine.config.read_timeout_s)  # every read: head and body
        self.responded = False
        self.next_check = 0.0  # when _next looks at the socket again

    def log_message(self, format: str, *args: Any) -> None:  # quiet; the CLI prints one line per request
        pass

    # -- plumbing

    def _json(self, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8", "backslashreplace")
        self.responded = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if not getattr(self, "body_read", True):  # unread body bytes would be taken for the next request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _error(self, err: RequestError) -> None:
        self._json(err.status, err.body())

    def _body(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError("a JSON body with a Content-Length header is required", 411)
        if not _LENGTH.fullmatch(length.strip()):
            raise RequestError(f"malformed Content-Length header {length!r}: expected a number of bytes", 400)
        n = int(length)
        if n > MAX_BODY:
            raise RequestError(f"request body of {n} bytes exceeds the limit of {MAX_BODY}", 413)
        try:
            raw = self.rfile.read(n)
        except TimeoutError:
            timeout = self.server.engine.config.read_timeout_s
            raise RequestError(f"the request body did not arrive within {timeout:g} s", 408) from None
        if len(raw) < n:
            raise RequestError(f"the request body ended after {len(raw)} of {n} bytes (Content-Length)", 400)
        self.body_read = True
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:  # JSON, UTF-8, integers over 4300 digits, deep nesting
            raise RequestError(f"the request body is not valid JSON: {type(exc).__name__}: {exc}"[:500]) from None

    # -- routes

    def do_GET(self) -> None:
        engine = self.server.engine
        path = self.path.split("?")[0].rstrip("/")
        if path == "/v1/models":
            self._json(200, {"object": "list", "data": models_list(engine)})
        elif path == "/v1/steers":
            self._json(200, {"object": "list", "data": steers_list(engine)})
        elif path == "/health":
            self._json(200, {"status": "ok", "batches": engine.batches, "last_batch_rows": engine.batch_sizes[-1:]})
        else:
            self._error(RequestError(f"no route GET {path}", 404))

    def do_POST(self) -> None:
        self.body_read = False
        try:
            self._post()
        except OSError:  # the client went away, or stopped reading past the timeout: nobody to answer
            self.close_connection = True
        except Exception as exc:  # a bug must still answer the request, not drop the connection
            self.close_connection = True
            if not self.responded:
                self._error(RequestError(f"internal error: {type(exc).__name__}: {exc}", 500))

    def _post(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path not in ("/v1/chat/completions", "/v1/completions"):
            self._error(RequestError(f"no route POST {path}", 404))
            return
        engine = self.server.engine
        try:
            req = parse_request(self._body(), chat=path.endswith("chat/completions"), limits=engine.config.limits)
            req.steer = _steer_from_model(engine, req)
            rows = engine.rows(req)
        except RequestError as err:
            self._error(err)
            return
        jobs, events = engine.submit(rows)
        try:
            if req.stream:
                self._stream(req, jobs, events)
            else:
                self._complete(req, jobs, events)
        finally:
            for job in jobs:  # a vanished client stops its rows at the next step
                job.cancelled.set()

    def _next(self, events: queue.Queue[tuple[str, Any]]) -> tuple[str, Any]:
        """The next event of this request; ``("gone", ...)`` once the client has closed its connection."""
        deadline = time.monotonic() + self.server.engine.config.request_timeout_s
        while True:
            now = time.monotonic()
            if now >= self.next_check:  # also while deltas keep coming: they come faster than POLL_S
                self.next_check = now + POLL_S
                if self._client_gone():
                    return "gone", (0, None)
            try:
                return events.get(timeout=max(0.0, min(POLL_S, deadline - now)))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    return "error", (0, "timed out waiting for the generation")

    def _client_gone(self) -> bool:
        """Whether the client closed its side (EOF or reset); bytes it sent ahead do not count."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _complete(self, req: Request, jobs: list[Job], events: queue.Queue[tuple[str, Any]]) -> None:
        results: dict[int, RowResult] = {}
        while len(results) < len(jobs):
            kind, (index, value) = self._next(events)
            if kind == "gone":
                self.close_connection = True
                return
            if kind == "error":
                self._error(RequestError(value, 500))
                return
            if kind == "done":
                results[index] = value
        ordered = [results[i] for i in range(len(jobs))]
        body = completion_body(
            new_id("chatcmpl" if req.chat else "cmpl"),
            req.model or self.server.engine.config.model_name,
            req.chat,
            [(r.text, r.finish_reason) for r in ordered],
            sum(r.prompt_tokens for r in ordered),
            sum(r.completion_tokens for r in ordered),
        )
        self._json(200, body)

    def _stream(self, req: Request, jobs: list[Job], events: queue.Queue[tuple[str, Any]]) -> None:
        rid, model = new_id("chatcmpl" if req.chat else "cmpl"), req.model or self.server.engine.config.model_name
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.responded = self.close_connection = True
        if req.chat:
            for job in jobs:
                first = chunk_body(rid, model, True, job.index, "", None)
                first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                self.wfile.write(sse(first))
        done = 0
        while done < len(jobs):
            kind, (index, value) = self._next(events)
            if kind == "delta":
                self.wfile.write(sse(chunk_body(rid, model, req.chat, index, value, None)))
            elif kind == "done":
                done += 1
                self.wfile.write(sse(chunk_body(rid, model, req.chat, index, None, value.finish_reason)))
            elif kind == "gone":
                return
            else:
                self.wfile.write(sse(RequestError(value, 500).body()))
                break
            self.wfile.flush()
        self.wfile.write(sse("[DONE]"))
        self.wfile.flush()


def _steer_from_model(engine: Engine, req: Request) -> SteerChoice | None:
    """The ``model`` field may name the base model or ``BASE:NAME``; anything else is a 404."""
    base = engine.config.model_name
    if req.model is None or req.model == base:
        return req.steer
    prefix = base + ":"
    name = req.model[len(prefix) :] if req.model.startswith(prefix) else None
    if name is None or name not in engine.steers:
        known = ", ".join(m["id"] for m in models_list(engine))
        raise RequestError(f"unknown model {req.model!r}; served: {known}", 404, "model", "model_not_found")
    if req.steer is not None and req.steer.name != name:
        raise RequestError(f"model {req.model!r} and steer {req.steer.name!r} disagree", 400, "steer")
    return req.steer or SteerChoice(name)


def steers_list(engine: Engine) -> list[dict[str, Any]]:
    return [
        {"name": name, "k": s.k, "alpha": s.alpha, "sites": s.sites, "n_pairs": s.n_pairs, "model_id": s.model_id}
        for name, s in sorted(engine.steers.items())
    ]


def models_list(engine: Engine) -> list[dict[str, Any]]:
    base = engine.config.model_name
    out: list[dict[str, Any]] = [{"id": base, "object": "model", "created": 0, "owned_by": "austeer"}]
    for s in steers_list(engine):
        out.append({"id": f"{base}:{s['name']}", "object": "model", "created": 0, "owned_by": "austeer", "steer": s})
    return out


class Server:
    """The running server: the engine's worker thread plus the HTTP thread; a context manager.

    ``port=0`` picks a free port (see :attr:`url`). :meth:`close` stops both threads and frees the port.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, steers: dict[str, SteerSpec], config: ServerConfig) -> None:
        self.engine = Engine(model, tokenizer, steers, config)
        self.httpd = _bind(config.host, config.port, config.backlog)
        self.httpd.engine = self.engine
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="austeer-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Server:
        self.engine.start()
        self.thread.start()
        return self

    def close(self) -> None:
        if self.thread.is_alive():  # shutdown() would wait forever for a loop that never ran
            self.httpd.shutdown()
        self.httpd.server_close()
        if self.engine.worker.is_alive():
            self.engine.close()
        self.thread.join(timeout=10)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def serve_forever(self) -> None:
        """Run until interrupted (Ctrl-C or SIGTERM), then shut down cleanly."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _interrupt)
            if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # e.g. started with & from a script
                signal.signal(signal.SIGINT, _interrupt)
        self.start()
        try:
            while self.thread.is_alive():
                self.thread.join(timeout=1.0)
        except KeyboardInterrupt:
            pass
        finally:
            self.close()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def format_chat(tokenizer: Any, prompt: str) -> str:
    """The text the server generates from for one user message (as ``/v1/chat/completions`` does).

    Example:
        >>> format_chat(tok, "Hi").endswith("<|im_start|>assistant\\n")
        True
    """
    return format_prompt(tokenizer, prompt)
