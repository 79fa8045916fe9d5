"""OpenTelemetry setup from the standard ``OTEL_*`` variables, and the span vocabulary.

Export is configured the way every OpenTelemetry SDK reads its environment:
``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, ``none``; a comma list),
``OTEL_EXPORTER_OTLP_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``
(``http/protobuf``, the default, ``http/json`` or ``grpc``; the HTTP ones encoded by
:mod:`gateway.otlp`, several times faster than the SDK's encoder), the OTLP endpoint and header
variables (read by the exporters themselves), ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG``.
Two deviations, for a sidecar that must not spam a missing collector nor pay for
spans nobody reads: with ``OTEL_TRACES_EXPORTER`` unset, spans are exported over
OTLP only when an OTLP endpoint is set; and with nothing exported and no sampler
named, new traces are sampled at most ``GATEWAY_TRACES_PER_S`` (10) a second (after a
quiet spell, up to ``GATEWAY_TRACES_KEPT`` in a row), for the admin trace page only
(unsampled spans still give log lines a trace id).

Beside whatever exporter is chosen, :class:`TraceBuffer` keeps the spans of the last
``GATEWAY_TRACES_KEPT`` (100) sampled requests in memory for ``GET /traces``.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind, StatusCode

from gateway import __version__
from gateway.errors import GatewayError
from gateway.exchange import Exchange, Response, SSEBuffer, StreamEvent, close_stream, usage_from
from gateway.redact import redact
from gateway.spans import RateLimitingSampler, make_lean

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.proxy import Provider

DEFAULT_SERVICE_NAME = "llm-gateway"
TRACER_NAME = "gateway"
#: with no exporter and no sampler named: new traces sampled per second, for the trace page
DEFAULT_TRACES_PER_S = 10.0
#: requests whose spans the trace page keeps
DEFAULT_TRACES_KEPT = 100
#: spans kept per request in the trace page's buffer (a request with more keeps its first ones)
MAX_SPANS_PER_TRACE = 256

#: ``gen_ai.operation.name`` by request path (OpenTelemetry GenAI semantic conventions).
OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/messages": "chat",
    "/v1/responses": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}


class TelemetryConfigError(ValueError):
    """An ``OTEL_*`` variable has a value the gateway cannot use."""


def operation_name(path: str) -> str:
    operation = OPERATIONS.get(path)
    if operation is not None:
        return operation
    # "/v1/models/gpt-4o" is the models resource, not an operation named after the model
    parts = path.strip("/").split("/")
    resource = parts[1] if len(parts) > 1 and parts[0] == "v1" else parts[0]
    return resource or "request"


class _ModelOnly(msgspec.Struct):
    model: Any = None


_decode_model = msgspec.json.Decoder(_ModelOnly).decode


def requested_model(exchange: Exchange) -> str | None:
    """The body's ``model``, without decoding the whole body when nobody has yet.

    When a plugin or a model route already decoded the body (``exchange.json()`` is
    cached) that document is read; otherwise msgspec reads the one field and skips
    the rest (well under a microsecond for a chat request). None when there is none.
    """
    if not exchange.has_json_body:
        return None
    document = getattr(exchange, "_json", None)
    if isinstance(document, dict):
        model = document.get("model")
    else:
        try:
            model = _decode_model(exchange.body).model
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return None
    return model if isinstance(model, str) else None


def tracer_provider_from_env(environ: os._Environ[str] | dict[str, str] | None = None) -> TracerProvider:
    """A TracerProvider with the exporters the environment asks for."""
    env = os.environ if environ is None else environ
    # Resource.create() reads os.environ itself; these come from ``env`` (the same
    # mapping unless a caller passes its own) and take precedence.
    attributes: dict[str, str] = {SERVICE_NAME: DEFAULT_SERVICE_NAME, "service.version": __version__}
    for pair in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = unquote(value.strip())
    if env.get("OTEL_SERVICE_NAME"):
        attributes[SERVICE_NAME] = env["OTEL_SERVICE_NAME"]
    processors = _processors(env)
    # With nothing exported, only the trace page reads spans: unless a sampler is
    # asked for, sample a few new traces a second for it, so that the page shows
    # requests while a busy gateway pays for almost none. Unsampled spans are still
    # made (see roots_unsampled), so log lines keep a trace id.
    sampler = _sampler(env) or (None if processors else _page_sampler(env))
    try:
        provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler)
    except ValueError as exc:  # the SDK's span limits (OTEL_SPAN_*_LIMIT, OTEL_ATTRIBUTE_*_LIMIT)
        raise TelemetryConfigError(" ".join(str(exc).split())) from None
    for processor in processors:
        provider.add_span_processor(processor)
    trace_buffer(provider, env)
    return provider


def _page_sampler(env: os._Environ[str] | dict[str, str]) -> Sampler:
    raw = env.get("GATEWAY_TRACES_PER_S", "").strip()
    try:
        per_s = float(raw) if raw else DEFAULT_TRACES_PER_S
    except ValueError:
        raise TelemetryConfigError("GATEWAY_TRACES_PER_S: expected a number of traces per second (0: none)") from None
    if per_s <= 0 or math.isnan(per_s):
        return ParentBased(StaticSampler(Decision.DROP))
    # After a quiet spell as many requests in a row as the page keeps are all sampled: a
    # developer's (or a test's) burst of calls shows whole, a busy gateway still pays for per_s.
    return ParentBased(RateLimitingSampler(per_s, burst=_traces_kept(env)))


def _sampler(env: os._Environ[str] | dict[str, str]) -> Sampler | None:
    """The sampler ``OTEL_TRACES_SAMPLER`` (and ``_ARG``) name; None when unset."""
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if not name:
        return None
    fixed = {"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF, "parentbased_always_on": DEFAULT_ON, "parentbased_always_off": DEFAULT_OFF}
    if name in fixed:
        return fixed[name]
    if name in ("traceidratio", "parentbased_traceidratio"):
        raw = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip() or "1.0"
        try:
            rate = float(raw)
        except ValueError:
            rate = math.nan
        if not 0.0 <= rate <= 1.0:  # NaN too: the SDK's sampler raises a bare ValueError on it
            raise TelemetryConfigError(f"OTEL_TRACES_SAMPLER_ARG: expected a number from 0 to 1, got {raw!r}")
        return TraceIdRatioBased(rate) if name == "traceidratio" else ParentBasedTraceIdRatio(rate)
    raise TelemetryConfigError(
        f"OTEL_TRACES_SAMPLER: unknown sampler {name!r} (use always_on, always_off, traceidratio or their parentbased_ forms)"
    )


def _processors(env: os._Environ[str] | dict[str, str]) -> list[SpanProcessor]:
    wanted = env.get("OTEL_TRACES_EXPORTER")
    if wanted is None:
        has_endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        wanted = "otlp" if has_endpoint else "none"
    processors: list[SpanProcessor] = []
    for name in (part.strip().lower() for part in wanted.split(",")):
        if name in ("", "none"):
            continue
        exporter: SpanExporter
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif name == "otlp":
            exporter = _otlp_exporter(env)
        else:
            raise TelemetryConfigError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (use otlp, console or none)")
        processors.append(BatchSpanProcessor(exporter))
    return processors


def _otlp_exporter(env: os._Environ[str] | dict[str, str]) -> SpanExporter:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if protocol in ("http/protobuf", "http", "http/json"):
        from gateway.otlp import JSON, PROTOBUF, SpanExporter

        try:
            return SpanExporter(JSON if protocol == "http/json" else PROTOBUF)
        except ValueError as exc:
            raise TelemetryConfigError(str(exc)) from None
    raise TelemetryConfigError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL: unsupported protocol {protocol!r} (use http/protobuf, http/json or grpc)"
    )


def roots_unsampled(provider: trace.TracerProvider) -> bool:
    """Whether tracing was turned off: a request that brings no ``traceparent`` is never sampled.

    Then the gateway makes no span for it at all (a non-recording span still costs
    its ids and two context switches). True for the API's no-op provider and for
    ``OTEL_TRACES_SAMPLER=always_off`` or ``parentbased_always_off``; not for the
    default without an exporter, whose unsampled spans still give log lines a trace id.
    """
    if not isinstance(provider, TracerProvider):
        return True
    return provider.sampler is ALWAYS_OFF or provider.sampler is DEFAULT_OFF


def get_tracer(provider: trace.TracerProvider) -> trace.Tracer:
    """The gateway's tracer; the SDK's makes its spans the lean way (:mod:`gateway.spans`)."""
    return make_lean(provider.get_tracer(TRACER_NAME, __version__))


# -- the spans of one exchange ------------------------------------------------------------


def start_span(
    tracer: trace.Tracer,
    name: str,
    attributes: dict[str, Any],
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    context: otel_context.Context | None = None,
) -> trace.Span:
    """A span of the gateway's own, with its attributes (see :func:`set_attributes`).

    The sampler and the processors' ``on_start`` see the span without them: the
    samplers the environment can choose do not read attributes."""
    span = tracer.start_span(name, context=context, kind=kind)
    if attributes and span.is_recording():
        set_attributes(span, attributes)
    return span


def set_attributes(span: trace.Span, attributes: dict[str, Any]) -> None:
    """The gateway's own attributes (str, int, float or bool values) on a recording span.

    On the SDK's span they go straight into its attribute dict: ``set_attributes``
    checks every value again, recursively and against abstract types, under a lock,
    which was over a third of what a span cost the gateway. Another kind of span, a
    limit on value lengths (``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT``) or a span
    that would pass its limit on attributes takes the public method."""
    bounded = getattr(span, "_attributes", None)
    store = getattr(bounded, "_dict", None)
    if (
        type(store) is dict
        and bounded.max_value_len is None  # type: ignore[union-attr]
        and (bounded.maxlen is None or len(store) + len(attributes) <= bounded.maxlen)  # type: ignore[union-attr]
    ):
        store.update(attributes)
    else:
        span.set_attributes(attributes)


def start_server_span(tracer: trace.Tracer, request: web.BaseRequest, exchange: Exchange) -> tuple[trace.Span, object]:
    """The request's SERVER span, continuing the caller's ``traceparent``, made current.

    Returns the span and the context token to detach when it ends.
    """
    headers = request.headers
    parent = propagate.extract(headers) if "traceparent" in headers else None
    attributes = {
        "http.request.method": request.method,
        "url.path": exchange.path,
        "url.scheme": request.scheme,
        "gateway.request_id": exchange.request_id,
    }
    remote = request.remote
    if remote:
        attributes["client.address"] = remote
    span = start_span(tracer, f"{request.method} {exchange.path}", attributes, kind=SpanKind.SERVER, context=parent)
    exchange.recording = span.is_recording()
    return span, otel_context.attach(trace.set_span_in_context(span))


def end_server_span(span: trace.Span, exchange: Exchange, status: int, provider_name: str) -> None:
    """Status, caller and provider on the SERVER span; ERROR for 5xx and the gateway's own errors >= 500."""
    if exchange.recording:
        attributes: dict[str, Any] = {"http.response.status_code": status}
        if exchange.caller:
            attributes["gateway.caller"] = exchange.caller
        if provider_name != "-":
            attributes["gateway.provider"] = provider_name
        model = requested_model(exchange)
        if model is not None:
            attributes["gen_ai.request.model"] = model
        # What the plugins found, for the trace page's list and for searching in Jaeger.
        for key, value in (
            ("gateway.response.model", exchange.served_model),
            ("gateway.cache", exchange.cache_status),
            ("gateway.threat_severity", exchange.threat_severity),
            ("gateway.cascade", exchange.cascade_decision),
            ("gateway.cost_usd", exchange.cost_usd),
        ):
            if value is not None:
                attributes[key] = value
        usage = exchange.usage
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.input_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
        error = exchange.error
        if error is not None:
            attributes["error.type"] = error.code
            if error.status >= 500:
                span.set_status(StatusCode.ERROR, redact(error.message))
        elif status >= 500:
            attributes["error.type"] = str(status)
            span.set_status(StatusCode.ERROR)
        set_attributes(span, attributes)
    span.end()


