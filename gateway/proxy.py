"""The data plane: routes, providers, the upstream hop and the streaming relay.

One :class:`Provider` per configured upstream owns one pool of keep-alive
connections (:mod:`gateway.upstream`). A provider of type ``mock`` answers in-process from
:mod:`gateway.mock_upstream`, with no socket. :class:`Proxy` is the aiohttp
handler for every data-plane path: it reads the body once, knows the caller, routes,
runs the chain around the upstream call and relays the answer, streams event by
event with backpressure.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from fnmatch import translate
from random import getrandbits as _random_bits
from time import perf_counter
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from yarl import URL

from gateway.config import OFFICIAL_BASE_URLS, GatewayConfig, ProviderConfig, RouteConfig
from gateway.cors import SECURITY_HEADERS, Cors, cors_not_allowed, is_preflight
from gateway.errors import (
    GatewayError,
    client_closed_request,
    error_body,
    invalid_api_key,
    invalid_request,
    request_too_large,
    route_not_found,
    upstream_error,
    upstream_timeout,
)
from gateway.exchange import Exchange, Response, SSEBuffer, StreamEvent, carries_usage, close_stream, usage_details
from gateway.mock_upstream import MockUpstream
from gateway.redact import redact_bytes
from gateway.telemetry import (
    end_client_span_on_answer,
    end_client_span_on_error,
    end_server_span,
    start_client_span,
    start_server_span,
)
from gateway.translate import translate_error, translate_request, translate_response
from gateway.upstream import UpstreamPool

if TYPE_CHECKING:
    from gateway.chain import Chain

log = logging.getLogger("gateway.proxy")

#: the request id of the exchange being served, for log lines (see gateway.logs)
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Headers that describe one connection, not the message (RFC 9110 7.6.1), and those
# the HTTP client sets itself (the upstream's answer reaches the caller decoded, so the
# caller's Accept-Encoding is not the upstream's business); never copied from one side
# to the other.
HOP_BY_HOP = frozenset(
    {
        "accept-encoding",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# The caller's credentials: replaced by the provider's key unless it is 'passthrough'.
CALLER_CREDENTIALS = frozenset({"authorization", "x-api-key", "api-key"})
# Dropped from a request whose body aiohttp decoded (its Content-Encoding is one it knows).
DECODED_REQUEST = frozenset({"content-encoding"})
# Dropped from upstream answers: the upstream client has decoded the body, and what a
# browser may read is the gateway's to say (cors), not the provider's.
DECODED_RESPONSE = HOP_BY_HOP | {
    "content-encoding",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
}

# First path segments of the OpenAI and Anthropic APIs: an SDK whose base_url lacks
# "/v1" calls "/chat/completions", which the gateway serves as "/v1/chat/completions".
API_RESOURCES = frozenset(
    {
        "chat", "completions", "embeddings", "models", "responses", "messages", "moderations",
        "images", "audio", "files", "batches", "uploads", "fine_tuning", "vector_stores",
    }
)  # fmt: skip

_VERSION_SEGMENT = re.compile(r"/v\d+[a-z0-9]*(/|$)")


def normalize_path(path: str) -> str:
    """The path the router and the upstream see: dot segments removed, empty ones
    dropped, and "/v1" added where an SDK's base_url lacked it.

    Raises 400 ``invalid_request`` for a path whose ``..`` would climb above the root,
    for one that hides a ``..`` behind an encoded slash, a backslash or a ``;``, and for
    a target that is not a path at all (``*``, an authority): the path is appended to
    the provider's base URL, so it must never be able to change its host.
    """
    if not path.startswith("/"):
        raise invalid_request("The request target must be a path starting with '/'.")
    if "/." in path or "//" in path or "%2" in path:  # the common path skips the walk
        path = _remove_dot_segments(path)
        if ".." in path or "%2e" in path or "%2E" in path:
            _refuse_hidden_dot_dot(path)
    elif ".." in path:
        _refuse_hidden_dot_dot(path)
    if path.startswith("/v1/") or path == "/v1":
        return path
    first = path[1:].split("/", 1)[0]
    return "/v1" + path if first in API_RESOURCES else path


_HIDDEN_SEPARATORS = re.compile(r"%2[fF]|%5[cC]|\\|;")


def _refuse_hidden_dot_dot(path: str) -> None:
    """A ``..`` left after RFC 3986 removal sits inside a segment (``a%2f..%2fb``,
    ``..;``, ``\\..\\``): an upstream or a framework that decodes or splits
    differently would climb with it, so it is refused rather than forwarded."""
    dots = _HIDDEN_SEPARATORS.sub("/", path.replace("%2e", ".").replace("%2E", "."))
    if ".." in dots.split("/"):
        raise invalid_request("The request path hides a '..' segment.")


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 on a raw path, with ``%2e`` read as ``.`` (so ``%2e%2e`` is ``..``);
    never forwards a ``..``. Encoded slashes stay encoded: they are not separators."""
    segments: list[str] = []
    parts = path.split("/")
    for index, segment in enumerate(parts[1:], start=1):
        dots = segment.replace("%2e", ".").replace("%2E", ".")
        if dots == "..":
            if not segments:
                raise invalid_request("The request path climbs above the root ('..').")
            segments.pop()
        elif dots == "." or (not segment and index < len(parts) - 1):
            continue
        else:
            segments.append(segment)
    if parts[-1] in ("", ".", "..", "%2e", "%2E") and segments and segments[-1] != "":
        segments.append("")  # "/v1/models/." is the folder "/v1/models/"
    return "/" + "/".join(segments)


