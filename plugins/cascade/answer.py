"""What a validator reads: the question asked and the draft's answer, in either API's shape.

The cascade sees the caller's shape (OpenAI chat/completions or Anthropic messages:
the core translates at the provider boundary), buffered or streamed. Both are read
into one :class:`Question` and one :class:`Draft` so validators need not care.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from gateway import StreamEvent
from gateway.exchange import MAX_REPORTED_TOKENS, SSEBuffer

#: finish reasons in OpenAI's words; Anthropic's stop reasons are mapped to them
_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}


@dataclass
class Question:
    """The request as validators see it."""

    text: str
    #: the request's ``response_format`` type: "json_object", "json_schema" or None
    json_mode: str | None = None
    json_schema: dict[str, Any] | None = None
    #: tool name -> its JSON schema of arguments
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, document: dict[str, Any]) -> Question:
        texts: list[str] = []
        system = document.get("system")
        if system is not None:
            texts.append(_text(system))
        for message in _items(document.get("messages")):
            if isinstance(message, dict) and message.get("role") in ("user", "system", "developer"):
                texts.append(_text(message.get("content")))
        json_mode = schema = None
        response_format = document.get("response_format")
        if isinstance(response_format, dict):
            json_mode = response_format.get("type") if response_format.get("type") != "text" else None
            wrapped = response_format.get("json_schema")
            if isinstance(wrapped, dict) and isinstance(wrapped.get("schema"), dict):
                schema = wrapped["schema"]
        tools: dict[str, dict[str, Any]] = {}
        for tool in _items(document.get("tools")):
            if not isinstance(tool, dict):
                continue
            function = tool.get("function") if tool.get("type") == "function" else tool  # OpenAI | Anthropic
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                parameters = function.get("parameters", function.get("input_schema"))
                tools[function["name"]] = parameters if isinstance(parameters, dict) else {}
        return cls("\n".join(t for t in texts if t), json_mode, schema, tools)


@dataclass
class Draft:
    """The draft model's answer."""

    text: str = ""
    #: OpenAI's finish reason ("stop", "length", "tool_calls", "content_filter") or None
    finish: str | None = None
    #: (tool name, arguments as a JSON string)
    tool_calls: list[tuple[str, str]] = field(default_factory=list)
    #: token log-probabilities, when the provider returned them
    logprobs: list[float] | None = None
    #: (input_tokens, output_tokens) as reported
    usage: tuple[int | None, int | None] = (None, None)


def _items(value: Any) -> list[Any]:
    """A request's list field, or nothing when a caller sent something else (the upstream judges it)."""
    return value if isinstance(value, list) else []


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def _usage(document: dict[str, Any]) -> tuple[int | None, int | None]:
    usage = document.get("usage")
    if not isinstance(usage, dict):
        return None, None
    return (
        _count(usage.get("prompt_tokens", usage.get("input_tokens"))),
        _count(usage.get("completion_tokens", usage.get("output_tokens"))),
    )


def _count(value: Any) -> int | None:
    """A token figure as reported, or None for a provider's garbage (not an int, below zero, absurd)."""
    return value if type(value) is int and 0 <= value <= MAX_REPORTED_TOKENS else None


def draft_from_body(body: bytes) -> Draft:
    """A buffered OpenAI chat completion or Anthropic message."""
    try:
        document = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return Draft()
    if not isinstance(document, dict):
        return Draft()
    draft = Draft(usage=_usage(document))
    if document.get("type") == "message":  # Anthropic
        texts = []
        for block in document.get("content") or ():
            if block.get("type") == "text":
                texts.append(block.get("text", ""))
            elif block.get("type") == "tool_use":
                draft.tool_calls.append((block.get("name", ""), msgspec.json.encode(block.get("input", {})).decode()))
        draft.text = "".join(texts)
        draft.finish = _STOP_REASONS.get(document.get("stop_reason") or "", document.get("stop_reason"))
        return draft
    choices = document.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    draft.text = message.get("content") or ""
    draft.finish = choice.get("finish_reason")
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        draft.tool_calls.append((function.get("name", ""), function.get("arguments") or ""))
    draft.logprobs = _logprobs(choice.get("logprobs"))
    return draft


def _logprobs(block: Any) -> list[float] | None:
    if not isinstance(block, dict) or not isinstance(block.get("content"), list):
        return None
    return [item["logprob"] for item in block["content"] if isinstance(item, dict) and isinstance(item.get("logprob"), (int, float))]


class StreamReader:
    """Reads a streamed draft event by event into a :class:`Draft`."""

    def __init__(self) -> None:
        self.draft = Draft()
        self.events = SSEBuffer()
        self._texts: list[str] = []
        self._calls: dict[int, list[str]] = {}  # index -> [name, arguments...]
        self._logprobs: list[float] = []
        self._anthropic_blocks: dict[int, str] = {}  # block index -> "text" | "tool_use"

    def feed(self, data: bytes) -> None:
        for raw in self.events.feed(data):
            document = StreamEvent(raw).json()
            if isinstance(document, dict):
                self._read(document)

    def _read(self, document: dict[str, Any]) -> None:
        kind = document.get("type")
        if kind is None:  # an OpenAI chat.completion.chunk
            if document.get("usage"):
                self.draft.usage = _usage(document)
            for choice in document.get("choices") or ():
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    self._texts.append(delta["content"])
                for call in delta.get("tool_calls") or ():
                    parts = self._calls.setdefault(call.get("index", 0), ["", ""])
                    function = call.get("function") or {}
                    parts[0] += function.get("name") or ""
                    parts[1] += function.get("arguments") or ""
                if choice.get("finish_reason"):
                    self.draft.finish = choice["finish_reason"]
                found = _logprobs(choice.get("logprobs"))
                if found:
                    self._logprobs.extend(found)
            return
        if kind == "message_start":
            input_tokens, _ = _usage(document.get("message") or {})
            self.draft.usage = (input_tokens, self.draft.usage[1])
        elif kind == "content_block_start":
            block = document.get("content_block") or {}
            index = document.get("index", 0)
            self._anthropic_blocks[index] = block.get("type", "")
            if block.get("type") == "tool_use":
                self._calls[index] = [block.get("name", ""), ""]
        elif kind == "content_block_delta":
            delta = document.get("delta") or {}
            if delta.get("type") == "text_delta":
                self._texts.append(delta.get("text", ""))
            elif delta.get("type") == "input_json_delta":
                self._calls.setdefault(document.get("index", 0), ["", ""])[1] += delta.get("partial_json", "")
        elif kind == "message_delta":
            reason = (document.get("delta") or {}).get("stop_reason")
            if reason:
                self.draft.finish = _STOP_REASONS.get(reason, reason)
            _, output_tokens = _usage(document)
            if output_tokens is not None:
                self.draft.usage = (self.draft.usage[0], output_tokens)

    def result(self) -> Draft:
        draft = self.draft
        draft.text = "".join(self._texts)
        draft.tool_calls = [(name, arguments or "{}") for name, arguments in (self._calls[i] for i in sorted(self._calls))]
        draft.logprobs = self._logprobs or None
        return draft