def start_client_span(
    tracer: trace.Tracer, exchange: Exchange, provider: Provider, path: str | None = None
) -> tuple[trace.Span, object]:
    """A CLIENT span for one upstream attempt, with the GenAI request attributes, made
    current (so the upstream's ``traceparent`` names it). ``path`` is the provider's
    when the request was translated to its API."""
    model = requested_model(exchange)  # the one field, unless a plugin decoded the body already
    operation = operation_name(exchange.path)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider.type,
        "gateway.provider": provider.name,
        "gateway.attempt": exchange.attempts,
        "http.request.method": exchange.method,
        "url.full": provider.url_for(path or exchange.path, ""),  # no query: it may carry a key
        "server.address": provider.server_address,
    }
    if provider.server_port:
        attributes["server.port"] = provider.server_port
    if model is not None:
        attributes["gen_ai.request.model"] = model
    span = start_span(tracer, f"{operation} {model}" if model else operation, attributes, kind=SpanKind.CLIENT)
    return span, otel_context.attach(trace.set_span_in_context(span))


def end_client_span_on_error(span: trace.Span, exc: BaseException) -> None:
    if isinstance(exc, GatewayError):
        span.set_attribute("error.type", exc.code)
        span.set_status(StatusCode.ERROR, redact(exc.message))
    else:
        span.set_attribute("error.type", type(exc).__name__)
    span.end()


