"""The OpenAI-compatible request and response shapes of ``austeer serve``, validated without a model.

A request body is checked field by field; anything wrong raises :class:`RequestError` with the HTTP
status, a message that says what was expected and what was found, and the offending parameter. The one
extra field is ``steer``: ``{"name": NAME, "alpha": A, "k": K}`` (``alpha`` and ``k`` optional), or the
string ``NAME``. A model id ``BASE:NAME`` (as listed by ``/v1/models``) means the same steer.

Example:
    >>> from austeer.serving.openai_api import Limits, parse_request
    >>> req = parse_request({"model": "m", "prompt": "Hi", "max_tokens": 5, "steer": {"name": "pos", "alpha": 3}},
    ...                     chat=False, limits=Limits())
    >>> req.prompts, req.max_tokens, req.steer
    (['Hi'], 5, SteerChoice(name='pos', alpha=3.0, k=None))
    >>> parse_request({"prompt": "Hi", "temperature": -1}, chat=False, limits=Limits())
    Traceback (most recent call last):
    ...
    austeer.serving.openai_api.RequestError: 'temperature' must be a number in [0, 2], got -1
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from austeer.errors import UserError


class RequestError(UserError):
    """A bad request: HTTP ``status``, a message and the parameter at fault (OpenAI error shape)."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What the server accepts: token budgets, alpha range, batch of prompts per request.

    Checked when built (a ``ValueError``): a limit that would fail every request, or remove a limit
    (``max_alpha=nan``), is refused at start-up.

    Example:
        >>> Limits(max_tokens_default=0)
        Traceback (most recent call last):
        ...
        austeer.errors.UserError: max_tokens_default must be an integer in [1, max_tokens_limit = 1024], got 0
    """

    max_tokens_default: int = 128
    max_tokens_limit: int = 1024
    max_alpha: float = 100.0
    max_k: int = 1000
    max_prompts: int = 16

    def __post_init__(self) -> None:
        for name in ("max_tokens_limit", "max_k", "max_prompts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be an integer >= 1, got {value!r}")
        default = self.max_tokens_default
        if isinstance(default, bool) or not isinstance(default, int) or not 1 <= default <= self.max_tokens_limit:
            raise UserError(
                f"max_tokens_default must be an integer in [1, max_tokens_limit = {self.max_tokens_limit}], "
                f"got {default!r}"
            )
        alpha = self.max_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not (_finite(alpha) and alpha >= 0):
            raise UserError(f"max_alpha must be a finite number >= 0, got {alpha!r}")


@dataclass(frozen=True)
class SteerChoice:
    """The ``steer`` field of a request: a loaded spec by name, optionally another alpha or k."""

    name: str
    alpha: float | None = None
    k: int | None = None


@dataclass
class Request:
    """A validated completion request (chat messages are kept as messages; the server formats them)."""

    model: str | None
    chat: bool
    prompts: list[str] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    steer: SteerChoice | None = None


def _finite(value: int | float) -> bool:
    """Whether ``value`` is a finite number that a float can hold (a 401-digit JSON integer cannot)."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _shown(value: Any) -> str:
    """``value`` for a message, its middle left out when it is long (a 401-digit integer)."""
    text = repr(value)
    if len(text) <= 40:
        return text
    return f"{text[:20]}...({len(text.lstrip('-'))} digits)" if isinstance(value, int) else f"{text[:40]}..."


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not (_finite(value) and lo <= value <= hi):
        raise RequestError(f"{key!r} must be a number in [{lo:g}, {hi:g}], got {_shown(value)}", param=key)
    return float(value)


