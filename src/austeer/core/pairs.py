"""Contrastive pairs: the dataclass, the JSONL reader and the text a model sees.

A pairs file has one JSON object per line with ``prompt``, ``positive`` and ``negative`` strings
(and an optional ``system`` string).

Example:
    >>> import json, tempfile
    >>> from austeer.core.pairs import read_pairs
    >>> f = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False)
    >>> _ = f.write(json.dumps({"prompt": "Is ice cold?", "positive": "Yes", "negative": "No"}) + "\\n")
    >>> f.close()
    >>> read_pairs(f.name)[0].positive
    'Yes'
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from austeer.errors import UserError
from austeer.io import atomic_write_text, iter_jsonl, json_sha256


@dataclass(frozen=True)
class Pair:
    """One contrastive example: the same prompt answered the wanted and the unwanted way."""

    prompt: str
    positive: str
    negative: str
    system: str | None = None


class PairsFormatError(UserError):
    """A pairs file line is malformed; the message names the file, the line and the field."""


def read_pairs(path: str | Path) -> list[Pair]:
    """Read a pairs JSONL file; blank lines are skipped, anything malformed raises :class:`PairsFormatError`."""
    pairs = [pair_from_obj(obj, f"{path}:{lineno}") for lineno, obj in iter_jsonl(path, "pairs", PairsFormatError)]
    if not pairs:
        raise PairsFormatError(f"{path}: no pairs (expected one JSON object per line)")
    return pairs


def pair_from_obj(obj: Any, where: str) -> Pair:
    if not isinstance(obj, dict):
        raise PairsFormatError(f"{where}: expected a JSON object, found {type(obj).__name__}")
    values: dict[str, str | None] = {}
    for field in ("prompt", "positive", "negative", "system"):
        value = obj.get(field)
        if value is None and field == "system":
            values[field] = None
            continue
        if value is None:
            raise PairsFormatError(f"{where}: missing field {field!r} (expected a string)")
        if not isinstance(value, str):
            raise PairsFormatError(f"{where}: field {field!r} must be a string, found {type(value).__name__}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise PairsFormatError(f"{where}: field {field!r} is not valid Unicode text (lone surrogate)") from None
        if field != "system" and not value.strip():
            raise PairsFormatError(f"{where}: field {field!r} is empty")
        values[field] = value
    if values["positive"] == values["negative"]:
        raise PairsFormatError(f"{where}: positive and negative are identical (a pair must contrast two answers)")
    return Pair(values["prompt"] or "", values["positive"] or "", values["negative"] or "", values["system"])


def pairs_sha256(pairs: Sequence[Pair]) -> str:
    """The SHA-256 of ``pairs`` (every field, in order): what tells a run which pairs another run read.

    Example:
        >>> pairs_sha256([Pair("Is ice cold?", "Yes", "No")])[:12]
        '84ae400a4ceb'
    """
    return json_sha256([asdict(p) for p in pairs])


def write_pairs(pairs: list[Pair], path: str | Path) -> None:
    """Write pairs as JSONL (atomically)."""
    lines = []
    for p in pairs:
        obj: dict[str, str] = {"prompt": p.prompt, "positive": p.positive, "negative": p.negative}
        if p.system is not None:
            obj["system"] = p.system
        lines.append(json.dumps(obj, ensure_ascii=False))
    atomic_write_text(Path(path), "\n".join(lines) + "\n")


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: Any, prompt: str, system: str | None = None) -> str:
    """The prompt as the model sees it: chat template with the generation prompt, or plain text.

    ``system`` goes in the system turn; where the template has no system role (it refuses one, as
    Gemma's does, or drops it) it opens the user turn instead, as in plain text.

    Example:
        >>> print(format_prompt(tok, "Hi?", system="Be brief."))
        <|im_start|>system
        Be brief.<|im_end|>
        <|im_start|>user
        Hi?<|im_end|>
        <|im_start|>assistant
        <BLANKLINE>
    """
    inline = prompt if system is None else f"{system}\n\n{prompt}"
    if not has_chat_template(tokenizer):
        return inline
    if system is not None:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        try:
            text = str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        except Exception:  # a template without a system role raises (jinja2's TemplateError)
            text = ""
        if system in text:
            return text
    messages = [{"role": "user", "content": inline}]
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def pair_texts(tokenizer: Any, pair: Pair) -> tuple[str, str]:
    """The positive and negative texts: formatted prompt followed directly by each answer."""
    head = format_prompt(tokenizer, pair.prompt, pair.system)
    return head + pair.positive, head + pair.negative
