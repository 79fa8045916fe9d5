"""The SDK's spans, made for a fraction of what its ``Tracer`` spends on each.

Why: with tracing on, the gateway makes a span per plugin hook (SPEC.md), 13 a request
on the full chain, and the OpenTelemetry SDK's ``Tracer.start_span`` and ``Span.end``
cost about 20 µs a span on one core: looking the parent up through the context API,
asking the sampler, building a ``Span`` through three constructors (three locks, two
bounded lists, attributes checked one by one) and, at its end, copying it into a new
``ReadableSpan`` for the processors. For the spans whose outcome is known in advance
(a sampled local parent, or a new trace under an always-on sampler or the gateway's own
:class:`RateLimitingSampler`, which it asks itself), :class:`LeanTracer`
makes the very same SDK span directly (or, for a new trace that sampler drops, the
SDK's non-recording span with the same ids and flags): the same class's fields, copied from a template
built by the SDK's own constructor, the same ids, flags and trace state, the same
processors called with it. It ends without the copy: the processors get the ended span
itself, whose fields can no longer change (the SDK's copy shares its attributes, events
and links with it anyway).

Everything else goes the SDK's way: another sampler's decision, a remote parent, links,
an explicit start time, attribute values to clean, a tracer the SDK configured off or
with metrics or an id generator of its own, and any SDK whose ``Span`` has fields this
module does not know (checked once, when the tracer is made: then no span is made here at all).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Span, Tracer, _Span
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation import _SPAN_KEY
from opentelemetry.util.types import Attributes

_log = logging.getLogger("gateway.spans")

#: fields every span has of its own (set here for each span)
_OWN = frozenset(
    {
        "_name", "_context", "_parent", "_kind", "_start_time", "_attributes", "_events", "_links", "_lock",
        "_record_exception", "_set_status_on_exception",
    }
)  # fmt: skip
#: fields copied from the template: shared by every span of one tracer, or a new span's
#: first value (no status, not ended), which the span replaces rather than changes
_COPIED = frozenset(
    {
        "_resource", "_sampler", "_trace_config", "_span_processor", "_limits", "_instrumentation_info",
        "_instrumentation_scope", "_record_end_metrics", "_status", "_end_time",
    }
)  # fmt: skip
#: attribute values stored as given (the SDK would check them and keep them as they are)
_PLAIN = (str, bool, int, float)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_SAMPLED_RANDOM = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)
_UNSAMPLED = TraceFlags(TraceFlags.DEFAULT)
_UNSAMPLED_RANDOM = TraceFlags(TraceFlags.RANDOM_TRACE_ID)


class RateLimitingSampler(Sampler):
    """Samples at most ``per_s`` new traces a second (a token bucket holding ``burst``
    tokens, at least one second's worth), the rest not: Jaeger's rate-limiting sampler.
    A quiet gateway samples every request; after a quiet spell the next ``burst``
    requests are all sampled; a busy one pays for ``per_s`` sampled requests a second.

    Its decision depends on nothing but the time, so :class:`LeanTracer` asks
    :meth:`take` itself for a new trace's root and skips the SDK's path (about 4 µs
    a request, most of them for the traces it drops)."""

    def __init__(self, per_s: float, clock: Callable[[], float] = time.monotonic, burst: float = 0.0) -> None:
        self.per_s = per_s
        self.capacity = max(per_s, burst, 1.0)
        self.tokens = self.capacity
        self.clock = clock
        self.last = clock()
        #: when the bucket next holds a whole token: until then every trace is dropped
        #: without the lock (the bucket's state is a function of time alone)
        self.next_token_at = self.last
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Whether a new trace is sampled: a token taken from the bucket."""
        if self.clock() < self.next_token_at:
            return False
        with self._lock:
            now = self.clock()
            tokens = min(self.capacity, self.tokens + (now - self.last) * self.per_s)
            self.last = now
            sampled = tokens >= 1.0
            if sampled:
                tokens -= 1.0
            self.tokens = tokens
            self.next_token_at = now + (1.0 - tokens) / self.per_s if tokens < 1.0 else now
        return sampled

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        if self.take():
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, None)
        return SamplingResult(Decision.DROP, None, None)

    def get_description(self) -> str:
        return f"RateLimitingSampler{{{self.per_s:g}/s}}"


class LeanSpan(_Span):
    """The SDK's span, whose end hands the processors the span itself rather than a copy."""

    def end(self, end_time: int | None = None) -> None:
        with self._lock:
            if self._start_time is None:
                raise RuntimeError("Calling end() on a not started span.")
            if self._end_time is not None:
                _log.warning("Calling end() on an ended span.")
                return
            self._end_time = end_time if end_time is not None else time.time_ns()
            self._attributes._immutable = True  # type: ignore[attr-defined]
        if self._record_end_metrics:
            self._record_end_metrics()
        processor = self._span_processor
        processor._on_ending(self)
        processor.on_end(self)