def _int(value: Any, key: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RequestError(f"{key!r} must be an integer in [{lo}, {hi}], got {_shown(value)}", param=key)
    return int(value)


def parse_steer(value: Any, limits: Limits) -> SteerChoice | None:
    """The ``steer`` field: ``null``, ``"NAME"`` or ``{"name": NAME, "alpha": A, "k": K}``."""
    if value is None:
        return None
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise RequestError(
            f'\'steer\' must be an object {{"name", "alpha"}}, got {type(value).__name__}', param="steer"
        )
    unknown = sorted(set(value) - {"name", "alpha", "k"})
    if unknown:
        raise RequestError(f"'steer' has unknown field(s) {unknown}; expected name, alpha, k", param="steer")
    name = value.get("name")
    if not isinstance(name, str) or not name:
        raise RequestError("'steer.name' must be the name of a loaded steer (see /v1/steers)", param="steer.name")
    alpha = value.get("alpha")
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not _finite(alpha):
            raise RequestError(f"'steer.alpha' must be a finite number, got {_shown(alpha)}", param="steer.alpha")
        if abs(alpha) > limits.max_alpha:
            raise RequestError(
                f"'steer.alpha' {_shown(alpha)} is out of range: |alpha| must be <= {limits.max_alpha:g}",
                param="steer.alpha",
            )
        alpha = float(alpha)
    k = value.get("k")
    if k is not None:
        k = _int(k, "steer.k", 0, limits.max_k)
    return SteerChoice(name, alpha, k)


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects", param="messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestError(f"'messages[{i}]' must be an object with a string 'role'", param=f"messages[{i}]")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
                raise RequestError(f"'messages[{i}].content' may only hold text parts", param=f"messages[{i}].content")
            content = "".join(str(p) for p in parts)
        if not isinstance(content, str):
            raise RequestError(f"'messages[{i}].content' must be a string", param=f"messages[{i}].content")
        out.append({"role": m["role"], "content": content})
    return out


def lone_surrogate(body: Any) -> str | None:
    """Where the first string (key or value) of a parsed JSON body holds a lone surrogate, else ``None``.

    ``json.loads`` accepts escapes like ``"\\ud800"`` that are no Unicode text: the tokenizer and the
    response encoder would fail on them, so the server rejects such a body up front.

    Example:
        >>> lone_surrogate(json.loads('{"messages": [{"role": "user", "content": "a\\ud800"}]}'))
        'messages[0].content'
        >>> lone_surrogate({"prompt": "fine \U0001f600"}) is None
        True
    """
    todo: list[tuple[str, Any]] = [("", body)]
    while todo:  # iterative: a deeply nested body must not exhaust the stack
        where, value = todo.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return where or "the body"
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                todo.append((f"{where}.{key}" if where else str(key), item))
                if isinstance(key, str):
                    todo.append((f"{where} key" if where else "a key", key))
        elif isinstance(value, list):
            todo.extend((f"{where}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return None


def parse_request(body: Any, chat: bool, limits: Limits) -> Request:
    """Validate a ``/v1/chat/completions`` (``chat=True``) or ``/v1/completions`` body."""
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    bad = lone_surrogate(body)
    if bad is not None:
        raise RequestError(f"{bad!r} is not valid Unicode text: it holds a lone surrogate (\\ud800-\\udfff)", param=bad)
    req = Request(model=body.get("model") if isinstance(body.get("model"), str) else None, chat=chat)
    if chat:
        req.messages = _messages(body.get("messages"))
    else:
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise RequestError("'prompt' must be a string or a non-empty list of strings", param="prompt")
        if len(prompts) > limits.max_prompts:
            raise RequestError(f"at most {limits.max_prompts} prompts per request, got {len(prompts)}", param="prompt")
        req.prompts = list(prompts)
    n = body.get("n", 1)
    if n != 1:
        raise RequestError(f"only n=1 is supported, got {n!r}", param="n")
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    req.max_tokens = (
        limits.max_tokens_default if tokens is None else _int(tokens, "max_tokens", 1, limits.max_tokens_limit)
    )
    req.temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
    req.top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if req.top_p == 0.0:
        raise RequestError("'top_p' must be > 0", param="top_p")
    seed = body.get("seed")
    req.seed = None if seed is None else _int(seed, "seed", 0, 2**63 - 1)
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else ([] if stop is None else stop)
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise RequestError("'stop' must be a non-empty string or a list of at most 4 of them", param="stop")
    req.stop = tuple(stops)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(f"'stream' must be true or false, got {stream!r}", param="stream")
    req.stream = stream
    req.steer = parse_steer(body.get("steer"), limits)
    return req


# ---------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    rid: str, model: str, chat: bool, choices: list[tuple[str, str]], prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """A whole (non-streamed) response; ``choices`` are ``(text, finish_reason)``.

    Example:
        >>> completion_body("x", "m", True, [("Hi!", "stop")], 3, 2)["choices"][0]["message"]
        {'role': 'assistant', 'content': 'Hi!'}
    """
    out = []
    for i, (text, reason) in enumerate(choices):
        if chat:
            out.append({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason})
        else:
            out.append({"index": i, "text": text, "logprobs": None, "finish_reason": reason})
    return {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": out,
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk_body(rid: str, model: str, chat: bool, index: int, text: str | None, reason: str | None) -> dict[str, Any]:
    """One server-sent event of a streamed response (``text=None`` with a reason: the closing chunk)."""
    if chat:
        delta: dict[str, Any] = {} if text is None else {"content": text}
        choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": reason}
    else:
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}
    return {
        "id": rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }


def sse(obj: dict[str, Any] | str) -> bytes:
    """Encode one server-sent event (``data: ...`` and a blank line).

    Example:
        >>> sse("[DONE]")
        b'data: [DONE]\\n\\n'
    """
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode()
