"""OpenTelemetry setup from the standard ``OTEL_*`` variables, and the span vocabulary.

Export is configured the way every OpenTelemetry SDK reads its environment:
``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, ``none``; a comma list),
``OTEL_EXPORTER_OTLP_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``
(``http/protobuf``, the default, or ``grpc``), the OTLP endpoint and header
variables (read by the exporters themselves), ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` (read by the Resource), ``OTEL_TRACES_SAMPLER`` and
``OTEL_TRACES_SAMPLER_ARG`` (read by the TracerProvider). One deviation, for a
sidecar that must not spam a missing collector: with ``OTEL_TRACES_EXPORTER``
unset, spans are exported over OTLP only when an OTLP endpoint is set.
"""

from __future__ import annotations

import os
from urllib.parse import unquote

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from gateway import __version__

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
    provider = TracerProvider(resource=Resource.create(attributes))
    for processor in _processors(env):
        provider.add_span_processor(processor)
    return provider


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


def get_tracer(provider: trace.TracerProvider) -> trace.Tracer:
    return provider.get_tracer(TRACER_NAME, __version__)
