"""Buffered answers and error bodies: Anthropic messages to OpenAI chat completions and back."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from gateway.exchange import Usage

_encode = msgspec.json.encode
_decode = msgspec.json.decode

#: Anthropic stop_reason -> OpenAI finish_reason
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
#: OpenAI finish_reason -> Anthropic stop_reason
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
#: Anthropic error type by status, for errors translated from OpenAI's shape
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
#: OpenAI error type by status, for errors translated from Anthropic's shape
OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


# -- usage ----------------------------------------------------------------------------------


def usage_from_anthropic(usage: Any) -> Usage:
    """Anthropic counts cache reads and writes apart from ``input_tokens``; Usage includes them."""
    if not isinstance(usage, dict):
        return Usage()
    read = usage.get("cache_read_input_tokens") or 0
    write = usage.get("cache_creation_input_tokens") or 0
    return Usage(
        input_tokens=(usage.get("input_tokens") or 0) + read + write,
        output_tokens=usage.get("output_tokens") or 0,
        cached_input_tokens=read,
        cache_write_tokens=write,
    )


def usage_from_openai(usage: Any) -> Usage:
    if not isinstance(usage, dict):
        return Usage()
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    if not isinstance(prompt_details, dict):
        prompt_details = {}
    return Usage(
        input_tokens=usage.get("prompt_tokens") or 0,
        output_tokens=usage.get("completion_tokens") or 0,
        cached_input_tokens=prompt_details.get("cached_tokens") or 0,
        cache_write_tokens=prompt_details.get("cache_write_tokens") or 0,
        reasoning_tokens=(completion_details.get("reasoning_tokens") or 0) if isinstance(completion_details, dict) else 0,
    )


def openai_usage(usage: Usage) -> dict[str, Any]:
    details = {"cached_tokens": usage.cached_input_tokens}
    if usage.cache_write_tokens:  # OpenAI's own field for them, sent only when there are some
        details["cache_write_tokens"] = usage.cache_write_tokens
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": details,
    }


def anthropic_usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
    }


# -- answers --------------------------------------------------------------------------------


def message_to_chat(message: dict[str, Any]) -> tuple[dict[str, Any], Usage]:
    """An Anthropic ``message`` as an OpenAI ``chat.completion`` (and its usage)."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            arguments = _encode(block.get("input") or {}).decode()
            calls.append({"id": block.get("id"), "type": "function", "function": {"name": block.get("name"), "arguments": arguments}})
        # thinking, redacted_thinking and server tool blocks have no place in a chat message
    stop_reason = message.get("stop_reason")
    refused = stop_reason == "refusal"
    text = "".join(texts)
    chat_message: dict[str, Any] = {
        "role": "assistant",
        "content": None if refused or (not texts and calls) else text,
        "refusal": (text or "The model refused to answer.") if refused else None,
    }
    if calls:
        chat_message["tool_calls"] = calls
    usage = usage_from_anthropic(message.get("usage"))
    choice = {
        "index": 0,
        "message": chat_message,
        "logprobs": None,
        "finish_reason": FINISH_REASONS.get(stop_reason or "end_turn", "stop"),
    }
    completion = {
        "id": message.get("id"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.get("model"),
        "choices": [choice],
        "usage": openai_usage(usage),
    }
    return completion, usage


def chat_to_message(completion: dict[str, Any]) -> tuple[dict[str, Any], Usage]:
    """An OpenAI ``chat.completion`` as an Anthropic ``message`` (and its usage); the first choice."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    chat_message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = chat_message.get("content")
    if isinstance(text, list):  # some compatible servers answer with parts
        text = "".join(part.get("text", "") for part in text if isinstance(part, dict))
    refusal = chat_message.get("refusal")
    if text:
        content.append({"type": "text", "text": text})
    elif refusal:
        content.append({"type": "text", "text": refusal})
    for call in chat_message.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append(
            {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": parse_arguments(function.get("arguments"))}
        )
    finish = choice.get("finish_reason")
    stop_reason = "refusal" if refusal and not text else STOP_REASONS.get(finish or "stop", "end_turn")
    usage = usage_from_openai(completion.get("usage"))
    message = {
        "id": completion.get("id"),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model"),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": anthropic_usage(usage),
    }
    return message, usage


def parse_arguments(arguments: Any) -> dict[str, Any]:
    """A tool call's JSON-string arguments as Anthropic's ``input`` object.

    Arguments that are not a JSON object (a model's malformed output) are kept,
    as a string, under ``arguments`` rather than lost."""
    if not arguments:
        return {}
    try:
        value = _decode(arguments) if isinstance(arguments, str | bytes) else arguments
    except (msgspec.DecodeError, RecursionError):
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": arguments}


# -- errors ---------------------------------------------------------------------------------


def error_to_openai(status: int, body: bytes) -> bytes:
    """An Anthropic error body (or any body) as OpenAI's ``{"error": {...}}``; status kept."""
    message, kind = _error_parts(body, anthropic=True)
    openai_type = OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return _encode({"error": {"message": message, "type": openai_type, "code": kind, "param": None}})


def error_to_anthropic(status: int, body: bytes) -> bytes:
    """An OpenAI error body (or any body) as Anthropic's ``{"type": "error", ...}``; status kept."""
    message, _ = _error_parts(body, anthropic=False)
    kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error")
    return _encode({"type": "error", "error": {"type": kind, "message": message}})


def _error_parts(body: bytes, anthropic: bool) -> tuple[str, str | None]:
    try:
        document = _decode(body) if body else None
    except (msgspec.DecodeError, RecursionError):
        document = None
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        kind = error.get("type") if anthropic else error.get("code") or error.get("type")
        return error["message"], kind if isinstance(kind, str) else None
    text = body[:500].decode(errors="replace").strip()
    return (f"The provider answered: {text}" if text else "The provider answered with an error."), None