def end_client_span_on_answer(span: trace.Span, response: Response, exchange: Exchange) -> Response:
    """Status and GenAI response attributes; a stream keeps the span open until it ends."""
    attributes: dict[str, Any] = {"http.response.status_code": response.status}
    if response.status >= 400:
        attributes["error.type"] = str(response.status)
        span.set_status(StatusCode.ERROR)
    if response.stream is None:
        _describe_body(attributes, response)
        set_attributes(span, attributes)
        span.end()
    else:
        set_attributes(span, attributes)
        response.stream = _traced_stream(response.stream, span, exchange)
    return response


def _describe_body(attributes: dict[str, Any], response: Response) -> None:
    """GenAI response attributes of a buffered JSON answer, into ``attributes``."""
    document = response.json() if response.body and response.body[:1] == b"{" else None
    if not isinstance(document, dict):
        return
    model = document.get("model")
    if isinstance(model, str):
        attributes["gen_ai.response.model"] = model
    _add_usage(attributes, *usage_from(document))


def _add_usage(attributes: dict[str, Any], input_tokens: int | None, output_tokens: int | None) -> None:
    if input_tokens is not None:
        attributes["gen_ai.usage.input_tokens"] = input_tokens
    if output_tokens is not None:
        attributes["gen_ai.usage.output_tokens"] = output_tokens


