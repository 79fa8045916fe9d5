"""Where the texts are in a request, an answer or a stream event.

One walk serves every API shape: OpenAI chat (string and content-part messages,
tool call arguments, tool results), completions prompts, embeddings input, the
Responses API (instructions, input items, function call outputs), Anthropic
messages (system, text, tool_use input, tool_result content), and the answers of
each. A string is scanned when it sits under a text-bearing key (``content``,
``text``, ``prompt``, ``input``...), at any depth below it. Identifiers, roles,
types, images and audio are never scanned; nor are tool *definitions* (``tools``),
which the application writes, not the caller.

A :class:`Slot` is a place in the decoded document (container and key), so a
redaction writes the new text back where it was.
"""

from __future__ import annotations

from typing import Any

#: keys whose string values (and every string below them) are texts to scan
TEXT_KEYS = frozenset(
    {
        "content", "text", "prompt", "input", "instructions", "system", "arguments",
        "output", "partial_json", "delta", "refusal", "query", "suffix", "thinking",
    }
)  # fmt: skip
#: keys never scanned nor walked into: ids, roles, types, media, schemas, definitions
SKIP_KEYS = frozenset(
    {
        "model", "role", "type", "id", "name", "tool_call_id", "tool_use_id", "call_id", "object",
        "image_url", "input_audio", "audio", "image", "source", "file", "file_data", "file_id",
        "data", "url", "media_type", "detail", "format", "cache_control", "signature",
        "tools", "tool_choice", "response_format", "metadata", "logprobs", "stop", "status",
        "finish_reason", "stop_reason", "usage", "embedding", "encoding_format", "index",
        "logit_bias", "user", "service_tier", "system_fingerprint", "annotations",
    }
)  # fmt: skip


class Slot:
    """A string in a decoded JSON document: ``container[key]``."""

    __slots__ = ("container", "key", "text")

    def __init__(self, container: Any, key: Any, text: str) -> None:
        self.container = container
        self.key = key
        self.text = text

    def set(self, text: str) -> None:
        self.container[self.key] = text
        self.text = text


def slots(document: Any) -> list[Slot]:
    """Every text to scan in a request or answer body, in document order."""
    found: list[Slot] = []
    if isinstance(document, dict):
        _walk_dict(document, False, found)
    elif isinstance(document, list):
        _walk_list(document, False, found)
    return found


def _walk_dict(node: dict[str, Any], inside: bool, found: list[Slot]) -> None:
    for key, value in node.items():
        if key in SKIP_KEYS:
            continue
        text_key = inside or key in TEXT_KEYS
        if isinstance(value, str):
            if text_key and value:
                found.append(Slot(node, key, value))
        elif isinstance(value, dict):
            _walk_dict(value, text_key, found)
        elif isinstance(value, list):
            _walk_list(value, text_key, found)


def _walk_list(node: list[Any], inside: bool, found: list[Slot]) -> None:
    for index, value in enumerate(node):
        if isinstance(value, str):
            if inside and value:
                found.append(Slot(node, index, value))
        elif isinstance(value, dict):
            _walk_dict(value, inside, found)
        elif isinstance(value, list):
            _walk_list(value, inside, found)


def stream_slots(document: Any) -> list[tuple[tuple[Any, ...], Slot]]:
    """The text deltas of one stream event, each with the key of the stream it extends.

    OpenAI chat: ``choices[i].delta.content`` / ``.refusal`` / ``.tool_calls[j].function.arguments``;
    completions: ``choices[i].text``; Responses: ``*.delta`` events; Anthropic:
    ``content_block_delta`` (``delta.text``, ``delta.partial_json``, ``delta.thinking``).
    """
    if not isinstance(document, dict):
        return []
    found: list[tuple[tuple[Any, ...], Slot]] = []
    choices = document.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            delta = choice.get("delta")
            if isinstance(delta, dict):
                for key in ("content", "refusal"):
                    value = delta.get(key)
                    if isinstance(value, str) and value:
                        found.append((("choice", index, key), Slot(delta, key, value)))
                calls = delta.get("tool_calls")
                if isinstance(calls, list):
                    for call in calls:
                        function = call.get("function") if isinstance(call, dict) else None
                        if isinstance(function, dict):
                            value = function.get("arguments")
                            if isinstance(value, str) and value:
                                key = ("choice", index, "tool", call.get("index", 0))
                                found.append((key, Slot(function, "arguments", value)))
            text = choice.get("text")
            if isinstance(text, str) and text:
                found.append((("choice", index, "text"), Slot(choice, "text", text)))
        return found
    kind = document.get("type")
    if kind == "content_block_delta":
        delta = document.get("delta")
        if isinstance(delta, dict):
            for key in ("text", "partial_json", "thinking"):
                value = delta.get(key)
                if isinstance(value, str) and value:
                    found.append((("block", document.get("index", 0), key), Slot(delta, key, value)))
    elif isinstance(kind, str) and kind.startswith("response.") and kind.endswith(".delta"):
        value = document.get("delta")
        if isinstance(value, str) and value:
            key = ("response", document.get("output_index", 0), document.get("content_index", 0), kind)
            found.append((key, Slot(document, "delta", value)))
    return found
