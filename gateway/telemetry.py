"""OpenTelemetry setup from the standard ``OTEL_*`` variables, and the span vocabulary.

Export is configured the way every OpenTelemetry SDK reads its environment:
``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, ``none``; a comma list),
``OTEL_EXPORTER_OTLP_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``
(``http/protobuf``, the default, or ``grpc``), the OTLP endpoint and header
variables (read by the exporters themselves), ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG``.
Two deviations, for a sidecar that must not spam a missing collector nor pay for
spans nobody reads: with ``OTEL_TRACES_EXPORTER`` unset, spans are exported over
OTLP only when an OTLP endpoint is set; and with nothing exported and no sampler
named, nothing is sampled (unsampled spans still give log lines a trace id).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
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

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.proxy import Provider

DEFAULT_SERVICE_NAME = "llm-gateway"
TRACER_NAME = "gateway"

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
    # Recorded spans that no processor receives are pure cost: unless a sampler is
    # asked for, record nothing when nothing is exported. Unsampled spans are still
    # made (see roots_unsampled), so log lines keep a trace id.
    sampler = _sampler(env) or (None if processors else ParentBased(StaticSampler(Decision.DROP)))
    provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler)
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


def _sampler(env: os._Environ[str] | dict[str, str]) -> Sampler | None:
    """The sampler ``OTEL_TRACES_SAMPLER`` (and ``_ARG``) name; None when unset."""
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if not name:
        return None
    fixed = {"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF, "parentbased_always_on": DEFAULT_ON, "parentbased_always_off": DEFAULT_OFF}
    if name in fixed:
        return fixed[name]
    if name in ("traceidratio", "parentbased_traceidratio"):
        try:
            rate = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
        except ValueError:
            raise TelemetryConfigError("OTEL_TRACES_SAMPLER_ARG: expected a number from 0 to 1") from None
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
    if protocol in ("http/protobuf", "http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    raise TelemetryConfigError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL: unsupported protocol {protocol!r} (use http/protobuf or grpc)"
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
    return provider.get_tracer(TRACER_NAME, __version__)


# -- the spans of one exchange ------------------------------------------------------------


def start_server_span(tracer: trace.Tracer, request: web.BaseRequest, exchange: Exchange) -> tuple[trace.Span, object]:
    """The request's SERVER span, continuing the caller's ``traceparent``, made current.

    Returns the span and the context token to detach when it ends.
    """
    headers = request.headers
    parent = propagate.extract(headers) if "traceparent" in headers else None
    span = tracer.start_span(f"{request.method} {exchange.path}", context=parent, kind=SpanKind.SERVER)
    exchange.recording = span.is_recording()
    if exchange.recording:
        attributes = {
            "http.request.method": request.method,
            "url.path": exchange.path,
            "url.scheme": request.scheme,
            "gateway.request_id": exchange.request_id,
        }
        if request.remote:
            attributes["client.address"] = request.remote
        span.set_attributes(attributes)
    return span, otel_context.attach(trace.set_span_in_context(span))


def end_server_span(span: trace.Span, exchange: Exchange, status: int, provider_name: str) -> None:
    """Status, caller and provider on the SERVER span; ERROR for 5xx and the gateway's own errors >= 500."""
    if exchange.recording:
        attributes: dict[str, Any] = {"http.response.status_code": status}
        if exchange.caller:
            attributes["gateway.caller"] = exchange.caller
        if provider_name != "-":
            attributes["gateway.provider"] = provider_name
        error = exchange.error
        if error is not None:
            attributes["error.type"] = error.code
            if error.status >= 500:
                span.set_status(StatusCode.ERROR, error.message)
        elif status >= 500:
            attributes["error.type"] = str(status)
            span.set_status(StatusCode.ERROR)
        span.set_attributes(attributes)
    span.end()


def start_client_span(
    tracer: trace.Tracer, exchange: Exchange, provider: Provider, path: str | None = None
) -> tuple[trace.Span, object]:
    """A CLIENT span for one upstream attempt, with the GenAI request attributes, made
    current (so the upstream's ``traceparent`` names it). ``path`` is the provider's
    when the request was translated to its API."""
    try:
        model = exchange.model
    except GatewayError:  # a body that is not JSON is the upstream's to judge
        model = None
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
    span = tracer.start_span(f"{operation} {model}" if model else operation, kind=SpanKind.CLIENT, attributes=attributes)
    return span, otel_context.attach(trace.set_span_in_context(span))


def end_client_span_on_error(span: trace.Span, exc: BaseException) -> None:
    if isinstance(exc, GatewayError):
        span.set_attribute("error.type", exc.code)
        span.set_status(StatusCode.ERROR, exc.message)
    else:
        span.set_attribute("error.type", type(exc).__name__)
    span.end()


def end_client_span_on_answer(span: trace.Span, response: Response, exchange: Exchange) -> Response:
    """Status and GenAI response attributes; a stream keeps the span open until it ends."""
    span.set_attribute("http.response.status_code", response.status)
    if response.status >= 400:
        span.set_attribute("error.type", str(response.status))
        span.set_status(StatusCode.ERROR)
    if response.stream is None:
        _describe_body(span, response)
        span.end()
    else:
        response.stream = _traced_stream(response.stream, span, exchange)
    return response


def _describe_body(span: trace.Span, response: Response) -> None:
    """GenAI response attributes of a buffered JSON answer."""
    document = response.json() if response.body and response.body[:1] == b"{" else None
    if not isinstance(document, dict):
        return
    model = document.get("model")
    if isinstance(model, str):
        span.set_attribute("gen_ai.response.model", model)
    _set_usage(span, *usage_from(document))


def _set_usage(span: trace.Span, input_tokens: int | None, output_tokens: int | None) -> None:
    if input_tokens is not None:
        span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    if output_tokens is not None:
        span.set_attribute("gen_ai.usage.output_tokens", output_tokens)


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
        if model:
            span.set_attribute("gen_ai.response.model", model)
        usage = exchange.usage
        if usage is not None:
            _set_usage(span, usage.input_tokens, usage.output_tokens)
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
