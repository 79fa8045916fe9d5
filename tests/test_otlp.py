"""gateway.otlp: the lean OTLP encoders write what the SDK's encoder writes.

Every case is compared with the OpenTelemetry SDK's own ``encode_spans`` on the same
finished spans: the protobuf bytes parsed back by the official protobuf classes, and
the JSON read with the OTLP field names the way a collector's JSON receiver does. The
export over HTTP to a real receiver is in tests/test_telemetry.py.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags, TraceState

from gateway.otlp import JsonEncoder, ProtobufEncoder


def otlp_json_request(body: bytes) -> ExportTraceServiceRequest:
    """An OTLP/JSON body as the protobuf request: protobuf's JSON mapping with the ids in
    hex, as the OTLP specification has them (strict: an unknown field name fails)."""

    def ids_to_base64(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                key: base64.b64encode(bytes.fromhex(value)).decode()
                if key in ("traceId", "spanId", "parentSpanId")
                else ids_to_base64(value)
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [ids_to_base64(item) for item in node]
        return node

    return json_format.ParseDict(ids_to_base64(json.loads(body)), ExportTraceServiceRequest())


def finished_spans(
    make: Any, *, resource: Resource | None = None, limits: SpanLimits | None = None
) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=resource or Resource.create({"service.name": "gw-test"}), span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    make(provider)
    provider.shutdown()
    return list(exporter.get_finished_spans())


def assert_encoded_as_the_sdk_does(spans: list[ReadableSpan]) -> None:
    expected = encode_spans(spans)
    assert ExportTraceServiceRequest.FromString(ProtobufEncoder().encode(spans)) == expected
    assert otlp_json_request(JsonEncoder().encode(spans)) == expected


CALLER = SpanContext(
    0x0AF7651916CD43DD8448EB211C80319C,
    0xB7AD6B7169203331,
    True,
    TraceFlags(1),
    TraceState([("vendor", "x1"), ("other", "y")]),
)


def a_gateway_request(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("gateway", "0.1.0")
    with tracer.start_as_current_span(
        "POST /v1/chat/completions",
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "POST", "url.path": "/v1/chat/completions", "gateway.request_id": "r1"},
    ) as server:
        with tracer.start_as_current_span(
            "scan request", attributes={"gateway.plugin": "scan", "gateway.hook": "request"}
        ):
            pass
        with tracer.start_as_current_span(
            "chat gpt-4o-mini", kind=SpanKind.CLIENT, attributes={"gateway.attempt": 1}
        ) as client:
            client.set_attribute("http.response.status_code", 502)
            client.set_status(StatusCode.ERROR)
        server.set_attributes({"http.response.status_code": 200, "gateway.cost_usd": 0.000123})


def every_field(provider: TracerProvider) -> None:
    tracer = provider.get_tracer(
        "gateway", "1.2", schema_url="https://opentelemetry.io/schemas/1.26.0", attributes={"scope.kind": "test"}
    )
    caller = trace.set_span_in_context(NonRecordingSpan(CALLER))
    attributes = {
        "text": "é" * 300,  # a length that takes two varint bytes (and too long to be cached)
        "short": "cached",
        "empty": "",
        "negative": -5,
        "large": 2**63 - 1,
        "ratio": 0.25,
        "flag": True,
        "off": False,
        "one": 1,
        "texts": ("a", "b"),
        "numbers": [1, -2],
        "ratios": (1.0, 2.5),
        "flags": [True, False],
    }
    with tracer.start_as_current_span("root", context=caller, kind=SpanKind.SERVER, attributes=attributes) as root:
        root.add_event("decided", {"rule": "r1", "score": 0.5}, timestamp=123)
        root.add_event("bare")
        with tracer.start_as_current_span(
            "linked", kind=SpanKind.CLIENT, links=[Link(CALLER, {"why": "retry"})]
        ) as span:
            span.set_status(StatusCode.ERROR, "the upstream broke")
        for kind in (SpanKind.INTERNAL, SpanKind.PRODUCER, SpanKind.CONSUMER):
            with tracer.start_as_current_span(kind.name, kind=kind) as span:
                span.set_status(StatusCode.OK)
    provider.get_tracer("another").start_span("a span of another scope").end()


def many_spans(provider: TracerProvider) -> None:
    for _ in range(300):  # a request body longer than 16 KiB: three-byte lengths
        a_gateway_request(provider)


def over_the_limits(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("gateway")
    with tracer.start_as_current_span("busy", attributes={f"key{n}": n for n in range(5)}) as span:
        for n in range(4):
            span.add_event(f"event {n}", {f"key{m}": m for m in range(4)})


@pytest.mark.parametrize("make", [a_gateway_request, every_field, many_spans], ids=lambda make: make.__name__)
def test_encoders_write_what_the_sdk_encoder_writes(make):
    assert_encoded_as_the_sdk_does(finished_spans(make))


def test_dropped_attributes_and_events_are_counted_as_the_sdk_counts_them():
    limits = SpanLimits(max_span_attributes=2, max_events=2, max_event_attributes=1)
    spans = finished_spans(over_the_limits, limits=limits)
    assert spans[0].dropped_attributes == 3 and spans[0].dropped_events == 2
    assert_encoded_as_the_sdk_does(spans)


def test_resource_schema_url_and_attributes_of_every_type():
    resource = Resource(
        {"service.name": "gw-test", "replicas": 3, "zones": ("a", "b")}, schema_url="https://example.com/s"
    )
    assert_encoded_as_the_sdk_does(finished_spans(a_gateway_request, resource=resource))


def test_repeated_attribute_values_are_encoded_the_same_every_time():
    """The encoders remember the bytes of a (key, value) pair: the second batch reads them."""
    spans = finished_spans(many_spans)
    encoder, json_encoder = ProtobufEncoder(), JsonEncoder()
    first, again = encoder.encode(spans), encoder.encode(spans)
    assert first == again
    assert json_encoder.encode(spans) == json_encoder.encode(spans)
    assert ExportTraceServiceRequest.FromString(again) == encode_spans(spans)


def test_doubles_json_cannot_write_are_written_as_the_protobuf_json_mapping_does():
    def odd_numbers(provider: TracerProvider) -> None:
        attributes = {"nan": float("nan"), "up": float("inf"), "down": float("-inf")}
        provider.get_tracer("gateway").start_span("odd", attributes=attributes).end()

    spans = finished_spans(odd_numbers)
    document = json.loads(JsonEncoder().encode(spans))
    (span,) = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert [pair["value"]["doubleValue"] for pair in span["attributes"]] == ["NaN", "Infinity", "-Infinity"]
    parsed = otlp_json_request(JsonEncoder().encode(spans)).resource_spans[0].scope_spans[0].spans[0]
    assert str([kv.value.double_value for kv in parsed.attributes]) == "[nan, inf, -inf]"


def test_json_is_the_otlp_json_encoding():
    """Ids in hex, enums as numbers, 64-bit integers as strings, lowerCamelCase names."""
    (span,) = [s for s in finished_spans(every_field) if s.name == "linked"]
    document = json.loads(JsonEncoder().encode([span]))
    (encoded,) = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert encoded["traceId"] == format(CALLER.trace_id, "032x")
    assert len(encoded["spanId"]) == 16 and len(encoded["parentSpanId"]) == 16
    assert encoded["kind"] == 3  # SPAN_KIND_CLIENT
    assert encoded["startTimeUnixNano"] == str(span.start_time)
    assert encoded["status"] == {"code": 2, "message": "the upstream broke"}
    assert encoded["links"][0]["attributes"] == [{"key": "why", "value": {"stringValue": "retry"}}]
    assert encoded["traceState"] == "vendor=x1,other=y"
