"""Streams, event by event: Anthropic message events to OpenAI chat.completion.chunks and back.

A converter keeps the state of one stream (block indexes, tool-call indexes, the
stop reason, usage) and turns each whole server-sent event of the provider into
the caller's events at once: nothing is held back but what the other API sends
later (Anthropic's ``message_delta`` waits for OpenAI's usage chunk).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.errors import GatewayError, upstream_error
from gateway.exchange import SSEBuffer, StreamEvent, Usage, close_stream
from gateway.translate.answers import (
    ANTHROPIC_ERROR_TYPES,
    FINISH_REASONS,
    STOP_REASONS,
    anthropic_usage,
    openai_usage,
    usage_from_anthropic,
    usage_from_openai,
)

if TYPE_CHECKING:
    from gateway.exchange import Exchange

_encode = msgspec.json.encode
_DONE = b"data: [DONE]\n\n"
_MALFORMED = (TypeError, AttributeError, KeyError, ValueError, IndexError, msgspec.EncodeError)
_STATUS_BY_ANTHROPIC_TYPE = {kind: status for status, kind in ANTHROPIC_ERROR_TYPES.items()} | {"api_error": 500}


def _data(document: Any) -> bytes:
    return b"data: " + _encode(document) + b"\n\n"


def _named(document: dict[str, Any]) -> bytes:
    return b"event: " + document["type"].encode() + b"\ndata: " + _encode(document) + b"\n\n"


class _Converter:
    usage: Usage | None = None

    def feed(self, event: StreamEvent) -> bytes:
        raise NotImplementedError

    def end(self) -> bytes:
        raise NotImplementedError


class AnthropicToChat(_Converter):
    """Anthropic ``message_start`` ... ``message_stop`` as OpenAI ``chat.completion.chunk``s."""

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.head: dict[str, Any] = {}
        self.tail: dict[str, Any] = {"usage": None} if include_usage else {}
        self.blocks: dict[int, int] = {}  # Anthropic block index -> tool call index (text blocks: -1)
        self.tool_calls = 0
        self.usage_document: dict[str, Any] = {}
        self.done = False
        self.role_sent = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _data({**self.head, "choices": [choice], **self.tail})

    def _role(self) -> bytes:
        """OpenAI's first chunk of a text answer, once: the role and an empty content."""
        if self.role_sent:
            return b""
        self.role_sent = True
        return self._chunk({"role": "assistant", "content": "", "refusal": None})

    def feed(self, event: StreamEvent) -> bytes:
        document = event.json()
        if not isinstance(document, dict):
            return b""
        kind = document.get("type")
        if kind == "content_block_delta":
            delta = document.get("delta") or {}
            delta_type = delta.get("type")
            if delta_type == "text_delta":
                return self._role() + self._chunk({"content": delta.get("text", "")})
            if delta_type == "input_json_delta":
                call = self.blocks.get(document.get("index", -1), -1)
                partial = delta.get("partial_json")
                if call < 0 or not partial:
                    return b""
                return self._chunk({"tool_calls": [{"index": call, "function": {"arguments": partial}}]})
            return b""  # thinking, signature and citation deltas have no chunk
        if kind == "content_block_start":
            block = document.get("content_block") or {}
            block_type = block.get("type")
            if block_type == "tool_use":
                call = self.blocks[document.get("index", 0)] = self.tool_calls
                self.tool_calls += 1
                function = {"name": block.get("name"), "arguments": ""}
                tool_calls = [{"index": call, "id": block.get("id"), "type": "function", "function": function}]
                if self.role_sent:
                    return self._chunk({"tool_calls": tool_calls})
                # An answer that opens with a tool call: OpenAI's first chunk has a null content.
                self.role_sent = True
                return self._chunk({"role": "assistant", "content": None, "refusal": None, "tool_calls": tool_calls})
            if block_type == "text":
                out = self._role()
                return out + self._chunk({"content": block["text"]}) if block.get("text") else out
            return b""
        if kind == "message_start":
            message = document.get("message") or {}
            self.head = {
                "id": message.get("id"),
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": message.get("model"),
            }
            self.usage_document = dict(message.get("usage") or {})
            self.usage = usage_from_anthropic(self.usage_document)
            # The role chunk waits for the first block: its content is "" before text, null before a tool call.
            return b""
        if kind == "message_delta":
            # message_delta's usage counts are running totals, the absent ones unchanged
            self.usage_document.update((k, v) for k, v in (document.get("usage") or {}).items() if v is not None)
            self.usage = usage_from_anthropic(self.usage_document)
            stop_reason = (document.get("delta") or {}).get("stop_reason")
            return self._role() + self._chunk({}, FINISH_REASONS.get(stop_reason or "end_turn", "stop"))
        if kind == "message_stop":
            self.done = True
            if self.include_usage and self.usage is not None:
                return _data({**self.head, "choices": [], "usage": openai_usage(self.usage)}) + _DONE
            return _DONE
        if kind == "error" or event.name == "error":
            raise _stream_error(document.get("error"))
        return b""  # ping, content_block_stop

    def end(self) -> bytes:
        if not self.done:
            raise upstream_error("The provider's stream ended before message_stop.")
        return b""