def _request_timeout(timeout_s: float) -> GatewayError:
    """408: the core's own answer to a slow body (not a plugin helper: plugins never see one)."""
    return GatewayError(408, "request_timeout", f"Request body was not received within {timeout_s:g} s.")


def unreadable_body(exc: BaseException) -> GatewayError:
    """400 ``invalid_request`` for a body that failed while it was read: a malformed
    chunk, a Content-Encoding that does not decode. The message never quotes the
    parser's (which may hold a key); what follows the bad bytes cannot be framed, so
    the connection is closed after the answer."""
    if isinstance(exc, ContentEncodingError) or isinstance(exc.__cause__, ContentEncodingError):
        message = "The request body could not be read: its Content-Encoding does not decode."
    else:
        message = "The request body's framing (chunked encoding) is malformed."
    error = invalid_request(message)
    error.headers = {"Connection": "close"}
    return error


def server_timing(exchange: Exchange) -> str:
    """``gateway;dur=MS, upstream;dur=MS``: the gateway's own time so far and the
    upstream's (until its answer's headers), so callers see the overhead in their tools."""
    upstream_s = exchange.upstream_s
    gateway_s = exchange.gateway_s = max(perf_counter() - exchange.started_at - upstream_s, 0.0)
    return "gateway;dur=%.3f, upstream;dur=%.3f" % (gateway_s * 1000, upstream_s * 1000)  # noqa: UP031 (hot path)


def new_request_id() -> str:
    return "%032x" % _random_bits(128)  # noqa: UP031 (the fastest spelling, on every request)


