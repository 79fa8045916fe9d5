"""Translation between the OpenAI chat completions and Anthropic messages APIs.

The core calls it at the provider boundary (:meth:`gateway.proxy.Proxy.forward`)
when the caller's shape (``exchange.api``) is not one the provider speaks: the
request body and path before the upstream call, the answer, stream or error
after it. Plugins never see a translated body: they all work in the caller's shape.
See docs/translation.md for the mapping tables and what is not translated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from gateway.errors import upstream_error
from gateway.exchange import Response
from gateway.translate.answers import chat_to_message, error_to_anthropic, error_to_openai, message_to_chat
from gateway.translate.requests import Untranslatable, chat_to_messages, messages_to_chat
from gateway.translate.streams import AnthropicToChat, ChatToAnthropic, translated_stream

if TYPE_CHECKING:
    from gateway.exchange import Exchange

__all__ = ["Translation", "Untranslatable", "translate_error", "translate_request", "translate_response"]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode

CHAT_PATH = "/v1/chat/completions"
# What a body of the right JSON type but the wrong inner shapes makes the mappings raise.
_MALFORMED = (TypeError, AttributeError, KeyError, ValueError, IndexError, msgspec.EncodeError)
MESSAGES_PATH = "/v1/messages"


class Translation:
    """One translated attempt: what the provider gets, and what turning its answer back needs."""

    __slots__ = ("target", "path", "body", "include_usage", "model")

    def __init__(self, target: str, path: str, body: bytes, include_usage: bool, model: str | None) -> None:
        #: the provider's API shape: "openai" or "anthropic"
        self.target = target
        self.path = path
        self.body = body
        self.include_usage = include_usage
        self.model = model


def translate_request(exchange: Exchange, target: str, max_tokens_field: str = "max_completion_tokens") -> Translation | None:
    """The request for a provider that speaks ``target``; None when the path has no
    counterpart there (it is then sent as it is). Raises :class:`Untranslatable` (400 ``invalid_request``)."""
    path = exchange.path
    if exchange.method != "POST":
        return None
    document = exchange.json()
    if document is None:
        return None
    model = document.get("model")
    model = model if isinstance(model, str) else None
    try:
        if target == "anthropic" and path == CHAT_PATH:
            options = document.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            return Translation(target, MESSAGES_PATH, _encode(chat_to_messages(document)), include_usage, model)
        if target == "openai" and path == MESSAGES_PATH:
            return Translation(target, CHAT_PATH, _encode(messages_to_chat(document, max_tokens_field)), True, model)
    except _MALFORMED as exc:  # a value of the wrong type somewhere the mapping looked
        raise Untranslatable(f"The request cannot be translated for this provider: {type(exc).__name__}.") from None
    return None


def translate_response(response: Response, translation: Translation, exchange: Exchange) -> Response:
    """The provider's answer in the caller's shape: a buffered body, a stream, or an error (status kept)."""
    to_openai = translation.target == "anthropic"
    headers = response.headers
    if response.stream is not None:
        converter = AnthropicToChat(translation.include_usage) if to_openai else ChatToAnthropic(translation.model)
        response.stream = translated_stream(response.stream, converter, exchange)
        return response
    body = response.body or b""
    if response.status >= 400:
        translated = error_to_openai(response.status, body) if to_openai else error_to_anthropic(response.status, body)
        headers["Content-Type"] = "application/json"
        return Response(response.status, headers, translated)
    try:
        document: Any = _decode(body)
    except (msgspec.DecodeError, RecursionError):
        document = None
    if not isinstance(document, dict):
        raise upstream_error("The provider's answer is not JSON and cannot be translated.")
    try:
        answer, usage = message_to_chat(document) if to_openai else chat_to_message(document)
    except _MALFORMED:
        raise upstream_error("The provider's answer has an unexpected shape and cannot be translated.") from None
    exchange.usage = usage
    headers["Content-Type"] = "application/json"
    translated = Response(response.status, headers, _encode(answer))
    return translated


def translate_error(response: Response, provider_api: str) -> Response:
    """A provider's error to a request sent untranslated (a path with no counterpart in its
    API: embeddings, count_tokens...), in the caller's shape; any other answer as it is."""
    if response.status < 400 or response.stream is not None:
        return response
    translate = error_to_openai if provider_api == "anthropic" else error_to_anthropic
    headers = response.headers
    headers["Content-Type"] = "application/json"
    return Response(response.status, headers, translate(response.status, response.body or b""))