class LeanTracer(Tracer):
    """The SDK's tracer, with :func:`make_lean`'s fast path in front of ``start_span``."""

    _lean_template: dict[str, Any]
    _lean_children: bool
    _lean_roots: bool
    _lean_bucket: RateLimitingSampler | None
    _lean_random_ids: bool

    def start_span(  # type: ignore[override]
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        links: Sequence[trace.Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        if context is None and not links and start_time is None:
            parent = otel_context.get_value(_SPAN_KEY)
            if parent is None:
                bucket = self._lean_bucket
                if self._lean_roots or bucket is not None:
                    trace_id = random.getrandbits(128)
                    while trace_id == 0:
                        trace_id = random.getrandbits(128)
                    if bucket is not None and not bucket.take():
                        # the SDK's dropped root: a non-recording span with the same ids and flags
                        flags = _UNSAMPLED_RANDOM if self._lean_random_ids else _UNSAMPLED
                        return NonRecordingSpan(SpanContext(trace_id, _span_id(), False, flags, None))
                    flags = _SAMPLED_RANDOM if self._lean_random_ids else _SAMPLED
                    return self._lean_span(
                        name, SpanContext(trace_id, _span_id(), False, flags, None), None, kind,
                        attributes, record_exception, set_status_on_exception,
                    )  # fmt: skip
            elif self._lean_children and isinstance(parent, Span):
                above = parent._context
                if above is not None and above.trace_flags.sampled and not above.is_remote:
                    # ParentBased's decision for a sampled local parent: always on, the parent's trace state
                    flags = _SAMPLED_RANDOM if above.trace_flags.random_trace_id else _SAMPLED
                    return self._lean_span(
                        name, SpanContext(above.trace_id, _span_id(), False, flags, above.trace_state), above,
                        kind, attributes, record_exception, set_status_on_exception,
                    )  # fmt: skip
        return super().start_span(
            name, context, kind, attributes, links, start_time, record_exception, set_status_on_exception
        )

    def _lean_span(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: Mapping[str, Any] | None,
        record_exception: bool,
        set_status_on_exception: bool,
    ) -> trace.Span:
        limits = self._span_limits
        if attributes:
            if limits.max_span_attributes is not None and len(attributes) > limits.max_span_attributes:
                return super().start_span(name, None, kind, attributes, (), None, record_exception, set_status_on_exception)
            for value in attributes.values():
                if not isinstance(value, _PLAIN):
                    return super().start_span(
                        name, None, kind, attributes, (), None, record_exception, set_status_on_exception
                    )
        span = Span.__new__(LeanSpan)
        fields = span.__dict__
        fields.update(self._lean_template)
        stored = BoundedAttributes(limits.max_span_attributes, None, immutable=False, max_value_len=None)
        if attributes:
            stored._dict.update(attributes)
        fields["_name"] = name
        fields["_context"] = context
        fields["_parent"] = parent
        fields["_kind"] = kind
        fields["_attributes"] = stored
        fields["_events"] = BoundedList(limits.max_events)
        fields["_links"] = BoundedList(limits.max_links)
        fields["_lock"] = threading.Lock()
        fields["_record_exception"] = record_exception
        fields["_set_status_on_exception"] = set_status_on_exception
        fields["_start_time"] = time.time_ns()
        self.span_processor.on_start(span, parent_context=None)
        return span


def _span_id() -> int:
    span_id = random.getrandbits(64)
    while span_id == 0:
        span_id = random.getrandbits(64)
    return span_id


def make_lean(tracer: trace.Tracer) -> trace.Tracer:
    """The tracer, given :class:`LeanTracer`'s fast path when it is the SDK's and the
    fast path would make exactly the span the SDK makes; else the tracer as it is."""
    if type(tracer) is not Tracer:
        return tracer
    if type(tracer.id_generator) is not RandomIdGenerator:
        return tracer  # the ids made here come from random.getrandbits, as RandomIdGenerator's do
    sampler = tracer.sampler
    children = sampler is ALWAYS_ON or (
        isinstance(sampler, ParentBased) and getattr(sampler, "_local_parent_sampled", None) is ALWAYS_ON
    )
    root = getattr(sampler, "_root", None) if isinstance(sampler, ParentBased) else None
    roots = sampler is ALWAYS_ON or root is ALWAYS_ON
    bucket = root if type(root) is RateLimitingSampler else None
    template = _template(tracer) if children or roots or bucket is not None else None
    if template is None:
        return tracer
    tracer.__class__ = LeanTracer
    lean: Any = tracer
    lean._lean_template = template
    lean._lean_children = children
    lean._lean_roots = roots
    lean._lean_bucket = bucket
    lean._lean_random_ids = tracer.id_generator.is_trace_id_random()
    return tracer


def _template(tracer: Tracer) -> dict[str, Any] | None:
    """The fields a span of this tracer shares with every other, from a span the SDK's own
    constructor built (never started: no processor sees it); None when this SDK's tracer or
    span differs from the one this module was written for."""
    try:
        if not tracer._is_enabled() or type(tracer._tracer_metrics).__name__ != "NoOpTracerMetrics":
            return None
        limits = tracer._span_limits
        if limits.max_span_attribute_length is not None:
            return None
        span = _Span(
            name="template",
            context=SpanContext(1, 1, False, _SAMPLED),
            sampler=tracer.sampler,
            resource=tracer.resource,
            span_processor=tracer.span_processor,
            instrumentation_info=tracer.instrumentation_info,
            limits=limits,
            instrumentation_scope=tracer._instrumentation_scope,
        )
        fields = dict(vars(span))
        stored = vars(fields["_attributes"])
    except (AttributeError, TypeError) as exc:
        _log.debug("spans made the SDK's way: %s", exc)
        return None
    if set(fields) != _OWN | _COPIED or "_dict" not in stored or "_immutable" not in stored:
        _log.debug("spans made the SDK's way: this SDK's Span has other fields")
        return None
    return {name: fields[name] for name in _COPIED}