async def _traced_stream(stream: AsyncIterator[bytes], span: trace.Span, exchange: Exchange) -> AsyncIterator[bytes]:
    """The stream, with the CLIENT span kept open until it ends and given its model and usage.

    The relay gathers the usage into the exchange event by event; only the model
    is read here, from the first event that names it.
    """
    events = SSEBuffer()
    model: str | None = None
    try:
        async for data in stream:
            if model is None:
                model = _stream_model(events.feed(data))
            yield data
    except Exception as exc:
        span.set_attribute("error.type", type(exc).__name__)
        span.set_status(StatusCode.ERROR, "the stream broke")
        raise
    finally:
        attributes: dict[str, Any] = {"gen_ai.response.model": model} if model else {}
        usage = exchange.usage
        if usage is not None:
            _add_usage(attributes, usage.input_tokens, usage.output_tokens)
        set_attributes(span, attributes)
        span.end()
        await close_stream(stream)


def _stream_model(raws: list[bytes]) -> str | None:
    """The model the first of these events names ("" once one was read without a model)."""
    for raw in raws:
        if b'"model"' in raw:
            document = StreamEvent(raw).json()
            if isinstance(document, dict):
                found = document.get("model")
                if found is None and isinstance(document.get("message"), dict):
                    found = document["message"].get("model")  # Anthropic's message_start
                return found if isinstance(found, str) else ""
    return None