class ChatToAnthropic(_Converter):
    """OpenAI ``chat.completion.chunk``s as Anthropic's full event sequence."""

    def __init__(self, model: str | None) -> None:
        self.model = model
        self.started = False
        self.open: int | None = None  # index of the open content block
        self.open_kind = ""
        self.next_block = 0
        self.tool_blocks: dict[int, int] = {}  # OpenAI tool call index -> Anthropic block index
        self.stop_reason: str | None = None
        self.refused = False
        self.done = False

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self.started = True
        message = {
            "id": chunk.get("id"),
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model") or self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _named({"type": "message_start", "message": message})

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        index, self.open = self.open, None
        return _named({"type": "content_block_stop", "index": index})

    def _open(self, block: dict[str, Any], kind: str) -> tuple[int, bytes]:
        out = self._close()
        index = self.open = self.next_block
        self.open_kind = kind
        self.next_block += 1
        return index, out + _named({"type": "content_block_start", "index": index, "content_block": block})

    def _text(self, text: str) -> bytes:
        out = b""
        if self.open is None or self.open_kind != "text":
            _, out = self._open({"type": "text", "text": ""}, "text")
        return out + _named({"type": "content_block_delta", "index": self.open, "delta": {"type": "text_delta", "text": text}})

    def feed(self, event: StreamEvent) -> bytes:
        if event.is_done:
            return self._finish()
        chunk = event.json()
        if not isinstance(chunk, dict):
            return b""
        if "error" in chunk and "choices" not in chunk:
            raise _stream_error(chunk.get("error"), openai=True)
        usage = chunk.get("usage")
        if not self.started and not chunk.get("choices") and not isinstance(usage, dict):
            # Azure OpenAI opens with a chunk of prompt filter results, no choices, an empty
            # id and model: message_start waits for the first real chunk and takes its id.
            return b""
        out = b"" if self.started else self._start(chunk)
        if isinstance(usage, dict):
            self.usage = usage_from_openai(usage)
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                out += self._text(text)
            refusal = delta.get("refusal")
            if refusal:
                self.refused = True
                out += self._text(refusal)
            for call in delta.get("tool_calls") or ():
                position = call.get("index", 0)
                function = call.get("function") or {}
                index = self.tool_blocks.get(position)
                if index is None:
                    block = {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": {}}
                    index, opened = self._open(block, "tool_use")
                    self.tool_blocks[position] = index
                    out += opened
                arguments = function.get("arguments")
                if arguments:
                    delta_event = {"type": "input_json_delta", "partial_json": arguments}
                    out += _named({"type": "content_block_delta", "index": index, "delta": delta_event})
            finish = choice.get("finish_reason")
            if finish:
                self.stop_reason = "refusal" if self.refused else STOP_REASONS.get(finish, "end_turn")
                out += self._close()
        return out

    def _finish(self) -> bytes:
        if self.done:
            return b""
        if not self.started or self.stop_reason is None:
            raise upstream_error("The provider's stream ended before its finish reason.")
        self.done = True
        usage = anthropic_usage(self.usage or Usage())
        delta = {"type": "message_delta", "delta": {"stop_reason": self.stop_reason, "stop_sequence": None}, "usage": usage}
        return self._close() + _named(delta) + _named({"type": "message_stop"})

    def end(self) -> bytes:
        # Some compatible servers end without [DONE]; a finish reason is enough.
        return self._finish()


def _stream_error(error: Any, openai: bool = False) -> GatewayError:
    """A provider's error event, to end the caller's stream with one in its own shape."""
    error = error if isinstance(error, dict) else {}
    message = error.get("message") if isinstance(error.get("message"), str) else "The provider's stream failed."
    if openai:
        code = error.get("code") or error.get("type") or "upstream_error"
        return GatewayError(502, str(code), message)
    kind = str(error.get("type") or "api_error")
    return GatewayError(_STATUS_BY_ANTHROPIC_TYPE.get(kind, 502), kind, message)


async def translated_stream(stream: AsyncIterator[bytes], converter: _Converter, exchange: Exchange) -> AsyncIterator[bytes]:
    """The provider's stream in the caller's shape, each event translated as it arrives.

    The provider's usage goes into ``exchange.usage`` as it is reported, so the
    CLIENT span and ``complete`` hooks have it whatever the caller asked for."""
    events = SSEBuffer()
    seen: Usage | None = None
    try:
        async for data in stream:
            out = b""
            for raw in events.feed(data):
                try:
                    out += converter.feed(StreamEvent(raw))
                except _MALFORMED:
                    raise upstream_error("The provider sent a stream event of an unexpected shape.") from None
                if converter.usage is not seen:
                    seen = converter.usage
                    exchange.usage = msgspec.structs.replace(seen)  # the relay adds to its own copy
            if out:
                yield out
        tail = converter.end()
        if tail:
            yield tail
        if seen is None:
            # The provider reported no usage (a compatible server that ignores stream_options):
            # the zeros the caller's last event had to carry are no count, and the relay read
            # them as one. None again, so that cost estimates the tokens as for an untranslated stream.
            exchange.usage = None
    finally:
        await close_stream(stream)