class Provider:
    """An upstream LLM API reached over HTTP, with its own connection pool."""

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.type = config.type
        self.timeout_s = config.timeout_s
        #: the API shape this provider speaks (None: both, as the mock does)
        self.api: str | None = config.type if config.type in ("openai", "anthropic") else None
        #: the caller shapes it serves without translation
        self.apis = frozenset({self.api} if self.api else {"openai", "anthropic"})
        self.passthrough = config.api_key == "passthrough"
        self.extra_headers = dict(config.headers)
        if config.api_key and not self.passthrough:
            key_header = config.api_key_header or ("x-api-key" if config.type == "anthropic" else "Authorization")
            bearer = key_header.lower() == "authorization"
            self.extra_headers[key_header] = f"Bearer {config.api_key}" if bearer else config.api_key
        base = (config.base_url or OFFICIAL_BASE_URLS.get(config.type, "")).rstrip("/")
        # A base_url that already names an API version (/v1, /openai/v1, /v1beta/openai),
        # as SDKs write it, gets the path without its own /v1.
        self.strip_v1 = _VERSION_SEGMENT.search(URL(base).path if base else "") is not None
        self.base_url = base
        host = URL(base).host or "" if base else ""
        #: OpenAI itself (and Azure) want max_completion_tokens; other compatible servers know max_tokens
        self.max_tokens_field = (
            "max_completion_tokens" if host == "api.openai.com" or host.endswith(".openai.azure.com") else "max_tokens"
        )
        self.max_connections = config.max_connections
        self.pool: UpstreamPool | None = None
        base_url = URL(base) if base else URL()
        #: the base URL's own path, which every request target starts with
        self.target_prefix = base_url.raw_path.rstrip("/")
        self.server_address = base_url.host or ""
        self.server_port = base_url.port or 0

    def __repr__(self) -> str:
        return f"<Provider {self.name} {self.type} {self.base_url}>"

    async def start(self) -> None:
        # timeout_s bounds the connect and every wait for the upstream: the answer's
        # headers, a buffered body, and the gap between two events of a stream.
        self.pool = UpstreamPool(self.base_url, limit=self.max_connections, timeout_s=self.timeout_s)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    def url_for(self, path: str, query_string: str) -> str:
        return self.base_url[: len(self.base_url) - len(self.target_prefix)] + self.target_for(path, query_string)

    def target_for(self, path: str, query_string: str) -> str:
        """The request target sent upstream: the base URL's path, then the caller's."""
        if self.strip_v1 and (path.startswith("/v1/") or path == "/v1"):
            path = path[3:]
        target = self.target_prefix + path
        return f"{target}?{query_string}" if query_string else target

    def upstream_headers(self, exchange: Exchange) -> CIMultiDict[str]:
        """The caller's headers minus hop-by-hop, credentials and gateway-only ones,
        plus the provider's key and headers, the request id and the trace context."""
        headers: CIMultiDict[str] = CIMultiDict()
        keep_credentials = self.passthrough
        incoming = exchange.headers
        named = _named_by_connection(incoming)
        drop = HOP_BY_HOP | named if named else HOP_BY_HOP
        request = exchange.request
        if request is not None and request._message.compression is not None:
            # aiohttp decoded the body (gzip, deflate, br, zstd): it goes up plain, and
            # its length is the HTTP client's to set from the bytes sent.
            drop = drop | DECODED_REQUEST
        for name, value in incoming.items():
            lower = name.lower()
            if lower in drop or lower.startswith("x-gateway-"):
                continue
            if lower in CALLER_CREDENTIALS and not keep_credentials:
                continue
            headers.add(name, value)
        headers.update(self.extra_headers)
        if self.type == "anthropic" and "anthropic-version" not in headers:
            headers["anthropic-version"] = "2023-06-01"
        headers["x-request-id"] = exchange.request_id
        if exchange.recording or "traceparent" in headers:
            propagate.inject(headers)
        return headers

    async def send(self, exchange: Exchange, path: str | None = None, body: bytes | None = None) -> Response:
        """One attempt: raises 504 upstream_timeout or 502 upstream_error.

        ``path`` and ``body`` replace the exchange's for a translated request, which goes
        without the caller's query string: that belongs to the caller's API (the anthropic
        SDK's ``?beta=true``, an Azure ``api-version``), not the provider's."""
        pool = self.pool
        if pool is None:
            raise upstream_error(f"Provider {self.name} is not started.")
        try:
            answer = await pool.request(
                exchange.method,
                self.target_for(exchange.path, exchange.query_string) if path is None else self.target_for(path, ""),
                self.upstream_headers(exchange),
                exchange.body if body is None else body,
            )
        except TimeoutError:
            raise upstream_timeout(f"Provider {self.name} did not answer within {self.timeout_s:g} s.") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise upstream_error(f"Provider {self.name} failed: {type(exc).__name__}.") from None
        body = answer.body
        if answer.status >= 400 and body:  # a provider that quotes the key it was sent ("Invalid key: sk-...")
            body = redact_bytes(body)
        elif (
            answer.stream is None
            and answer.status < 300
            and exchange.method == "POST"
            and (path or exchange.path) in JSON_ANSWERS
            and not _frames_a_json_object(body)
        ):
            raise upstream_error(
                f"Provider {self.name} answered {answer.status} with a body that is not a JSON object."
            )
        return Response(answer.status, _answer_headers(answer.headers), body, answer.stream)


class MockProvider(Provider):
    """The built-in fake provider, answered in-process (no socket)."""

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        self.mock = MockUpstream(config.mock, name)
        # No socket: spans name the in-process provider as mock://<name>/...
        self.base_url = f"mock://{name}"
        self.server_address = name

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def send(self, exchange: Exchange, path: str | None = None, body: bytes | None = None) -> Response:
        try:
            async with asyncio.timeout(self.timeout_s):
                reply = await self.mock.handle(
                    exchange.method,
                    path or exchange.path,
                    exchange.query_string if path is None else "",
                    self.upstream_headers(exchange),
                    exchange.body if body is None else body,
                )
        except TimeoutError:
            raise upstream_timeout(f"Provider {self.name} did not answer within {self.timeout_s:g} s.") from None
        if reply.chunks is not None:
            return Response(reply.status, reply.headers, stream=_idle_timeout(reply.chunks, self.timeout_s))
        return Response(reply.status, reply.headers, reply.body)


