"""The built-in fake LLM provider.

Demos, tests and benchmarks need a provider that costs nothing, needs no key and
answers the same request the same way every time. This module is that provider:
it speaks the OpenAI chat/completions, completions, embeddings, models and
responses APIs and the Anthropic messages API, streamed or not, in the exact wire
shapes the official SDKs parse, with usage blocks that count whitespace-separated
words as tokens.

Knobs make it slow or failing: latency before the answer, time to first token,
delay between streamed tokens, an error rate and status, a hang, a fixed reply,
a stream cut mid-way, and tool calls (``x-mock-tool-call``, or a ``tool_choice``
that forces a tool) with arguments made from each tool's schema. Each is set for the whole upstream (``MockSettings``, the
command line) and may be overridden per request by an ``x-mock-*`` header, so a
test that goes through the gateway can steer it from the SDK's ``extra_headers``.

One engine, ``MockUpstream.handle``, serves two transports: the gateway's ``mock``
provider calls it in-process (no socket), and ``MockUpstream.web_app`` puts it
behind aiohttp for ``gateway mock-upstream --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import math
import random
import re
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import aclosing
from typing import Annotated, Any

import msgspec
from aiohttp import web

__all__ = ["MockReply", "MockSettings", "MockUpstream", "add_arguments", "main"]


class MockSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The upstream-wide knobs; a request's ``x-mock-*`` headers override each one.

    Times are milliseconds. ``error_rate`` is the share of requests (0 to 1) answered
    with ``error_status``, drawn from a ``random.Random(seed)`` so runs repeat.
    """

    latency_ms: Annotated[float, msgspec.Meta(ge=0)] = 0
    ttft_ms: Annotated[float, msgspec.Meta(ge=0)] = 0
    inter_token_ms: Annotated[float, msgspec.Meta(ge=0)] = 0
    error_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0
    error_status: Annotated[int, msgspec.Meta(ge=400, le=599)] = 500
    hang: bool = False
    seed: int = 0


class MockReply:
    """One answer: a status, headers, and either a whole body or a stream of SSE events.

    ``chunks`` yields one encoded event per item and sleeps between them itself. A
    stream cut by ``x-mock-stream-cut-after`` raises ``ConnectionResetError`` where
    a real upstream would reset the connection.
    """

    __slots__ = ("status", "headers", "body", "chunks")

    def __init__(
        self,
        status: int,
        headers: dict[str, str],
        body: bytes | None = None,
        chunks: AsyncIterator[bytes] | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.chunks = chunks


MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "text-embedding-3-small",
    "claude-3-5-haiku-latest",
    "claude-haiku-4-5",
    "claude-sonnet-4-5",
    "mock-stream",
)
DEFAULT_EMBEDDING_DIMENSIONS = 8
MAX_EMBEDDING_DIMENSIONS = 8192
ECHOED_WORDS = 8
CONFIDENT_LOGPROB = -0.02
UNSURE_LOGPROB = -1.6
# What a weak model answers (x-mock-weak-model, x-mock-weak-answer): reply text, or None to keep it.
WEAK_ANSWERS = {
    "refuse": "I'm sorry, but I can't help with that.",
    "empty": "",
    "short": "Yes.",
    "bad-json": '{"answer": "incomplete',
    "truncate": None,
    "unsure": None,
}
FILLER = "- this is a deterministic answer from the mock upstream."

