"""The record of one call through the gateway, as every plugin sees it.

An :class:`Exchange` carries the caller's request (body bytes, JSON decoded at most
once and only when someone asks), who the caller is, the route and provider, the
answer once there is one, usage and cost once known, and typed per-plugin state.
A :class:`Response` is an answer, from the upstream or from a plugin, buffered
(``body``) or streamed (``stream`` of raw SSE bytes).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import GatewayError, invalid_request

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.proxy import Provider

T = TypeVar("T")

_decode = msgspec.json.decode
_encode = msgspec.json.Encoder().encode
_UNSET: Any = object()


class StashKey(Generic[T]):
    """A typed key for :attr:`Exchange.state`, so plugins never clash on a string."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"StashKey({self.name!r})"


class Stash(dict):  # type: ignore[type-arg]
    """Per-exchange plugin state keyed by :class:`StashKey`."""

    if TYPE_CHECKING:  # typed for plugins' type checkers; at run time dict's own (C) methods

        def __getitem__(self, key: StashKey[T]) -> T: ...

        def get(self, key: StashKey[T], default: Any = None) -> T | Any: ...  # type: ignore[override]


class Usage(msgspec.Struct, kw_only=True):
    """Token counts of one call; the latest figure reported for each field wins.

    ``input_tokens`` counts every prompt token, cached ones included;
    ``cached_input_tokens`` (OpenAI ``cached_tokens``, Anthropic cache reads) and
    ``cache_write_tokens`` (Anthropic cache creation) say how many of them were
    cache reads and writes; ``reasoning_tokens`` are part of ``output_tokens``.
    ``estimated`` is set when the figures were counted by the gateway, not reported.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


_NO_USAGE: tuple[None, None, None, None, None] = (None, None, None, None, None)

#: POST paths the providers do not bill: counting a prompt's tokens (Anthropic's, OpenAI's
#: Responses'). No usage comes back, so there is nothing to charge, reserve or settle.
UNBILLED_PATHS = frozenset({"/v1/messages/count_tokens", "/v1/responses/input_tokens"})


#: the most tokens one usage figure may report. A provider's figure above it or below
#: zero is garbage, taken as not reported (so it is estimated, when cost estimates): one
#: of 2**64 stopped the usage ledger for good, since SQLite stores at most 2**63 - 1.
MAX_REPORTED_TOKENS = 10**9


def _int(value: Any) -> int | None:
    return value if type(value) is int and 0 <= value <= MAX_REPORTED_TOKENS else None


def _detail(usage: dict[str, Any], key: str, field: str) -> int | None:
    details = usage.get(key)
    return _int(details.get(field)) if isinstance(details, dict) else None


def usage_details(document: Any) -> tuple[int | None, int | None, int | None, int | None, int | None]:
    """Input, output, cached-input, cache-write and reasoning tokens from an OpenAI or
    Anthropic body, stream event or chunk; None for each figure it does not give.

    Understands chat/completions and completions (``prompt_tokens``,
    ``completion_tokens``, ``prompt_tokens_details.cached_tokens``,
    ``completion_tokens_details.reasoning_tokens``), embeddings, the Responses API
    (``input_tokens``, ``input_tokens_details``, ``output_tokens_details``; streamed in
    ``response.completed``) and Anthropic messages (streamed in
    ``message_start.message.usage`` and, cumulatively, ``message_delta.usage``).
    Anthropic's ``input_tokens`` leave out cache reads and writes; here input counts
    every prompt token, so they are added back (see :class:`Usage`).
    """
    if not isinstance(document, dict):
        return _NO_USAGE
    usage = document.get("usage")
    if usage is None:
        nested = document.get("message") or document.get("response")
        usage = nested.get("usage") if isinstance(nested, dict) else None
    if not isinstance(usage, dict):
        return _NO_USAGE
    prompt = _int(usage.get("prompt_tokens"))
    if prompt is not None or "completion_tokens" in usage:  # chat/completions, completions, embeddings
        return (
            prompt,
            _int(usage.get("completion_tokens")),
            _detail(usage, "prompt_tokens_details", "cached_tokens"),
            None,
            _detail(usage, "completion_tokens_details", "reasoning_tokens"),
        )
    input_tokens = _int(usage.get("input_tokens"))
    output_tokens = _int(usage.get("output_tokens"))
    if "input_tokens_details" in usage or "output_tokens_details" in usage:  # the Responses API
        return (
            input_tokens,
            output_tokens,
            _detail(usage, "input_tokens_details", "cached_tokens"),
            None,
            _detail(usage, "output_tokens_details", "reasoning_tokens"),
        )
    cache_read = _int(usage.get("cache_read_input_tokens"))
    cache_write = _int(usage.get("cache_creation_input_tokens"))
    if input_tokens is not None and (cache_read or cache_write):
        input_tokens += (cache_read or 0) + (cache_write or 0)
    return input_tokens, output_tokens, cache_read, cache_write, None


def usage_from(document: Any) -> tuple[int | None, int | None]:
    """Input and output tokens alone (see :func:`usage_details`)."""
    figures = usage_details(document)
    return figures[0], figures[1]


def carries_usage(raw: bytes) -> bool:
    """Whether a streamed event may hold usage figures: cheap, on raw bytes.

    With ``stream_options.include_usage`` every OpenAI chunk carries
    ``"usage": null``; those are not worth decoding."""
    return b'"usage"' in raw and b'"usage":null' not in raw and b'"usage": null' not in raw


class Response:
    """An answer: from the upstream, or made by a plugin to end the chain early.

    Exactly one of ``body`` (bytes) and ``stream`` (an async iterator of raw
    ``text/event-stream`` bytes) is set.
    """

    __slots__ = ("status", "headers", "body", "stream", "_json")

    def __init__(
        self,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        stream: AsyncIterator[bytes] | None = None,
    ) -> None:
        self.status = status
        self.headers: CIMultiDict[str] = headers if isinstance(headers, CIMultiDict) else CIMultiDict(headers or {})
        self.body = body if stream is not None or body is not None else b""
        self.stream = stream
        self._json: Any = _UNSET

    @classmethod
    def json_response(cls, document: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        response = cls(status, headers, _encode(document))
        response.headers["Content-Type"] = "application/json"
        response._json = document
        return response

    @property
    def is_stream(self) -> bool:
        return self.stream is not None

    def json(self) -> Any:
        """The body decoded once (None for a stream or a body that is not JSON)."""
        if self._json is _UNSET:
            try:
                self._json = _decode(self.body) if self.body else None
            except (msgspec.DecodeError, RecursionError):
                self._json = None
        return self._json


class StreamEvent:
    """One server-sent event of a streamed answer, as the ``chunk`` hook sees it.

    ``raw`` is the event's bytes including its terminating blank line. A hook may
    :meth:`replace` the data, or set ``drop`` to leave the event out.
    """

    __slots__ = ("raw", "drop", "_json")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.drop = False
        self._json: Any = _UNSET

    @property
    def name(self) -> str | None:
        """The ``event:`` field (Anthropic names every event; OpenAI none)."""
        for line in self.raw.splitlines():
            if line.startswith(b"event:"):
                return line[6:].strip().decode()
        return None

    @property
    def data(self) -> bytes:
        """The ``data:`` field (lines joined with newlines, per the SSE spec)."""
        parts = [line[5:].removeprefix(b" ") for line in self.raw.splitlines() if line.startswith(b"data:")]
        return b"\n".join(parts)

    @property
    def is_done(self) -> bool:
        return self.data == b"[DONE]"

    def json(self) -> Any:
        """The data decoded once (None for ``[DONE]`` or data that is not JSON)."""
        if self._json is _UNSET:
            try:
                data = self.data
                self._json = _decode(data) if data and data != b"[DONE]" else None
            except (msgspec.DecodeError, RecursionError):
                self._json = None
        return self._json

    def replace(self, document: Any) -> None:
        """Set new data (a JSON-able document or bytes), keeping the event name."""
        data = document if isinstance(document, bytes) else _encode(document)
        name = self.name
        head = f"event: {name}\n".encode() if name else b""
        self.raw = head + b"data: " + data + b"\n\n"
        self._json = _UNSET if isinstance(document, bytes) else document


class SSEBuffer:
    """Cuts a byte stream into whole server-sent events (each ends with a blank line)."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self.pending + data if self.pending else data
        events = []
        start = 0
        crlf = b"\r" in buffer  # the providers end lines with \n alone; CRLF is rare
        while True:
            end, width = buffer.find(b"\n\n", start), 2
            if crlf:
                crlf_end = buffer.find(b"\r\n\r\n", start)
                if crlf_end >= 0 and (end < 0 or crlf_end < end):
                    end, width = crlf_end, 4
            if end < 0:
                break
            events.append(buffer[start : end + width])
            start = end + width
        self.pending = buffer[start:]
        return events


