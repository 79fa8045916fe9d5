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

import msgspec

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


class Slot(msgspec.Struct, gc=False):
    """A string in a decoded JSON document: ``container[key]``.

    A struct rather than a plain class: built in C, it costs a third of an
    ``__init__`` call, and every request builds one per text. Untracked by the
    garbage collector: the document never refers back to it, so it is in no cycle."""

    container: Any
    key: Any
    text: str

    def set(self, text: str) -> None:
        self.container[self.key] = text
        self.text = text


def slots(document: Any) -> list[Slot]:
    """Every text to scan in a request or answer body, in document order.

    Iterative (an explicit stack), so a body nested as deep as the JSON decoder
    allows cannot exhaust the interpreter's stack."""
    if type(document) is dict:
        plain = _plain_chat(document)
        if plain is not None:
            return plain
    found: list[Slot] = []
    # Slots, or (node, inside a text-bearing key); children go on in reverse so
    # they come off in document order.
    stack: list[Any] = [(document, False)]
    while stack:
        item = stack.pop()
        if isinstance(item, Slot):
            found.append(item)
            continue
        node, inside = item
        children: list[Any] = []
        if isinstance(node, dict):
            for key, value in node.items():
                if key in SKIP_KEYS:
                    continue
                text_key = inside or key in TEXT_KEYS
                if isinstance(value, str):
                    if text_key and value:
                        children.append(Slot(node, key, value))
                elif isinstance(value, (dict, list)):
                    children.append((value, text_key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                if isinstance(value, str):
                    if inside and value:
                        children.append(Slot(node, index, value))
                elif isinstance(value, (dict, list)):
                    children.append((value, inside))
        stack.extend(reversed(children))
    return found


def _plain_chat(document: dict[str, Any]) -> list[Slot] | None:
    """The common case fast: chat messages of string content and scalar options
    (None: anything else, for the general walk)."""
    found: list[Slot] = []
    for key, value in document.items():
        if key == "messages" and type(value) is list:
            for message in value:
                if type(message) is not dict or not _PLAIN_MESSAGE_KEYS.issuperset(message):
                    return None
                content = message.get("content")
                if type(content) is str:
                    if content:
                        found.append(Slot(message, "content", content))
                elif content is not None:
                    return None
        elif type(value) in _SCALARS:
            if key in TEXT_KEYS and type(value) is str:
                return None
        elif key not in SKIP_KEYS:
            return None
    return found


_PLAIN_MESSAGE_KEYS = frozenset({"role", "name", "content"})
_SCALARS = frozenset({str, int, float, bool, type(None)})


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
