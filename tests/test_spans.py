"""gateway.spans: the lean tracer makes the very spans the SDK's tracer makes.

Each test makes the same tree of spans with the SDK's own tracer and with the lean one,
from one provider with an in-memory exporter, and compares what was exported, field by
field (ids and times aside, which differ by nature)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, Tracer, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, DEFAULT_ON, ParentBased, ParentBasedTraceIdRatio, Sampler
from opentelemetry.trace import SpanKind, StatusCode

from gateway.spans import LeanSpan, LeanTracer, RateLimitingSampler, make_lean
from gateway.telemetry import TraceBuffer, start_span


def fields(span: ReadableSpan, ids: dict[int, str]) -> dict[str, Any]:
    """What an exporter reads of a span, with span ids replaced by the span names they stand for."""
    context = span.context
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind,
        "parent": ids.get(span.parent.span_id, "remote") if span.parent is not None else None,
        "parent_remote": span.parent.is_remote if span.parent is not None else None,
        "flags": int(context.trace_flags),
        "trace_state": context.trace_state.to_header(),
        "remote": context.is_remote,
        "attributes": dict(span.attributes or {}),
        "events": [(event.name, dict(event.attributes or {})) for event in span.events],
        "links": len(span.links),
        "status": (span.status.status_code, span.status.description),
        "resource": dict(span.resource.attributes),
        "scope": (span.instrumentation_scope.name, span.instrumentation_scope.version),
        "dropped": (span.dropped_attributes, span.dropped_events, span.dropped_links),
        "ended": span.end_time is not None and span.start_time is not None and span.end_time >= span.start_time,
    }


def run(
    sampler: Sampler | Callable[[], Sampler], make_tree: Callable[[trace.Tracer], None], **provider_args: Any
) -> tuple[list, list]:
    """The exported spans of ``make_tree`` with the SDK's tracer, then with the lean one
    (``sampler``: one, or what makes a new one for each)."""
    results = []
    for lean in (False, True):
        provider = TracerProvider(sampler=sampler if isinstance(sampler, Sampler) else sampler(), **provider_args)
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("gateway", "1.0")
        if lean:
            tracer = make_lean(tracer)
            assert type(tracer) is LeanTracer
        make_tree(tracer)
        spans = exporter.get_finished_spans()
        ids = {span.context.span_id: span.name for span in spans}
        results.append(([fields(span, ids) for span in spans], spans))
    (sdk, _), (lean_fields, _) = results
    return sdk, lean_fields


def request_tree(tracer: trace.Tracer) -> None:
    """A SERVER span, hook spans under it (one failing), a CLIENT span with an event."""
    server = start_span(tracer, "POST /v1/chat/completions", {"http.request.method": "POST"}, kind=SpanKind.SERVER)
    token = otel_context.attach(trace.set_span_in_context(server))
    try:
        for plugin in ("scan", "cache"):
            with tracer.start_as_current_span(f"{plugin} request", attributes={"gateway.plugin": plugin}):
                pass
        with pytest.raises(ValueError):
            with tracer.start_as_current_span("cost request", attributes={"gateway.plugin": "cost", "n": 3}):
                raise ValueError("over budget")
        client = tracer.start_span("chat gpt-4o", kind=SpanKind.CLIENT, attributes={"gen_ai.request.model": "gpt-4o"})
        client.add_event("retry", {"attempt": 2})
        client.set_attribute("gen_ai.usage.input_tokens", 12)
        client.set_status(StatusCode.OK)
        client.end()
    finally:
        otel_context.detach(token)
    server.set_attribute("http.response.status_code", 200)
    server.end()


@pytest.mark.parametrize("sampler", [ALWAYS_ON, DEFAULT_ON], ids=["always_on", "parentbased_always_on"])
def test_a_request_s_spans_are_the_sdk_s(sampler: Sampler) -> None:
    sdk, lean = run(sampler, request_tree)
    assert len(sdk) == 5
    assert lean == sdk


def test_spans_under_a_caller_s_trace_keep_its_ids_flags_and_state() -> None:
    carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "vendor=1"}

    def tree(tracer: trace.Tracer) -> None:
        server = start_span(tracer, "POST /v1/messages", {}, kind=SpanKind.SERVER, context=propagate.extract(carrier))
        token = otel_context.attach(trace.set_span_in_context(server))
        tracer.start_span("scan request").end()  # a local child: the lean way
        otel_context.detach(token)
        server.end()

    sdk, lean = run(DEFAULT_ON, tree)
    assert lean == sdk
    assert [span["trace_state"] for span in lean] == ["vendor=1", "vendor=1"]
    assert lean[1]["parent"] == "remote" and lean[1]["parent_remote"] is True


def test_a_sampled_out_trace_makes_no_recording_span() -> None:
    """Roots go through the sampler unless it is always on; children of a span it
    dropped are not the SDK's spans, so the SDK decides for them too."""

    def tree(tracer: trace.Tracer) -> None:
        for _ in range(4):
            root = tracer.start_span("root")
            token = otel_context.attach(trace.set_span_in_context(root))
            child = tracer.start_span("child")
            assert child.is_recording() is root.is_recording()
            child.end()
            otel_context.detach(token)
            root.end()

    sdk, lean = run(lambda: ParentBased(RateLimitingSampler(2.0)), tree)
    assert [span["name"] for span in lean] == ["child", "root"] * 2  # the bucket holds two traces
    assert lean == sdk