# -- the trace page's buffer ------------------------------------------------------------


class _Trace:
    __slots__ = ("root_id", "span_ids", "spans", "root", "dropped")

    def __init__(self, root_id: int) -> None:
        self.root_id = root_id
        self.span_ids: list[int] = [root_id]
        self.spans: list[ReadableSpan] = []
        self.root: ReadableSpan | None = None
        self.dropped = 0


class TraceBuffer(SpanProcessor):
    """The spans of the last ``max_traces`` requests, in memory, for ``GET /traces``.

    A span processor beside the exporters: it sees only sampled spans, and only
    appends to a dict and a list per span. A "request" is a local root span (the
    SERVER span, which may continue a caller's trace), so two requests sharing a
    caller's trace id are listed apart. Every span is filed under its local root when
    it starts (its parent started earlier); when the buffer is full the oldest
    request goes. Hook spans also feed ``on_hook`` (the hook-latency histogram).
    """

    def __init__(self, max_traces: int = DEFAULT_TRACES_KEPT, max_spans: int = MAX_SPANS_PER_TRACE) -> None:
        self.max_traces = max_traces
        self.max_spans = max_spans
        self.traces: OrderedDict[int, _Trace] = OrderedDict()
        self._roots: dict[int, int] = {}
        self._lock = threading.Lock()
        #: called with (plugin, hook, seconds) for every ended plugin hook span
        self.on_hook: Callable[[str, str, float], None] | None = None

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        # The span's fields, not its properties: this runs for every span of a sampled request.
        span_id = span._context.span_id  # type: ignore[union-attr]
        parent = span._parent
        with self._lock:
            if parent is None or parent.is_remote:
                traces = self.traces
                traces[span_id] = _Trace(span_id)
                self._roots[span_id] = span_id
                if len(traces) > self.max_traces:
                    _, evicted = traces.popitem(last=False)
                    roots = self._roots
                    for old in evicted.span_ids:
                        roots.pop(old, None)
                return
            root_id = self._roots.get(parent.span_id)
            entry = self.traces.get(root_id) if root_id is not None else None
            if entry is None:
                return
            self._roots[span_id] = root_id  # type: ignore[assignment]
            entry.span_ids.append(span_id)

    def on_end(self, span: ReadableSpan) -> None:
        context = span._context
        if context is None:
            return
        span_id = context.span_id
        with self._lock:
            root_id = self._roots.get(span_id)
            entry = self.traces.get(root_id) if root_id is not None else None
            if entry is not None:
                if span_id == root_id:
                    entry.root = span
                    entry.spans.append(span)
                elif len(entry.spans) < self.max_spans:
                    entry.spans.append(span)
                else:
                    entry.dropped += 1
        on_hook = self.on_hook
        if on_hook is None:
            return
        attributes: Any = span._attributes
        attributes = getattr(attributes, "_dict", attributes)  # the SDK's BoundedAttributes keep a plain dict
        hook = attributes.get("gateway.hook") if attributes else None
        # a chunk span lasts the whole stream: not a hook's latency
        if hook is not None and hook != "chunk" and span._end_time and span._start_time:
            on_hook(str(attributes.get("gateway.plugin")), str(hook), (span._end_time - span._start_time) / 1e9)

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def recent(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Finished requests, newest first, in the shape of ``GET /traces.json``."""
        with self._lock:
            entries = [(entry, list(entry.spans)) for entry in reversed(self.traces.values()) if entry.root is not None]
        if limit is not None:
            entries = entries[: max(limit, 0)]
        return [_trace_document(entry.root, spans, entry.dropped) for entry, spans in entries]  # type: ignore[arg-type]

    def find(self, key: str) -> dict[str, Any] | None:
        """One finished request by its trace id, root span id or request id."""
        for document in self.recent():
            if key in (document["trace_id"], document["request_id"], document["spans"][0]["span_id"] if document["spans"] else None):
                return document
        return None


def trace_buffer(provider: trace.TracerProvider, environ: os._Environ[str] | dict[str, str] | None = None) -> TraceBuffer | None:
    """The provider's trace-page buffer, added on first use (None for a provider
    that is not the SDK's, or with ``GATEWAY_TRACES_KEPT=0``)."""
    if not isinstance(provider, TracerProvider):
        return None
    existing = getattr(provider, "_gateway_trace_buffer", _NOT_YET)
    if existing is not _NOT_YET:
        return existing  # type: ignore[no-any-return]
    kept = _traces_kept(os.environ if environ is None else environ)
    buffer = TraceBuffer(kept) if kept > 0 else None
    if buffer is not None:
        provider.add_span_processor(buffer)
    provider._gateway_trace_buffer = buffer  # type: ignore[attr-defined]
    return buffer


_NOT_YET = object()


def _traces_kept(env: os._Environ[str] | dict[str, str]) -> int:
    """``GATEWAY_TRACES_KEPT``: the requests the trace page keeps."""
    raw = env.get("GATEWAY_TRACES_KEPT", "").strip()
    try:
        return int(raw) if raw else DEFAULT_TRACES_KEPT
    except ValueError:
        raise TelemetryConfigError("GATEWAY_TRACES_KEPT: expected a number of requests (0: no trace page)") from None


def _attributes(attributes: Any) -> dict[str, Any]:
    if not attributes:
        return {}
    return {key: list(value) if isinstance(value, tuple) else value for key, value in attributes.items()}


def _trace_document(root: ReadableSpan, spans: list[ReadableSpan], dropped: int) -> dict[str, Any]:
    origin = root.start_time or 0
    spans = sorted(spans, key=lambda span: (span.start_time or 0, span is not root))
    attributes = root.attributes or {}
    document: dict[str, Any] = {
        "trace_id": format(root.context.trace_id, "032x"),  # type: ignore[union-attr]
        "request_id": attributes.get("gateway.request_id"),
        "status": attributes.get("http.response.status_code"),
        "duration_ms": _ms((root.end_time or origin) - origin),
        "start_time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(origin / 1e9)) + f".{origin // 1_000_000 % 1000:03d}Z",
        "name": root.name,
        "method": attributes.get("http.request.method"),
        "path": attributes.get("url.path"),
        "caller": attributes.get("gateway.caller"),
        "provider": attributes.get("gateway.provider"),
        "model": attributes.get("gateway.response.model") or attributes.get("gen_ai.request.model"),
        "cost_usd": attributes.get("gateway.cost_usd"),
        "cache": attributes.get("gateway.cache"),
        "threat": attributes.get("gateway.threat_severity"),
        "cascade": attributes.get("gateway.cascade"),
        "error": attributes.get("error.type"),
        "spans_dropped": dropped,
        "spans": [_span_document(span, origin) for span in spans],
    }
    return document


def _span_document(span: ReadableSpan, origin: int) -> dict[str, Any]:
    start = span.start_time or origin
    parent = span.parent
    return {
        "name": span.name,
        "span_id": format(span.context.span_id, "016x"),  # type: ignore[union-attr]
        "parent_span_id": format(parent.span_id, "016x") if parent is not None else None,
        "kind": span.kind.name,
        "start_ms": _ms(start - origin),
        "duration_ms": _ms((span.end_time or start) - start),
        "status": span.status.status_code.name,
        "attributes": _attributes(span.attributes),
        "events": [
            {"name": event.name, "time_ms": _ms(event.timestamp - origin), "attributes": _attributes(event.attributes)}
            for event in span.events
        ],
    }


def _ms(nanoseconds: int) -> float:
    return round(nanoseconds / 1e6, 3)
