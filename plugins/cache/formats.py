"""An answer stored in one form, served in the other: a stream as JSON, JSON as a stream.

For OpenAI chat/completions and Anthropic messages a streamed answer holds
everything the buffered one does (and the reverse), so a caller that asks for
the other form still gets a hit. Each function returns None when it cannot
convert faithfully (an unknown event, a block type it does not know): the
caller of the cache then gets a miss, never a wrong answer.

Streams are the raw ``text/event-stream`` bytes as the upstream sent them.
"""

from __future__ import annotations

from typing import Any

import msgspec

_decode = msgspec.json.decode
_encode = msgspec.json.encode

#: answer kinds whose two forms convert into each other
CHAT = "chat"
MESSAGES = "messages"
KIND_BY_PATH = {"/v1/chat/completions": CHAT, "/v1/messages": MESSAGES}
#: the last event of a whole stream, per path (an answer cut before it is never stored)
STREAM_END = {
    "/v1/chat/completions": b"data: [DONE]",
    "/v1/completions": b"data: [DONE]",
    "/v1/messages": b"event: message_stop",
    "/v1/responses": b"event: response.completed",
}


def events(stream: bytes) -> list[tuple[str | None, bytes]]:
    """(event name, data) of every event in a whole SSE body."""
    found = []
    for block in stream.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not block.strip():
            continue
        name = None
        data = []
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data.append(line[5:].removeprefix(b" "))
        found.append((name, b"\n".join(data)))
    return found


def stream_is_whole(path: str, stream: bytes) -> bool:
    """The stream ended with its API's closing event and carried no error event."""
    end = STREAM_END.get(path)
    if end is None or end not in stream or not stream.endswith(b"\n\n"):
        return False
    return b"event: error" not in stream and b'data: {"error"' not in stream


# -- stream -> JSON ------------------------------------------------------------------


def stream_to_json(kind: str, stream: bytes) -> bytes | None:
    try:
        document = _chat_from_stream(stream) if kind == CHAT else _message_from_stream(stream)
    except (msgspec.DecodeError, RecursionError, KeyError, TypeError, ValueError, AttributeError):
        return None
    return None if document is None else _encode(document)


def _chat_from_stream(stream: bytes) -> dict[str, Any] | None:
    head: dict[str, Any] | None = None
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for _, data in events(stream):
        if data == b"[DONE]":
            break
        chunk = _decode(data)
        if head is None:
            head = {
                "id": chunk["id"],
                "object": "chat.completion",
                "created": chunk["created"],
                "model": chunk["model"],
            }
            if chunk.get("system_fingerprint") is not None:
                head["system_fingerprint"] = chunk["system_fingerprint"]
            if chunk.get("service_tier") is not None:
                head["service_tier"] = chunk["service_tier"]
        if chunk.get("usage"):
            usage = chunk["usage"]
        for part in chunk.get("choices") or ():
            index = part["index"]
            choice = choices.get(index)
            if choice is None:
                message = {"role": "assistant", "content": None, "refusal": None}
                choice = choices[index] = {"index": index, "message": message, "logprobs": None, "finish_reason": None}
            message = choice["message"]
            delta = part.get("delta") or {}
            if delta.get("role"):
                message["role"] = delta["role"]
            for field in ("content", "refusal"):
                if delta.get(field) is not None:
                    message[field] = (message[field] or "") + delta[field]
            for call in delta.get("tool_calls") or ():
                calls = message.setdefault("tool_calls", [])
                while len(calls) <= call["index"]:
                    calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                target = calls[call["index"]]
                if call.get("id"):
                    target["id"] = call["id"]
                if call.get("type"):
                    target["type"] = call["type"]
                function = call.get("function") or {}
                if function.get("name"):
                    target["function"]["name"] += function["name"]
                if function.get("arguments"):
                    target["function"]["arguments"] += function["arguments"]
            if part.get("finish_reason") is not None:
                choice["finish_reason"] = part["finish_reason"]
    if head is None or not choices:
        return None
    document = {**head, "choices": [choices[index] for index in sorted(choices)]}
    if usage is not None:
        document["usage"] = usage
    return document


def _message_from_stream(stream: bytes) -> dict[str, Any] | None:
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    partial_json: dict[int, str] = {}
    for name, data in events(stream):
        if name in ("ping", None):
            continue
        event = _decode(data)
        kind = event["type"]
        if kind == "message_start":
            message = dict(event["message"])
            message["usage"] = dict(message.get("usage") or {})
        elif message is None:
            return None
        elif kind == "content_block_start":
            blocks[event["index"]] = dict(event["content_block"])
        elif kind == "content_block_delta":
            block = blocks[event["index"]]
            delta = event["delta"]
            delta_type = delta["type"]
            if delta_type == "text_delta":
                block["text"] = block.get("text", "") + delta["text"]
            elif delta_type == "input_json_delta":
                partial_json[event["index"]] = partial_json.get(event["index"], "") + delta["partial_json"]
            elif delta_type == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + delta["thinking"]
            elif delta_type == "signature_delta":
                block["signature"] = block.get("signature", "") + delta["signature"]
            elif delta_type == "citations_delta":
                block.setdefault("citations", []).append(delta["citation"])
            else:
                return None
        elif kind == "content_block_stop":
            index = event["index"]
            if index in partial_json:
                text = partial_json.pop(index)
                blocks[index]["input"] = _decode(text) if text else {}
        elif kind == "message_delta":
            message.update(event.get("delta") or {})
            message["usage"].update(event.get("usage") or {})
        elif kind == "message_stop":
            break
        else:
            return None
    if message is None:
        return None
    message["content"] = [blocks[index] for index in sorted(blocks)]
    return message