def test_under_the_rate_limiting_sampler_a_dropped_root_is_the_sdk_s_non_recording_span() -> None:
    """The lean tracer takes the bucket's token itself: the same decisions, and for a
    dropped trace a span like the SDK's (flags, trace state, not remote, valid ids)."""
    roots: dict[bool, list[trace.Span]] = {}
    now = [0.0]
    for lean in (False, True):
        now[0] = 0.0
        tracer = TracerProvider(sampler=ParentBased(RateLimitingSampler(2.0, clock=lambda: now[0]))).get_tracer("g")
        if lean:
            tracer = make_lean(tracer)
            assert tracer._lean_bucket is not None  # type: ignore[attr-defined]
        roots[lean] = []
        for step in range(6):
            now[0] = step * 0.2  # two tokens at first, then one every 0.5 s
            roots[lean].append(tracer.start_span("root"))
    sdk, lean_roots = roots[False], roots[True]
    assert [span.is_recording() for span in lean_roots] == [span.is_recording() for span in sdk]
    assert [span.is_recording() for span in sdk] == [True, True, False, True, False, True]
    for made, expected in zip(lean_roots, sdk, strict=True):
        context, wanted = made.get_span_context(), expected.get_span_context()
        assert type(made) is (LeanSpan if made.is_recording() else type(expected))
        assert (context.trace_flags, context.trace_state, context.is_remote, context.is_valid) == (
            wanted.trace_flags, wanted.trace_state, wanted.is_remote, wanted.is_valid
        )  # fmt: skip


def test_what_the_fast_path_does_not_cover_goes_the_sdk_s_way() -> None:
    def tree(tracer: trace.Tracer) -> None:
        root = tracer.start_span("root")
        token = otel_context.attach(trace.set_span_in_context(root))
        listed = tracer.start_span("listed", attributes={"tags": ["a", "b"]})  # values the SDK cleans
        assert not isinstance(listed, LeanSpan)
        listed.end()
        many = tracer.start_span("many", attributes={f"k{n}": n for n in range(5)})  # over the limit below
        many.end()
        timed = tracer.start_span("timed", start_time=1)
        timed.end(end_time=2)
        linked = tracer.start_span("linked", links=[trace.Link(root.get_span_context())])
        linked.end()
        otel_context.detach(token)
        root.end()

    sdk, lean = run(ALWAYS_ON, tree, span_limits=SpanLimits(max_span_attributes=3))
    assert lean == sdk
    assert lean[0]["attributes"] == {"tags": ("a", "b")}
    assert lean[1]["dropped"][0] == 2
    assert lean[3]["links"] == 1


def test_a_lean_span_ends_once_and_then_cannot_change() -> None:
    provider = TracerProvider(sampler=ALWAYS_ON)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = make_lean(provider.get_tracer("gateway"))
    span = tracer.start_span("once", attributes={"a": 1})
    assert isinstance(span, LeanSpan)
    span.end()
    span.end()  # the SDK warns and does nothing
    span.set_attribute("b", 2)
    span.set_status(StatusCode.ERROR)
    (exported,) = exporter.get_finished_spans()
    assert dict(exported.attributes or {}) == {"a": 1}
    assert exported.status.status_code is StatusCode.UNSET


def test_the_trace_page_buffer_files_lean_spans_under_their_request() -> None:
    provider = TracerProvider(sampler=ALWAYS_ON)
    buffer = TraceBuffer(max_traces=5)
    provider.add_span_processor(buffer)
    tracer = make_lean(provider.get_tracer("gateway"))
    request_tree(tracer)
    (document,) = buffer.recent()
    assert [span["name"] for span in document["spans"]][0] == "POST /v1/chat/completions"
    assert len(document["spans"]) == 5


def test_other_tracers_and_samplers_stay_as_they_are() -> None:
    assert type(make_lean(trace.NoOpTracer())) is trace.NoOpTracer
    ratio = make_lean(TracerProvider(sampler=ParentBasedTraceIdRatio(0.5)).get_tracer("gateway"))
    assert type(ratio) is LeanTracer and not ratio._lean_roots and ratio._lean_children  # type: ignore[attr-defined]
    provider = TracerProvider(sampler=ALWAYS_ON, span_limits=SpanLimits(max_span_attribute_length=8))
    assert type(make_lean(provider.get_tracer("gateway"))) is Tracer  # values to cut: the SDK's way

    class Sequential(IdGenerator):
        def __init__(self) -> None:
            self.last = 0

        def generate_span_id(self) -> int:
            self.last += 1
            return self.last

        def generate_trace_id(self) -> int:
            return 7

    provider = TracerProvider(sampler=ALWAYS_ON, id_generator=Sequential())
    assert type(make_lean(provider.get_tracer("gateway"))) is Tracer  # ids of its own: the SDK asks it