async def _idle_timeout(chunks: AsyncIterator[bytes], timeout_s: float) -> AsyncIterator[bytes]:
    """A stream whose every gap is bounded, as ``sock_read`` bounds an HTTP provider's."""
    iterator = aiter(chunks)
    try:
        while True:
            async with asyncio.timeout(timeout_s):
                try:
                    data = await anext(iterator)
                except StopAsyncIteration:
                    return
            yield data
    finally:
        await close_stream(iterator)


#: the POST paths whose successful buffered answer is a JSON object, in both APIs: one
#: that is not (an HTML page from a proxy on the way, a body cut short, nothing) is
#: unusable, a 502 ``upstream_error`` (SPEC), which the breaker counts as a failure
JSON_ANSWERS = frozenset(
    {
        "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/moderations", "/v1/responses",
        "/v1/messages", "/v1/messages/count_tokens", "/v1/responses/input_tokens",
    }
)  # fmt: skip


def _frames_a_json_object(body: bytes) -> bool:
    """Whether ``body`` starts with ``{`` and ends with ``}`` (whitespace aside): a check
    on two bytes, not a parse, so an answer no plugin reads costs nothing more."""
    if body[:1] == b"{" and body[-1:] == b"}":
        return True
    body = body.strip()
    return body[:1] == b"{" and body[-1:] == b"}"


def make_provider(name: str, config: ProviderConfig) -> Provider:
    return MockProvider(name, config) if config.type == "mock" else Provider(name, config)


def _named_by_connection(headers: Any) -> frozenset[str]:
    """The headers a Connection header names: this hop's too (RFC 9110 7.6.1).

    Parsed once per distinct value (nearly every answer says ``keep-alive``)."""
    connection = headers.get("Connection")
    if not connection:
        return _NO_NAMES
    named = _CONNECTION_NAMES.get(connection)
    if named is None:
        named = frozenset(token.strip().lower() for token in connection.split(",") if token.strip())
        if len(_CONNECTION_NAMES) < MAX_CONNECTION_VALUES:  # values are the peers' to choose: bounded
            _CONNECTION_NAMES[connection] = named
    return named


_NO_NAMES: frozenset[str] = frozenset()
_CONNECTION_NAMES: dict[str, frozenset[str]] = {}
#: distinct Connection header values whose parse is kept
MAX_CONNECTION_VALUES = 64


def _answer_headers(headers: CIMultiDict[str]) -> CIMultiDict[str]:
    """The upstream's answer headers, minus this hop's and what the gateway decides (in place):
    an ``x-gateway-*`` header is a fact of this gateway's (a cache hit, a cost, a threat),
    never the upstream's to state, also when the plugin that would set it is not in the chain."""
    for name in _named_by_connection(headers):
        headers.popall(name, None)
    for name in DECODED_RESPONSE:
        headers.popall(name, None)
    if "x-gateway-" in " ".join(headers).lower():  # one test in C (0.3 µs); true only of a spoofing upstream
        for name in [name for name in headers if name[:10].lower() == "x-gateway-"]:
            headers.popall(name, None)
    return headers


class Route:
    """One entry of ``routes``: a path prefix, a model glob, or both."""

    __slots__ = ("prefix", "model", "provider", "_model_match")

    def __init__(self, config: RouteConfig, provider: Provider) -> None:
        self.prefix = config.prefix
        self.model = config.model
        self.provider = provider
        self._model_match: Callable[[str], Any] | None = (
            re.compile(translate(config.model)).match if config.model is not None else None
        )

    def matches(self, exchange: Exchange) -> bool:
        if self.prefix is not None and not exchange.path.startswith(self.prefix):
            return False
        if self._model_match is not None:
            model = exchange.model
            return model is not None and self._model_match(model) is not None
        return True

    def accepts(self, path: str, model: str) -> bool:
        """Whether a request for ``path`` and ``model`` takes this route."""
        if self.prefix is not None and not path.startswith(self.prefix):
            return False
        return self._model_match is None or self._model_match(model) is not None