_encode = msgspec.json.encode
_decode = msgspec.json.decode
_TOKEN = re.compile(r"\s*\S+")
_JSON_HEADERS = {"Content-Type": "application/json"}
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_DONE = b"data: [DONE]\n\n"
# The one slot a template fills. Templates split at its last occurrence, and every
# string a request controls (the model) comes before the slot in an event, so a
# request cannot move the split.
_SLOT = "\x00"
_ENCODED_SLOT = _encode(_SLOT)
_MODELS_CREATED = 1_700_000_000
_FINGERPRINT = "fp_mock"
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _openai_model(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": _MODELS_CREATED, "owned_by": "mock"}


def _anthropic_model(model: str) -> dict[str, Any]:
    return {"type": "model", "id": model, "display_name": model, "created_at": "2023-11-14T22:13:20Z"}


_OPENAI_MODELS = _encode({"object": "list", "data": [_openai_model(m) for m in MODELS]})
_ANTHROPIC_MODELS = _encode(
    {
        "data": [_anthropic_model(m) for m in MODELS],
        "has_more": False,
        "first_id": MODELS[0],
        "last_id": MODELS[-1],
    }
)


def _non_negative_float(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if 0 <= number < math.inf else None


def _rate(value: str) -> float | None:
    number = _non_negative_float(value)
    return number if number is not None and number <= 1 else None


def _error_status(value: str) -> int | None:
    try:
        status = int(value)
    except ValueError:
        return None
    return status if 400 <= status <= 599 else None


_FLAGS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _flag(value: str) -> bool | None:
    return _FLAGS.get(value.strip().lower())


def _non_negative_int(value: str) -> int | None:
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number >= 0 else None


def _utf8(value: str) -> str | None:
    """``value`` unless it holds bytes that were not UTF-8 (decoded as surrogates)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return None
    return value


_KNOB_HEADERS: tuple[tuple[str, str, Callable[[str], Any]], ...] = (
    ("x-mock-latency-ms", "latency_ms", _non_negative_float),
    ("x-mock-ttft-ms", "ttft_ms", _non_negative_float),
    ("x-mock-inter-token-ms", "inter_token_ms", _non_negative_float),
    ("x-mock-error-rate", "error_rate", _rate),
    ("x-mock-error-status", "error_status", _error_status),
    ("x-mock-hang", "hang", _flag),
)


class _Call:
    """What an endpoint needs to know about one request."""

    __slots__ = ("payload", "digest", "settings", "reply", "cut_after", "tool_names", "logprob")

    def __init__(
        self,
        payload: dict[str, Any],
        digest: str,
        settings: MockSettings,
        reply: str | None,
        cut_after: int | None,
        tool_names: list[str] | None = None,
        logprob: float = CONFIDENT_LOGPROB,
    ) -> None:
        self.payload = payload
        self.digest = digest
        self.settings = settings
        self.reply = reply
        self.cut_after = cut_after
        #: tools named by ``x-mock-tool-call`` ("*": every tool of the request)
        self.tool_names = tool_names
        #: every answer token's logprob, when the request asks for logprobs
        self.logprob = logprob


class _Answer:
    """The reply text split into tokens, with the usage it implies."""

    __slots__ = ("tokens", "text", "input_tokens", "output_tokens", "truncated")

    def __init__(self, call: _Call, prompt: str, input_tokens: int, limit: int | None) -> None:
        text = call.reply if call.reply is not None else _reply_text(prompt)
        tokens = _TOKEN.findall(text)
        self.truncated = limit is not None and len(tokens) > limit
        if self.truncated:
            tokens = tokens[:limit]
        self.tokens = tokens
        self.text = "".join(tokens)
        self.input_tokens = input_tokens
        self.output_tokens = len(tokens)


def _weaken(call: _Call, kind: str) -> None:
    """Make this answer one a cascade should reject: refusing, empty, short, broken JSON,
    cut at the token limit, or unsure (low logprobs)."""
    if WEAK_ANSWERS[kind] is not None:
        call.reply = WEAK_ANSWERS[kind]
    elif kind == "truncate":
        call.payload = {**call.payload, "max_tokens": 3, "max_completion_tokens": 3, "max_output_tokens": 3}
    else:
        call.logprob = UNSURE_LOGPROB


def _token_logprobs(call: _Call, tokens: list[str]) -> dict[str, Any]:
    content = [{"token": t, "logprob": call.logprob, "bytes": list(t.encode()), "top_logprobs": []} for t in tokens]
    return {"content": content, "refusal": None}


def _reply_text(prompt: str) -> str:
    echoed = " ".join(prompt.split()[:ECHOED_WORDS]) or "(empty)"
    return f"Mock reply to: {echoed} {FILLER}"


def _text(content: Any) -> str:
    """A message's text: its string content, or the text of its list of parts
    (an Anthropic tool_result block's content included)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "tool_result":
                texts.append(_text(part.get("content")))
        return " ".join(texts)
    return ""


def _messages(payload: dict[str, Any], key: str) -> list[dict[str, Any]]:
    messages = payload.get(key)
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if isinstance(messages, list):
        return [m for m in messages if isinstance(m, dict)]
    return []


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") in ("user", "tool"):
            return _text(message.get("content"))
    return ""


def _word_count(texts: Iterable[str]) -> int:
    return max(1, sum(len(text.split()) for text in texts))


def _limit(payload: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = payload.get(name)
        if type(value) is int and value > 0:
            return value
    return None


def _model(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    return model if isinstance(model, str) else "mock"


def _include_usage(payload: dict[str, Any]) -> bool:
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _json(status: int, payload: Any, headers: dict[str, str] = _JSON_HEADERS) -> MockReply:
    return MockReply(status, dict(headers), body=_encode(payload))


def _sse(payload: Any) -> bytes:
    return b"data: " + _encode(payload) + b"\n\n"


def _typed_sse(payload: dict[str, Any]) -> bytes:
    """An event named by its payload's ``type``, as the Anthropic and Responses APIs send them."""
    return b"event: " + payload["type"].encode() + b"\n" + _sse(payload)


def _template(event: bytes) -> tuple[bytes, bytes]:
    """Split an encoded event at its ``_SLOT`` so a delta is ``head + encode(text) + tail``."""
    head, _, tail = event.rpartition(_ENCODED_SLOT)
    return head, tail


def _stream(
    call: _Call, opening: list[bytes], deltas: Iterable[bytes], closing: Callable[[], list[bytes]]
) -> MockReply:
    return MockReply(200, dict(_SSE_HEADERS), chunks=_events(call, opening, deltas, closing))


async def _events(
    call: _Call, opening: list[bytes], deltas: Iterable[bytes], closing: Callable[[], list[bytes]]
) -> AsyncIterator[bytes]:
    """Opening events after the time to first token, then content events one
    inter-token delay apart, then the closing events.

    ``closing`` is called only once the content is out: a cut stream never builds
    it, and the Responses API's sequence numbers stay in order."""
    settings = call.settings
    if settings.ttft_ms > 0:
        await asyncio.sleep(settings.ttft_ms / 1000)
    for event in opening:
        yield event
    gap_s = settings.inter_token_ms / 1000
    for index, event in enumerate(deltas):
        if index == call.cut_after:
            raise ConnectionResetError("mock upstream: stream cut")
        if index and gap_s > 0:
            await asyncio.sleep(gap_s)
        yield event
    if call.cut_after is not None:
        raise ConnectionResetError("mock upstream: stream cut")
    for event in closing():
        yield event


def _openai_error(status: int, message: str, code: str | None = None) -> MockReply:
    if status == 429:
        kind, code = "requests", code or "rate_limit_exceeded"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    headers = {**_JSON_HEADERS, "retry-after": "1"} if status == 429 else _JSON_HEADERS
    return _json(status, {"error": {"message": message, "type": kind, "param": None, "code": code}}, headers)


def _anthropic_error(status: int, message: str) -> MockReply:
    kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
    headers = {**_JSON_HEADERS, "retry-after": "1"} if status == 429 else _JSON_HEADERS
    return _json(status, {"type": "error", "error": {"type": kind, "message": message}}, headers)


def _chat(call: _Call) -> MockReply:
    payload = call.payload
    calls = _tool_calls(call, anthropic=False)
    if calls:
        return _chat_tool_calls(call, calls)
    messages = _messages(payload, "messages")
    answer = _Answer(
        call,
        _last_user_text(messages),
        _word_count(_text(m.get("content")) for m in messages),
        _limit(payload, "max_completion_tokens", "max_tokens"),
    )
    finish_reason = "length" if answer.truncated else "stop"
    usage = {
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.input_tokens + answer.output_tokens,
    }
    streamed = payload.get("stream") is True
    head = {
        "id": "chatcmpl-mock-" + call.digest,
        "object": "chat.completion.chunk" if streamed else "chat.completion",
        "created": int(time.time()),
        "model": _model(payload),
        "system_fingerprint": _FINGERPRINT,
    }
    with_logprobs = payload.get("logprobs") is True
    if not streamed:
        message = {"role": "assistant", "content": answer.text, "refusal": None}
        logprobs = _token_logprobs(call, answer.tokens) if with_logprobs else None
        choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}
        return _json(200, {**head, "choices": [choice], "usage": usage})

    chunks = _ChatChunks(head, payload, usage, finish_reason)
    if with_logprobs:
        deltas: Iterable[bytes] = (
            chunks.chunk({"content": token}, logprobs=_token_logprobs(call, [token])) for token in answer.tokens
        )
    else:
        before, after = _template(chunks.chunk({"content": _SLOT}))
        deltas = (before + _encode(token) + after for token in answer.tokens)
    return _stream(call, [chunks.chunk({"role": "assistant", "content": ""})], deltas, chunks.closing)


class _ChatChunks:
    """The events of a streamed chat.completion: one per delta, then the closing ones."""

    def __init__(self, head: dict[str, Any], payload: dict[str, Any], usage: dict[str, int], finish_reason: str) -> None:
        self.head = head
        self.usage = usage
        self.finish_reason = finish_reason
        # With include_usage every chunk carries "usage": null until the last one.
        self.tail: dict[str, Any] = {"usage": None} if _include_usage(payload) else {}

    def chunk(self, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return _sse({**self.head, "choices": [choice], **self.tail})

    def closing(self) -> list[bytes]:
        events = [self.chunk({}, self.finish_reason)]
        if self.tail:
            events.append(_sse({**self.head, "choices": [], "usage": self.usage}))
        events.append(_DONE)
        return events


def _completion(call: _Call) -> MockReply:
    payload = call.payload
    prompts = payload.get("prompt")
    if not isinstance(prompts, list):
        prompts = [prompts]
    prompts = [prompt for prompt in prompts if isinstance(prompt, str)]
    answer = _Answer(call, prompts[-1] if prompts else "", _word_count(prompts), _limit(payload, "max_tokens"))
    finish_reason = "length" if answer.truncated else "stop"
    usage = {
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.input_tokens + answer.output_tokens,
    }
    head = {
        "id": "cmpl-mock-" + call.digest,
        "object": "text_completion",
        "created": int(time.time()),
        "model": _model(payload),
    }
    if payload.get("stream") is not True:
        choice = {"text": answer.text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
        return _json(200, {**head, "choices": [choice], "usage": usage})

    tail = {"usage": None} if _include_usage(payload) else {}

    def chunk(text: str, finish: str | None) -> bytes:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        return _sse({**head, "choices": [choice], **tail})

    def closing() -> list[bytes]:
        events = [chunk("", finish_reason)]
        if tail:
            events.append(_sse({**head, "choices": [], "usage": usage}))
        events.append(_DONE)
        return events

    before, after = _template(chunk(_SLOT, None))
    return _stream(call, [], (before + _encode(token) + after for token in answer.tokens), closing)


def _vector(item: Any, dimensions: int) -> list[float]:
    """A unit vector drawn from a hash of the input, so equal inputs embed equally."""
    data = item.encode() if isinstance(item, str) else _encode(item)
    digest = hashlib.shake_256(data).digest(2 * dimensions)
    values = [v - 32767.5 for v in struct.unpack(f"<{dimensions}H", digest)]
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def _embedding_tokens(item: Any) -> int:
    """A string counts its words, a token array its length."""
    if isinstance(item, str):
        return len(item.split())
    return len(item) if isinstance(item, list) else 0


def _embeddings(call: _Call) -> MockReply:
    payload = call.payload
    items = payload.get("input")
    # One string or one token array is a single input; any other list is a batch.
    if isinstance(items, str) or (isinstance(items, list) and items and all(isinstance(i, int) for i in items)):
        items = [items]
    if not isinstance(items, list) or not items:
        return _openai_error(400, "'input' must be a non-empty string or array.")
    dimensions = payload.get("dimensions", DEFAULT_EMBEDDING_DIMENSIONS)
    if type(dimensions) is not int or not 0 < dimensions <= MAX_EMBEDDING_DIMENSIONS:
        return _openai_error(400, f"'dimensions' must be an integer from 1 to {MAX_EMBEDDING_DIMENSIONS}.")
    as_base64 = payload.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(items):
        vector: Any = _vector(item, dimensions)
        if as_base64:
            vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = max(1, sum(map(_embedding_tokens, items)))
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return _json(200, {"object": "list", "data": data, "model": _model(payload), "usage": usage})


def _responses(call: _Call) -> MockReply:
    payload = call.payload
    messages = _messages(payload, "input")
    instructions = payload.get("instructions")
    texts = [_text(m.get("content")) for m in messages]
    if isinstance(instructions, str):
        texts.append(instructions)
    answer = _Answer(call, _last_user_text(messages), _word_count(texts), _limit(payload, "max_output_tokens"))
    status = "incomplete" if answer.truncated else "completed"
    response_id = "resp_mock_" + call.digest
    item_id = "msg_mock_" + call.digest
    created_at = int(time.time())

    def response(state: str, output: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "id": response_id,
            "object": "response",
            "created_at": created_at,
            "status": state,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if state == "incomplete" else None,
            "instructions": instructions if isinstance(instructions, str) else None,
            "max_output_tokens": _limit(payload, "max_output_tokens"),
            "model": _model(payload),
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "temperature": 1.0,
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "usage": usage,
        }

    part = {"type": "output_text", "text": answer.text, "annotations": []}
    item = {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": [part]}
    usage = {
        "input_tokens": answer.input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": answer.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": answer.input_tokens + answer.output_tokens,
    }
    if payload.get("stream") is not True:
        return _json(200, response(status, [item], usage))

    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    sequence = itertools.count()

    def event(kind: str, fields: dict[str, Any]) -> bytes:
        return _typed_sse({"type": kind, "sequence_number": next(sequence), **fields})

    started = response("in_progress", [], None)
    empty_item = {**item, "status": "in_progress", "content": []}
    opening = [
        event("response.created", {"response": started}),
        event("response.in_progress", {"response": started}),
        event("response.output_item.added", {"output_index": 0, "item": empty_item}),
        event("response.content_part.added", {**where, "part": {**part, "text": ""}}),
    ]
    deltas = (event("response.output_text.delta", {**where, "delta": t, "logprobs": []}) for t in answer.tokens)

    def closing() -> list[bytes]:
        return [
            event("response.output_text.done", {**where, "text": answer.text, "logprobs": []}),
            event("response.content_part.done", {**where, "part": part}),
            event("response.output_item.done", {"output_index": 0, "item": item}),
            event(f"response.{status}", {"response": response(status, [item], usage)}),
        ]

    return _stream(call, opening, deltas, closing)


def _anthropic_input(payload: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    messages = _messages(payload, "messages")
    texts = [_text(m.get("content")) for m in messages]
    texts.append(_text(payload.get("system")))
    return messages, _word_count(texts)


def _messages_endpoint(call: _Call) -> MockReply:
    payload = call.payload
    calls = _tool_calls(call, anthropic=True)
    if calls:
        return _messages_tool_use(call, calls)
    messages, input_tokens = _anthropic_input(payload)
    answer = _Answer(call, _last_user_text(messages), input_tokens, _limit(payload, "max_tokens"))
    stop_reason = "max_tokens" if answer.truncated else "end_turn"
    message = {
        "id": "msg_mock_" + call.digest,
        "type": "message",
        "role": "assistant",
        "model": _model(payload),
        "content": [{"type": "text", "text": answer.text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": answer.output_tokens},
    }
    if payload.get("stream") is not True:
        return _json(200, message)

    start = {**message, "content": [], "stop_reason": None, "usage": {"input_tokens": input_tokens, "output_tokens": 0}}
    opening = [
        _typed_sse({"type": "message_start", "message": start}),
        _typed_sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        _typed_sse({"type": "ping"}),
    ]
    text_delta = {"type": "text_delta", "text": _SLOT}
    before, after = _template(_typed_sse({"type": "content_block_delta", "index": 0, "delta": text_delta}))

    def closing() -> list[bytes]:
        delta = {"stop_reason": stop_reason, "stop_sequence": None}
        return [
            _typed_sse({"type": "content_block_stop", "index": 0}),
            _typed_sse({"type": "message_delta", "delta": delta, "usage": {"output_tokens": answer.output_tokens}}),
            _typed_sse({"type": "message_stop"}),
        ]

    return _stream(call, opening, (before + _encode(token) + after for token in answer.tokens), closing)


# -- tool calls -------------------------------------------------------------------------------


def _tools(payload: dict[str, Any], anthropic: bool) -> dict[str, Any]:
    """The request's tools: name -> JSON schema of the arguments, in request order."""
    tools: dict[str, Any] = {}
    listed = payload.get("tools")
    for tool in listed if isinstance(listed, list) else ():  # anything else: no tools, not a crash
        if not isinstance(tool, dict):
            continue
        spec = tool if anthropic else tool.get("function")
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            tools[spec["name"]] = spec.get("input_schema" if anthropic else "parameters")
    return tools


def _tool_calls(call: _Call, anthropic: bool) -> list[tuple[str, dict[str, Any]]]:
    """The tools to call, with example arguments: those ``x-mock-tool-call`` names, else
    the one ``tool_choice`` forces (a named tool; required/any: the first). ``none`` wins."""
    tools = _tools(call.payload, anthropic)
    if not tools:
        return []
    choice = call.payload.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else choice
    if kind == "none":
        return []
    names: list[str] = []
    if call.tool_names:
        names = list(tools) if "*" in call.tool_names else [name for name in call.tool_names if name in tools]
    if not names:
        if anthropic and kind == "tool" and isinstance(choice, dict):
            names = [choice.get("name")] if choice.get("name") in tools else []
        elif not anthropic and kind == "function" and isinstance(choice, dict):
            function = choice.get("function") or {}
            names = [function.get("name")] if function.get("name") in tools else []
        elif kind in ("required", "any"):
            names = [next(iter(tools))]
    return [(name, _example(tools[name])) for name in names]


def _example(schema: Any, depth: int = 0) -> Any:
    """A deterministic value that fits a JSON schema (first enum value, "mock", 1...)."""
    if not isinstance(schema, dict) or depth > 8:
        return "mock"
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        return {name: _example(sub, depth + 1) for name, sub in properties.items() if isinstance(name, str)}
    if kind == "array":
        return [_example(schema.get("items"), depth + 1)]
    return {"integer": 1, "number": 1.5, "boolean": True, "null": None}.get(kind, "mock")  # type: ignore[arg-type]


def _fragments(arguments: str) -> list[str]:
    """Argument JSON cut in pieces, as providers stream it."""
    return [arguments[i : i + 12] for i in range(0, len(arguments), 12)] or [""]


def _chat_tool_calls(call: _Call, calls: list[tuple[str, dict[str, Any]]]) -> MockReply:
    payload = call.payload
    messages = _messages(payload, "messages")
    input_tokens = _word_count(_text(m.get("content")) for m in messages)
    encoded = [(f"call_mock_{call.digest}_{i}", name, _encode(arguments).decode()) for i, (name, arguments) in enumerate(calls)]
    output_tokens = max(1, sum(len(_TOKEN.findall(arguments)) for _, _, arguments in encoded))
    usage = {"prompt_tokens": input_tokens, "completion_tokens": output_tokens, "total_tokens": input_tokens + output_tokens}
    streamed = payload.get("stream") is True
    head = {
        "id": "chatcmpl-mock-" + call.digest,
        "object": "chat.completion.chunk" if streamed else "chat.completion",
        "created": int(time.time()),
        "model": _model(payload),
        "system_fingerprint": _FINGERPRINT,
    }
    if not streamed:
        tool_calls = [
            {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}
            for id_, name, arguments in encoded
        ]
        message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": tool_calls}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}
        return _json(200, {**head, "choices": [choice], "usage": usage})

    chunks = _ChatChunks(head, payload, usage, "tool_calls")

    def deltas() -> Iterable[bytes]:
        for index, (id_, name, arguments) in enumerate(encoded):
            function = {"name": name, "arguments": ""}
            yield chunks.chunk({"tool_calls": [{"index": index, "id": id_, "type": "function", "function": function}]})
            for piece in _fragments(arguments):
                yield chunks.chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})

    return _stream(call, [chunks.chunk({"role": "assistant", "content": None})], deltas(), chunks.closing)


def _messages_tool_use(call: _Call, calls: list[tuple[str, dict[str, Any]]]) -> MockReply:
    payload = call.payload
    _, input_tokens = _anthropic_input(payload)
    blocks = [
        {"type": "tool_use", "id": f"toolu_mock_{call.digest}_{i}", "name": name, "input": arguments}
        for i, (name, arguments) in enumerate(calls)
    ]
    output_tokens = max(1, sum(len(_TOKEN.findall(_encode(block["input"]).decode())) for block in blocks))
    message = {
        "id": "msg_mock_" + call.digest,
        "type": "message",
        "role": "assistant",
        "model": _model(payload),
        "content": blocks,
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }
    if payload.get("stream") is not True:
        return _json(200, message)

    start = {**message, "content": [], "stop_reason": None, "usage": {"input_tokens": input_tokens, "output_tokens": 0}}

    def deltas() -> Iterable[bytes]:
        for index, block in enumerate(blocks):
            if index:
                yield _typed_sse({"type": "content_block_stop", "index": index - 1})
            yield _typed_sse({"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}})
            for piece in _fragments(_encode(block["input"]).decode()):
                delta = {"type": "input_json_delta", "partial_json": piece}
                yield _typed_sse({"type": "content_block_delta", "index": index, "delta": delta})

    def closing() -> list[bytes]:
        delta = {"stop_reason": "tool_use", "stop_sequence": None}
        return [
            _typed_sse({"type": "content_block_stop", "index": len(blocks) - 1}),
            _typed_sse({"type": "message_delta", "delta": delta, "usage": {"output_tokens": output_tokens}}),
            _typed_sse({"type": "message_stop"}),
        ]

    return _stream(call, [_typed_sse({"type": "message_start", "message": start})], deltas(), closing)


def _count_tokens(call: _Call) -> MockReply:
    return _json(200, {"input_tokens": _anthropic_input(call.payload)[1]})


_ENDPOINTS: dict[str, Callable[[_Call], MockReply]] = {
    "/v1/chat/completions": _chat,
    "/v1/completions": _completion,
    "/v1/embeddings": _embeddings,
    "/v1/responses": _responses,
    "/v1/messages": _messages_endpoint,
    "/v1/messages/count_tokens": _count_tokens,
}


class MockUpstream:
    """The fake provider: ``handle`` is the engine, ``web_app`` its HTTP transport."""

    def __init__(self, settings: MockSettings = MockSettings(), name: str = "mock") -> None:  # noqa: B008 (frozen)
        self.settings = settings
        #: what ``x-mock-target`` names to steer this upstream alone (the provider's name in-process)
        self.name = name
        self._rng = random.Random(settings.seed)

    async def handle(
        self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> MockReply:
        """Answer one request. ``headers`` is read by lower-case names (a CIMultiDict
        or a dict with lower-case keys); ``query`` is accepted and ignored."""
        target = headers.get("x-mock-target")
        # x-mock-target: NAME[,NAME]: this request's x-mock-* knobs steer those mocks only.
        steered = target is None or self.name in {name.strip() for name in target.split(",")}
        settings = self._settings(headers) if steered else self.settings
        if settings.latency_ms > 0:
            await asyncio.sleep(settings.latency_ms / 1000)
        if settings.hang:
            await asyncio.get_running_loop().create_future()
        path = path.rstrip("/")
        anthropic = path.startswith("/v1/messages")
        endpoint = _ENDPOINTS.get(path) if method == "POST" else None
        is_models = method == "GET" and (path == "/v1/models" or path.startswith("/v1/models/"))
        if endpoint is None and not is_models:
            message = f"Invalid URL ({method} {path})"
            return _anthropic_error(404, message) if anthropic else _openai_error(404, message, "unknown_url")
        if settings.error_rate > 0 and (settings.error_rate >= 1 or self._rng.random() < settings.error_rate):
            message = "mock upstream: injected failure"
            return (_anthropic_error if anthropic else _openai_error)(settings.error_status, message)
        if endpoint is None:
            return _models(path, "anthropic-version" in headers)
        try:
            payload = _decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            payload = None
        if not isinstance(payload, dict):
            message = "The request body is not a valid JSON object."
            return _anthropic_error(400, message) if anthropic else _openai_error(400, message)
        reply = headers.get("x-mock-reply") if steered else None
        cut_after = headers.get("x-mock-stream-cut-after") if steered else None
        tool_call = headers.get("x-mock-tool-call") if steered else None
        call = _Call(
            payload,
            hashlib.blake2b(body, digest_size=8).hexdigest(),
            settings,
            None if reply is None else _utf8(reply),
            None if cut_after is None else _non_negative_int(cut_after),
            None if tool_call is None else [name.strip() for name in tool_call.split(",") if name.strip()],
        )
        weak = headers.get("x-mock-weak-answer")
        if weak in WEAK_ANSWERS and _model(payload) in headers.get("x-mock-weak-model", "").split(","):
            _weaken(call, weak)
        return endpoint(call)

    def _settings(self, headers: Mapping[str, str]) -> MockSettings:
        """The settings with this request's valid ``x-mock-*`` overrides applied."""
        overrides = {}
        for header, field, parse in _KNOB_HEADERS:
            value = headers.get(header)
            if value is not None and (parsed := parse(value)) is not None:
                overrides[field] = parsed
        return msgspec.structs.replace(self.settings, **overrides) if overrides else self.settings

    def web_app(self) -> web.Application:
        """An aiohttp application that routes every path to ``handle``."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._serve)
        return app

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        reply = await self.handle(
            request.method, request.path, request.query_string, request.headers, await request.read()
        )
        if reply.chunks is None:
            return web.Response(status=reply.status, headers=reply.headers, body=reply.body)
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        await response.prepare(request)
        try:
            async with aclosing(reply.chunks) as chunks:
                async for chunk in chunks:
                    await response.write(chunk)
        except ConnectionResetError:
            # A cut stream, or a caller that left: drop the connection without the
            # chunked terminator so the client sees a reset, not a clean end.
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        return response


def _models(path: str, anthropic: bool) -> MockReply:
    if path == "/v1/models":
        return MockReply(200, dict(_JSON_HEADERS), body=_ANTHROPIC_MODELS if anthropic else _OPENAI_MODELS)
    model = path.removeprefix("/v1/models/")
    return _json(200, _anthropic_model(model) if anthropic else _openai_model(model))


def _argument(parse: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    def convert(value: str) -> Any:
        parsed = parse(value)
        if parsed is None:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
        return parsed

    return convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``gateway mock-upstream`` options to ``parser``."""
    milliseconds = _argument(_non_negative_float, "a number of milliseconds >= 0")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, required=True, help="port to listen on (0 picks a free one)")
    parser.add_argument("--latency-ms", type=milliseconds, default=0.0, help="delay before the answer headers")
    parser.add_argument("--ttft-ms", type=milliseconds, default=0.0, help="delay before a stream's first event")
    parser.add_argument("--inter-token-ms", type=milliseconds, default=0.0, help="delay between streamed tokens")
    parser.add_argument(
        "--error-rate", type=_argument(_rate, "a number from 0 to 1"), default=0.0, help="share of requests that fail"
    )
    parser.add_argument(
        "--error-status",
        type=_argument(_error_status, "an HTTP status from 400 to 599"),
        default=500,
        help="status of a failed request (default: %(default)s)",
    )
    parser.add_argument("--hang", action="store_true", help="never answer")
    parser.add_argument("--seed", type=int, default=0, help="seed of the error draws (default: %(default)s)")
    parser.add_argument("--name", default="mock", help="the name x-mock-target picks (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    """Serve the mock upstream over HTTP until SIGTERM or SIGINT."""
    settings = MockSettings(
        latency_ms=args.latency_ms,
        ttft_ms=args.ttft_ms,
        inter_token_ms=args.inter_token_ms,
        error_rate=args.error_rate,
        error_status=args.error_status,
        hang=args.hang,
        seed=args.seed,
    )
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            runner.run(_serve_forever(MockUpstream(settings, args.name), args.host, args.port))
        except OSError as exc:
            print(f"mock upstream: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    return 0


async def _serve_forever(upstream: MockUpstream, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # Hanging requests are cancelled when their caller leaves, and only briefly
    # awaited at shutdown: a mock has nothing worth draining.
    runner = web.AppRunner(upstream.web_app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        print(f"mock upstream listening on http://{shown_host}:{bound_port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