async def close_stream(stream: AsyncIterator[bytes]) -> None:
    """Close a stream early or late; for the upstream's, this drops its connection."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


class Exchange:
    """One request through the gateway; what each plugin hook receives."""

    __slots__ = (
        "request",
        "method",
        "path",
        "query_string",
        "headers",
        "request_id",
        "caller",
        "client",
        "provider",
        "api",
        "response",
        "error",
        "response_headers",
        "cost_usd",
        "threat_severity",
        "cache_status",
        "cascade_decision",
        "served_model",
        "requested_model",
        "unserved_usage",
        "baseline_cost_usd",
        "upstream_s",
        "gateway_s",
        "first_token_s",
        "state",
        "started_at",
        "attempts",
        "recording",
        "reached",
        "completed",
        "_deferred",
        "_skipped",
        "_chunk_spans",
        "_body",
        "_json",
        "_json_type",
        "_usage",
    )

    def __init__(
        self,
        request: web.BaseRequest | None,
        *,
        method: str,
        path: str,
        query_string: str = "",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        request_id: str = "",
        caller: str = "",
        client: str | None = None,
    ) -> None:
        self.request = request
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers: CIMultiDictProxy[str] | Mapping[str, str] = headers if headers is not None else CIMultiDict()
        self.request_id = request_id
        #: who is calling: the client's name with virtual keys, else x-gateway-user, else the address
        self.caller = caller
        #: the virtual client's name when ``clients`` are configured
        self.client = client
        self.provider: Provider | None = None
        #: the caller's API shape, for bodies, streams and errors: "openai" or "anthropic".
        #: From the path; for paths both APIs have (/v1/models), Anthropic's SDKs send anthropic-version.
        if path.startswith("/v1/messages"):
            self.api = "anthropic"
        elif path.startswith("/v1/chat/") or headers is None or "anthropic-version" not in headers:
            self.api = "openai"
        else:
            self.api = "anthropic"
        self.response: Response | None = None
        #: the error the gateway answered with, if it did (set before ``complete``)
        self.error: GatewayError | None = None
        #: headers to add to the answer the caller gets (x-gateway-cache, x-ratelimit-*...)
        self.response_headers: dict[str, str] = {}
        self._usage: Usage | None = None
        #: what the call cost, once a cost plugin knows (set by the cost plugin)
        self.cost_usd: float | None = None
        # Facts one plugin finds and others read, without importing each other:
        #: the highest severity a scanner found ("LOW" ... "CRITICAL"), None when clean or not scanned
        self.threat_severity: str | None = None
        #: "hit" (answered from a cache: no tokens spent), "miss" or "bypass"; None without a cache
        self.cache_status: str | None = None
        #: "accepted" (the draft model answered) or "escalated"; None without a cascade
        self.cascade_decision: str | None = None
        #: the model that answered when a plugin changed it (fallback, cascade, alias): ``x-gateway-model``
        self.served_model: str | None = None
        #: the model the caller asked for, when a plugin sent the request to another (cascade)
        self.requested_model: str | None = None
        #: (model, usage) of upstream answers the caller never got (a cascade's rejected draft): cost charges them
        self.unserved_usage: list[tuple[str, Usage]] = []
        #: what asking ``requested_model`` directly would have cost (set by cost when a cascade changed the model)
        self.baseline_cost_usd: float | None = None
        #: seconds spent waiting for upstream answers' headers, over every attempt (``Server-Timing``)
        self.upstream_s = 0.0
        #: the gateway's own seconds until the answer's headers, as ``Server-Timing`` reports them (set with it)
        self.gateway_s: float | None = None
        #: seconds from the request's arrival to the first streamed event relayed to the caller (streams only)
        self.first_token_s: float | None = None
        self.state = Stash()
        self.started_at = time.perf_counter()
        #: upstream attempts so far (retries, fallbacks and cascade steps each add one)
        self.attempts = 0
        #: whether this exchange's spans are sampled (hook spans are made only then)
        self.recording = False
        #: chain index of the last plugin whose ``request`` ran (-1: none yet)
        self.reached = -1
        #: set once the ``complete`` hooks have run (they run once)
        self.completed = False
        #: (chain index, decision) deferred by ``request`` hooks (core: awaited after the last one)
        self._deferred: list[tuple[int, Coroutine[Any, Any, None]]] | None = None
        #: (core) chain indexes of the plugins that failed open on this exchange: their later hooks skip it
        self._skipped: set[int] | None = None
        #: (core) chain index -> the span of that plugin's chunk hook, while a traced stream is relayed
        self._chunk_spans: dict[int, Any] | None = None
        self._body = body
        self._json: Any = _UNSET
        self._json_type: bool | None = None  # whether Content-Type allows JSON (read once)

    def defer(self, decision: Coroutine[Any, Any, None]) -> None:
        """From a ``request`` hook: await ``decision`` after the last ``request`` hook, not now.

        For a plugin whose verdict waits on a backend: it sends its call at once, then
        defers the wait, so that the calls of the plugins after it leave in the same
        round trip (a Redis pipeline) instead of one round trip each. The decision may
        raise a ``GatewayError`` (the caller's answer: it comes before anything a later
        hook raised or answered) or fail under the plugin's ``on_error``. The later
        ``request`` hooks have run by then, so their ``complete`` hooks run too; they
        must not depend on facts the decision sets."""
        entry = (self.reached, decision)
        if self._deferred is None:
            self._deferred = [entry]
        else:
            self._deferred.append(entry)

    @property
    def body(self) -> bytes:
        return self._body

    @body.setter
    def body(self, value: bytes) -> None:
        self._body = value
        self._json = _UNSET

    def json(self) -> Any:
        """The request body decoded once; None for an empty body.

        Raises the 400 ``invalid_request`` answer when the body is not a JSON object.
        """
        if self._json is _UNSET:
            if not self._body:
                self._json = None
                return None
            try:
                document = _decode(self._body)
            except msgspec.DecodeError as exc:
                raise invalid_request(f"Request body is not valid JSON: {exc}") from None
            except RecursionError:  # msgspec's answer to very deep nesting
                raise invalid_request("Request body is nested too deeply.") from None
            if not isinstance(document, dict):
                raise invalid_request("Request body must be a JSON object.")
            self._json = document
        return self._json

    def set_json(self, document: dict[str, Any]) -> None:
        """Replace the body with ``document`` (the upstream gets the new bytes)."""
        self._body = _encode(document)
        self._json = document

    @property
    def provider_api(self) -> str:
        """The API shape of the provider of this attempt: ``api``, unless the provider
        speaks only the other one, and then the core translates request and answer."""
        provider = self.provider
        return self.api if provider is None or provider.api is None else provider.api

    @property
    def has_json_body(self) -> bool:
        """Whether there is a body to read as JSON: any body but a multipart one (file
        and audio uploads). The Content-Type is not trusted further: most upstreams read
        a JSON body whatever it says (curl's default form type, text/plain), so a body
        the chain skipped for its Content-Type would reach them unscanned and uncounted."""
        json_type = self._json_type
        if json_type is None:
            content_type = self.headers.get("Content-Type", "")
            json_type = self._json_type = not content_type.lstrip().lower().startswith("multipart/")
        return json_type and bool(self._body)

    @property
    def model(self) -> str | None:
        """The body's ``model``; None without a JSON body. Decodes on first use."""
        if not self.has_json_body:
            return None
        model = self.json().get("model")
        return model if isinstance(model, str) else None

    @model.setter
    def model(self, value: str) -> None:
        """Send the request to ``value``; a change of model is ``served_model`` too (an
        alias, a fallback: ``x-gateway-model``), unless a plugin says otherwise after."""
        document = dict(self.json() or {})
        if document.get("model") != value:
            self.served_model = value
        document["model"] = value
        self.set_json(document)

    @property
    def stream(self) -> bool:
        """Whether the caller asked for a streamed answer (``"stream": true``)."""
        return self.has_json_body and self.json().get("stream") is True

    @property
    def usage(self) -> Usage | None:
        """Token counts, once known: read from a buffered answer on first use, or
        gathered event by event from a streamed one (so far, if the caller left)."""
        if self._usage is None:
            response = self.response
            if response is not None and response.body and b'"usage"' in response.body:
                self.add_usage(*usage_details(response.json()))
        return self._usage

    @usage.setter
    def usage(self, value: Usage | None) -> None:
        self._usage = value

    def add_usage(
        self,
        input_tokens: int | None,
        output_tokens: int | None,
        cached_input_tokens: int | None = None,
        cache_write_tokens: int | None = None,
        reasoning_tokens: int | None = None,
    ) -> None:
        """Record token counts as the upstream reports them (later figures win, field by field)."""
        if input_tokens is None and output_tokens is None:
            return
        usage = self._usage
        if usage is None:
            usage = self._usage = Usage()
        if input_tokens is not None:
            usage.input_tokens = input_tokens
        if output_tokens is not None:
            usage.output_tokens = output_tokens
        if cached_input_tokens is not None:
            usage.cached_input_tokens = cached_input_tokens
        if cache_write_tokens is not None:
            usage.cache_write_tokens = cache_write_tokens
        if reasoning_tokens is not None:
            usage.reasoning_tokens = reasoning_tokens

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started_at