class Router:
    """First matching route wins; without routes, the defaults of SPEC.md."""

    def __init__(self, config: GatewayConfig, providers: dict[str, Provider]) -> None:
        self.routes = tuple(Route(route, providers[route.provider]) for route in config.routes)
        #: whether a route matches on the body's model (a changed model may then change the provider)
        self.by_model = any(route.model is not None for route in self.routes)

        def first(*types: str) -> Provider | None:
            for wanted in types:
                for provider in providers.values():
                    if provider.type == wanted:
                        return provider
            return None

        self.default_messages = first("anthropic", "mock")
        self.default_other = first("openai", "mock")
        # With no provider of the caller's API, a chat goes to one of the other, translated.
        self.translated_messages = first("openai")
        self.translated_chat = first("anthropic")

    def for_model(self, path: str, model: str) -> Provider | None:
        """Where the routes send a request for ``path`` and ``model``: the provider of the
        first route it takes; None when none does. For a model a plugin changes (an alias,
        a cascade's draft), which the routing of the request's own model did not see."""
        for route in self.routes:
            if route.accepts(path, model):
                return route.provider
        return None

    def provider_for(self, exchange: Exchange) -> Provider:
        for route in self.routes:
            if route.matches(exchange):
                return route.provider
        if self.routes:
            raise route_not_found(exchange.path)
        path = exchange.path
        if path.startswith("/v1/messages"):
            provider = self.default_messages
            if provider is None and path == "/v1/messages":
                provider = self.translated_messages
        else:
            provider = self.default_other
            if provider is None and path == "/v1/chat/completions":
                provider = self.translated_chat
        if provider is None:
            raise route_not_found(path)
        return provider