# -- JSON -> stream ------------------------------------------------------------------


def json_to_stream(kind: str, body: bytes, include_usage: bool) -> bytes | None:
    """A whole SSE body for a stored JSON answer; ``include_usage`` is the caller's
    ``stream_options.include_usage`` (OpenAI sends the usage chunk only when asked)."""
    try:
        document = _decode(body)
        return _chat_to_stream(document, include_usage) if kind == CHAT else _message_to_stream(document)
    except (msgspec.DecodeError, RecursionError, KeyError, TypeError, ValueError, AttributeError):
        return None


def _sse(document: Any) -> bytes:
    return b"data: " + _encode(document) + b"\n\n"


def _typed(document: dict[str, Any]) -> bytes:
    return b"event: " + document["type"].encode() + b"\n" + _sse(document)


def _chat_to_stream(document: dict[str, Any], include_usage: bool) -> bytes | None:
    head = {
        "id": document["id"],
        "object": "chat.completion.chunk",
        "created": document["created"],
        "model": document["model"],
    }
    for field in ("system_fingerprint", "service_tier"):
        if document.get(field) is not None:
            head[field] = document[field]
    tail = {"usage": None} if include_usage else {}
    out = []
    for choice in document["choices"]:
        index = choice["index"]
        message = choice["message"]

        def chunk(delta: dict[str, Any], finish: str | None = None, index: int = index) -> bytes:
            return _sse(
                {
                    **head,
                    "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
                    **tail,
                }
            )

        out.append(chunk({"role": message.get("role", "assistant"), "content": ""}))
        if message.get("content"):
            out.append(chunk({"content": message["content"]}))
        if message.get("refusal"):
            out.append(chunk({"refusal": message["refusal"]}))
        for position, call in enumerate(message.get("tool_calls") or ()):
            delta_call = {
                "index": position,
                "id": call["id"],
                "type": call.get("type", "function"),
                "function": call["function"],
            }
            out.append(chunk({"tool_calls": [delta_call]}))
        out.append(chunk({}, choice.get("finish_reason") or "stop"))
    if include_usage and document.get("usage") is not None:
        out.append(_sse({**head, "choices": [], "usage": document["usage"]}))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def _message_to_stream(message: dict[str, Any]) -> bytes | None:
    usage = message.get("usage") or {}
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 0},
    }
    out = [_typed({"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        if kind == "text":
            opening = {key: value for key, value in block.items() if key not in ("text", "citations")}
            out.append(
                _typed({"type": "content_block_start", "index": index, "content_block": {**opening, "text": ""}})
            )
            out.append(
                _typed(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": block["text"]},
                    }
                )
            )
        elif kind in ("tool_use", "server_tool_use"):
            opening = {**block, "input": {}}
            out.append(_typed({"type": "content_block_start", "index": index, "content_block": opening}))
            partial = _encode(block.get("input") or {}).decode()
            out.append(
                _typed(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": partial},
                    }
                )
            )
        elif kind == "thinking":
            out.append(
                _typed(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                    }
                )
            )
            out.append(
                _typed(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "thinking_delta", "thinking": block["thinking"]},
                    }
                )
            )
            out.append(
                _typed(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "signature_delta", "signature": block.get("signature", "")},
                    }
                )
            )
        elif kind == "redacted_thinking":
            out.append(_typed({"type": "content_block_start", "index": index, "content_block": block}))
        else:
            return None
        out.append(_typed({"type": "content_block_stop", "index": index}))
    delta = {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")}
    out.append(
        _typed({"type": "message_delta", "delta": delta, "usage": {"output_tokens": usage.get("output_tokens", 0)}})
    )
    out.append(_typed({"type": "message_stop"}))
    return b"".join(out)


# -- stream -> stream ----------------------------------------------------------------


def drop_usage_chunk(stream: bytes) -> bytes:
    """An OpenAI stream without its usage-only chunk (``"choices": []``), for a caller
    that did not ask for ``stream_options.include_usage``."""
    kept = []
    for block in stream.split(b"\n\n"):
        if block and b'"choices":[]' in block and b'"usage":{' in block:
            continue
        kept.append(block)
    return b"\n\n".join(kept)