class Proxy:
    """The aiohttp handler of every data-plane request."""

    chain: Chain  # set by the Gateway once the chain is built around ``forward``

    def __init__(
        self,
        config: GatewayConfig,
        router: Router,
        tracer: trace.Tracer,
        background: set[asyncio.Task[Any]],
        *,
        roots_unsampled: bool = False,
    ) -> None:
        self.router = router
        self.tracer = tracer
        self.roots_unsampled = roots_unsampled
        self.max_body_bytes = config.limits.max_body_bytes
        self.body_timeout_s = config.limits.body_timeout_s
        self.clients = {client.key: name for name, client in config.clients.items()}
        self.cors = Cors(config.cors) if config.cors.allow_origins else None
        self.background = background
        #: answers by (provider or "-", status), for /stats and /metrics
        self.answers: Counter[tuple[str, int]] = Counter()
        #: the handler tasks of the requests being served (the drain cancels leftovers)
        self.serving: set[asyncio.Task[Any]] = set()
        #: the complete hooks' task of each exchange whose handler waits for it
        self._completing: dict[Exchange, asyncio.Task[None]] = {}
        #: called once per exchange when it is over, with its status and SERVER span (metrics, access log)
        self.finished: Callable[[Exchange, int, trace.Span | None], None] = _ignore

    @property
    def in_flight(self) -> int:
        return len(self.serving)

    async def forward(self, exchange: Exchange) -> Response:
        """The core of the send onion: one attempt at ``exchange.provider``, in a CLIENT span."""
        provider = exchange.provider
        assert provider is not None
        if exchange.api not in provider.apis:
            return await self._forward_translated(exchange, provider)
        exchange.attempts += 1
        started = perf_counter()
        if not exchange.recording:
            try:
                return await provider.send(exchange)
            finally:
                exchange.upstream_s += perf_counter() - started
        span, token = start_client_span(self.tracer, exchange, provider)
        try:
            response = await provider.send(exchange)
        except BaseException as exc:
            end_client_span_on_error(span, exc)
            raise
        finally:
            otel_context.detach(token)
            exchange.upstream_s += perf_counter() - started
        return end_client_span_on_answer(span, response, exchange)

    async def _forward_translated(self, exchange: Exchange, provider: Provider) -> Response:
        """One attempt at a provider of the other API: the request translated before,
        the answer after; the CLIENT span sees the provider's own shapes."""
        assert provider.api is not None
        translation = translate_request(exchange, provider.api, provider.max_tokens_field)
        path = body = None
        if translation is not None:
            path, body = translation.path, translation.body
        exchange.attempts += 1
        started = perf_counter()
        if not exchange.recording:
            try:
                response = await provider.send(exchange, path, body)
            finally:
                exchange.upstream_s += perf_counter() - started
        else:
            span, token = start_client_span(self.tracer, exchange, provider, path)
            try:
                response = await provider.send(exchange, path, body)
            except BaseException as exc:
                end_client_span_on_error(span, exc)
                raise
            finally:
                otel_context.detach(token)
                exchange.upstream_s += perf_counter() - started
            response = end_client_span_on_answer(span, response, exchange)
        if translation is None:
            return translate_error(response, provider.api)
        return translate_response(response, translation, exchange)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        headers = request.headers
        request_id = headers.get("x-request-id") or new_request_id()
        request_id_var.set(request_id)
        rel_url = request.rel_url
        refused: GatewayError | None = None
        try:
            path = normalize_path(rel_url.raw_path)
        except GatewayError as error:
            path, refused = "/", error
        exchange = Exchange(
            request,
            method=request.method,
            path=path,
            query_string=rel_url.raw_query_string,
            headers=headers,
            request_id=request_id,
        )
        # Sampled off and no caller trace to continue: no span, no context at all.
        traced = not self.roots_unsampled or "traceparent" in headers
        if traced:
            span, token = start_server_span(self.tracer, request, exchange)
        # The loop named: without it, Python 3.11 asks get_running_loop(), a getpid() system call.
        task = asyncio.current_task(request.task.get_loop())
        self.serving.add(task)  # type: ignore[arg-type]
        status = 0
        try:
            answer = await self._serve(request, exchange, refused)
            error = exchange.error
            status = 499 if error is not None and error.status == 499 else answer.status
            return answer
        except asyncio.CancelledError:
            # The caller left (or the drain deadline passed): the upstream call is
            # already cancelled; count what was used all the same.
            if exchange.error is None:  # an error already answered (a broken stream) stays the record's
                exchange.error = client_closed_request()
            self._complete(exchange)
            status = 499
            raise
        finally:
            self.serving.discard(task)  # type: ignore[arg-type]
            provider_name = exchange.provider.name if exchange.provider is not None and exchange.attempts else "-"
            self.answers[(provider_name, status)] += 1
            server_span = span if traced else None
            completing = self._completing.pop(exchange, None)
            if completing is None:
                self._over(exchange, status, server_span, provider_name)
            else:  # once the complete hooks are done: they may still count tokens and cost
                final_status = status  # (the callback runs in this context: the span's, for the log lines)
                completing.add_done_callback(lambda _: self._over(exchange, final_status, server_span, provider_name))
            if traced:
                otel_context.detach(token)

    def _over(self, exchange: Exchange, status: int, span: trace.Span | None, provider_name: str) -> None:
        """The exchange is over: its records, and its SERVER span's end (with what ``complete`` found)."""
        self.finished(exchange, status, span)
        if span is not None:
            end_server_span(span, exchange, status, provider_name)

    async def _serve(
        self, request: web.BaseRequest, exchange: Exchange, refused: GatewayError | None = None
    ) -> web.StreamResponse:
        chain = self.chain
        try:
            if refused is not None:
                raise refused
            if is_preflight(exchange.method, exchange.headers):
                return self._preflight(exchange)
            self._identify(exchange)
            exchange.body = await self._read_body(request)
            routed = exchange.provider = self.router.provider_for(exchange)
            # An empty stage costs nothing: no coroutine is made for it.
            if chain.request_hooks:
                answer = await chain.request(exchange)
                # A plugin changed the model (an alias) and left the provider: the new model's route.
                rerouted = exchange.served_model is not None and exchange.provider is routed
                if rerouted and answer is None and self.router.by_model:
                    model = exchange.model
                    if model is not None:
                        exchange.provider = self.router.for_model(exchange.path, model) or routed
            else:
                answer, exchange.reached = None, chain.last_index
            if answer is None:
                answer = await chain.send(exchange)
            if chain.response_hooks:
                answer = await chain.response(exchange, answer)
        except GatewayError as error:
            exchange.error = error
            reply = self._error_reply(exchange, error)
            return await self._finish(request, exchange, reply)
        exchange.response = answer
        headers = answer.headers
        headers["x-request-id"] = exchange.request_id
        if exchange.attempts:
            headers["x-gateway-provider"] = exchange.provider.name  # type: ignore[union-attr]
        if exchange.served_model is not None:
            headers["x-gateway-model"] = exchange.served_model
        headers["Server-Timing"] = server_timing(exchange)
        if exchange.response_headers:
            headers.update(exchange.response_headers)
        headers.update(SECURITY_HEADERS)
        if self.cors is not None and "Origin" in exchange.headers:
            self._allow_origin(exchange, headers)
        if answer.stream is not None:
            return await self._relay(request, exchange, answer)
        return await self._finish(request, exchange, web.Response(status=answer.status, body=answer.body, headers=headers))

    def _preflight(self, exchange: Exchange) -> web.Response:
        """A CORS preflight is the gateway's to answer: never forwarded, no key needed."""
        if self.cors is None:
            raise cors_not_allowed("Cross-origin calls are not enabled (cors.allow_origins is empty).")
        headers = self.cors.preflight(exchange.headers)
        headers.update(SECURITY_HEADERS)
        headers["x-request-id"] = exchange.request_id
        headers["Server-Timing"] = server_timing(exchange)  # as on every answer the gateway gives
        return web.Response(status=204, headers=headers)

    def _allow_origin(self, exchange: Exchange, headers: Any) -> None:
        assert self.cors is not None
        origin = exchange.headers["Origin"]
        if self.cors.allows(origin):
            headers.update(self.cors.answer_headers(origin))

    def _identify(self, exchange: Exchange) -> None:
        headers = exchange.headers
        if self.clients:
            authorization = headers.get("Authorization", "")
            if authorization[:7].lower() == "bearer ":
                key = authorization[7:].strip()
            else:
                key = headers.get("x-api-key", "")
            client = self.clients.get(key) if key else None
            if client is None:
                raise invalid_api_key("Missing or unknown API key: present a gateway client key.")
            exchange.client = exchange.caller = client
        else:
            exchange.caller = headers.get("x-gateway-user") or (exchange.request.remote if exchange.request else "") or ""

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise request_too_large(self.max_body_bytes)
        if not request.body_exists:
            return b""
        content = request.content
        try:
            if content.is_eof():  # the whole body is in already: no wait to bound, one call to take it
                body = content.read_nowait()
                if len(body) > self.max_body_bytes:
                    raise request_too_large(self.max_body_bytes)
                return body
            async with asyncio.timeout(self.body_timeout_s):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise request_too_large(self.max_body_bytes) from None
        except TimeoutError:
            raise _request_timeout(self.body_timeout_s) from None
        except (RequestPayloadError, HttpProcessingError) as exc:
            # The parser stopped feeding this body: mark it ended, so aiohttp does not
            # linger over it after the answer (and log its error again).
            content.feed_eof()
            raise unreadable_body(exc) from None

    def _error_reply(self, exchange: Exchange, error: GatewayError) -> web.Response:
        headers = {
            "Content-Type": "application/json",
            "x-request-id": exchange.request_id,
            "Server-Timing": server_timing(exchange),
            "Cache-Control": "no-store",
            **SECURITY_HEADERS,
        }
        if exchange.attempts:  # an upstream was called: name it, as an answer does (a 502/504 most of all)
            headers["x-gateway-provider"] = exchange.provider.name  # type: ignore[union-attr]
            if exchange.served_model is not None:
                headers["x-gateway-model"] = exchange.served_model
        headers.update(error.headers)
        headers.update(exchange.response_headers)
        if self.cors is not None and "Origin" in exchange.headers:
            self._allow_origin(exchange, headers)
        level = logging.WARNING if error.status >= 500 else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "answered %s %s: %s", error.status, error.code, error.message, extra={"status": error.status, "code": error.code})
        reply = web.Response(status=error.status, body=error_body(error, exchange.api), headers=headers)
        if headers.get("Connection") == "close":
            reply.force_close()  # aiohttp then closes the connection once the answer is out
        return reply

    async def _finish(self, request: web.BaseRequest, exchange: Exchange, reply: web.Response) -> web.StreamResponse:
        """Send a buffered answer, then run ``complete`` (so it adds no latency)."""
        if not self.chain.complete_hooks or exchange.reached < 0:
            return reply
        try:
            await reply.prepare(request)
            await reply.write_eof()
        except ConnectionResetError:
            exchange.error = client_closed_request()
        self._complete(exchange)
        return reply

    async def _relay(self, request: web.BaseRequest, exchange: Exchange, answer: Response) -> web.StreamResponse:
        """Relay a stream as it arrives; the caller's pace holds the upstream back."""
        stream = answer.stream
        assert stream is not None
        out = web.StreamResponse(status=answer.status, headers=answer.headers)
        hooks = self.chain.chunk_hooks_for(exchange)
        events = SSEBuffer()
        try:
            await _send(out.prepare(request))
            with self.chain.chunk_spans(exchange, hooks):
                async for data in stream:
                    if exchange.first_token_s is None:
                        exchange.first_token_s = perf_counter() - exchange.started_at
                    if hooks:
                        data = await self._through_hooks(exchange, events.feed(data), hooks)
                        if data:
                            await _send(out.write(data))
                    else:
                        for raw in events.feed(data):
                            if carries_usage(raw):
                                exchange.add_usage(*usage_details(StreamEvent(raw).json()))
                        await _send(out.write(data))
            if events.pending and hooks:
                await _send(out.write(events.pending))
        except _CallerGone:
            exchange.error = client_closed_request()
        except GatewayError as error:
            exchange.error = error
            await self._write_error_event(out, exchange, error)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = (
                upstream_timeout("The provider stopped sending the stream.")
                if isinstance(exc, TimeoutError)
                else upstream_error(f"The provider's stream broke: {type(exc).__name__}.")
            )
            exchange.error = error
            log.warning("stream from %s ended early: %s", exchange.provider.name if exchange.provider else "-", error.message)
            await self._write_error_event(out, exchange, error)
        finally:
            await close_stream(stream)
        if exchange.error is None or exchange.error.status != 499:
            try:
                await out.write_eof()
            except ConnectionResetError:
                pass
        self._complete(exchange)
        return out

    async def _through_hooks(self, exchange: Exchange, raws: list[bytes], hooks: tuple[Any, ...]) -> bytes:
        out = []
        for raw in raws:
            event = StreamEvent(raw)
            if carries_usage(raw):
                exchange.add_usage(*usage_details(event.json()))
            await self.chain.chunk(exchange, event, hooks)
            if not event.drop:
                out.append(event.raw)
        return b"".join(out)

    async def _write_error_event(self, out: web.StreamResponse, exchange: Exchange, error: GatewayError) -> None:
        body = error_body(error, exchange.api)
        event = b"event: error\ndata: " + body + b"\n\n" if exchange.api == "anthropic" else b"data: " + body + b"\n\n"
        try:
            await out.write(event)
        except ConnectionResetError:
            pass

    def _complete(self, exchange: Exchange) -> None:
        """Run the ``complete`` hooks: at once as far as they go without waiting (the
        built-ins finish there: their writes go behind), then, if one waits, on in a task
        of its own: the handler does not wait for it (the answer is out), and a caller
        leaving cannot cut a ledger record or a settle in half. The exchange's records and
        SERVER span wait for it (``handle``). A task for hooks that never wait cost
        29,000 instructions a request."""
        if not self.chain.complete_hooks or exchange.reached < 0 or exchange in self._completing:
            return
        coroutine = self.chain.complete(exchange)
        context = contextvars.copy_context()  # the task's own, as an eager task's: hook spans attach in it
        try:
            waiting = context.run(coroutine.send, None)
        except StopIteration:
            return
        task = asyncio.get_running_loop().create_task(_resume(coroutine, waiting), context=context)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        self._completing[exchange] = task


async def _resume(coroutine: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Drive ``coroutine``, started outside any task, on from the future it waits for
    (what a task does with its coroutine; Python 3.12's eager tasks do this natively)."""
    while True:
        try:
            await _Waiting(waiting)
        except BaseException as exc:  # the future failed, or this task was cancelled
            try:
                waiting = coroutine.throw(exc)
            except StopIteration:
                return
            continue
        try:
            waiting = coroutine.send(None)
        except StopIteration:
            return


class _Waiting:
    """Awaiting it hands the task the future a coroutine yielded (or None: a bare yield)."""

    __slots__ = ("future",)

    def __init__(self, future: Any) -> None:
        self.future = future

    def __await__(self) -> Generator[Any, None, None]:
        yield self.future


def _ignore(exchange: Exchange, status: int, span: trace.Span | None) -> None:
    return None


class _CallerGone(Exception):
    """The caller's connection broke while the gateway was writing to it."""


async def _send(write: Awaitable[Any]) -> None:
    """Await a write to the caller, telling its failure apart from the upstream's."""
    try:
        await write
    except ConnectionResetError:
        raise _CallerGone from None
