"""OTLP/HTTP span export with a lean encoder: the SDK's transport, not its encoder.

Why: the OTLP/HTTP exporter of the OpenTelemetry SDK builds one protobuf message
object per span, attribute and value (``opentelemetry-exporter-otlp-proto-common``)
before serializing them: 27-45 µs a span, on the gateway's one core (the export
thread holds the GIL). :class:`ProtobufEncoder` writes the same
``ExportTraceServiceRequest`` bytes directly from the ``ReadableSpan`` objects (5-10 µs),
and :class:`JsonEncoder` the OTLP/JSON form of it (``OTEL_EXPORTER_OTLP_PROTOCOL=http/json``,
which the Python SDK does not offer) with msgspec. :class:`SpanExporter` hands the
bytes to the SDK exporter's own HTTP client, so the endpoint, headers, timeout,
compression, TLS and retry handling stay the SDK's, read from the same ``OTEL_*``
variables.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

_log = logging.getLogger("gateway.otlp")

PROTOBUF = "http/protobuf"
JSON = "http/json"

_VARINT = [bytes((n,)) for n in range(128)]
_INT64 = (1 << 63) - 1
#: SpanFlags: the parent's "is remote" is known (always), and whether it is remote
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
#: KeyValue fields already encoded, by (key, value); bounded, cleared when full
_KV_CACHE_MAX = 4096
#: longer string values are encoded every time (they rarely repeat, and the cache stays small)
_CACHED_STR_MAX = 256
#: Span.kind (field 6) by the API's SpanKind value (INTERNAL 0...), OTLP's being one more
_KIND = [bytes((0x30, value + 1)) for value in range(5)]
_times = struct.Struct("<BQBQ").pack
#: Span.flags (field 16, fixed32) after a local or a remote parent
_LOCAL = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE)
_REMOTE = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE)


def _varint(n: int) -> bytes:
    if n < 128:
        return _VARINT[n]
    out = bytearray()
    while n > 127:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    n = len(payload)
    return tag + (_VARINT[n] if n < 128 else _varint(n)) + payload


def _any_value(value: Any) -> bytes | None:
    """An ``AnyValue`` message; None for a value OTLP cannot carry (the SDK's encoder skips those too)."""
    if isinstance(value, str):
        return _len(b"\x0a", value.encode())
    if isinstance(value, bool):  # before int: a bool is an int
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        if not -_INT64 - 1 <= value <= _INT64:
            return None
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    if isinstance(value, bytes):
        return _len(b"\x3a", value)
    if value is None:
        return b""
    if isinstance(value, Mapping):
        return _len(b"\x32", b"".join(_key_value(str(key), item, b"\x0a") for key, item in value.items()))
    if isinstance(value, Sequence):
        items = [_any_value(item) for item in value]
        if any(item is None for item in items):
            return None
        return _len(b"\x2a", b"".join(_len(b"\x0a", item) for item in items))  # type: ignore[arg-type]
    return None


def _key_value(key: str, value: Any, tag: bytes) -> bytes:
    """A ``KeyValue`` as field ``tag`` of its parent ("" when the value cannot be encoded)."""
    encoded = _any_value(value)
    if encoded is None:
        return b""
    return _len(tag, _len(b"\x0a", key.encode()) + _len(b"\x12", encoded))


class _Attributes:
    """Encodes attribute maps, remembering the ``KeyValue`` bytes of pairs seen before:
    most of a span's attributes (plugin and hook names, provider, method, model, URL,
    status code, attempt) repeat from request to request."""

    def __init__(self) -> None:
        # by type, since 1, 1.0 and True are equal dict keys
        self._strings: dict[tuple[str, str, bytes], bytes] = {}
        self._ints: dict[tuple[str, int, bytes], bytes] = {}

    def encode(self, attributes: Mapping[str, Any] | None, tag: bytes) -> bytes:
        if not attributes:
            return b""
        # the plain dict inside the SDK's BoundedAttributes: its mapping methods take
        # a lock and look every key up again
        items = getattr(attributes, "_dict", attributes).items()
        parts = []
        for key, value in items:
            kind = type(value)
            cache = self._strings if kind is str else self._ints if kind is int else None
            if cache is None or (kind is str and len(value) > _CACHED_STR_MAX):
                parts.append(_key_value(key, value, tag))
                continue
            pair = (key, value, tag)
            encoded = cache.get(pair)
            if encoded is None:
                if len(cache) >= _KV_CACHE_MAX:
                    cache.clear()
                encoded = cache[pair] = _key_value(key, value, tag)
            parts.append(encoded)
        return b"".join(parts)


def _flags(parent: Any) -> int:
    return _HAS_IS_REMOTE | _IS_REMOTE if parent is not None and parent.is_remote else _HAS_IS_REMOTE


def _trace_state(context: Any) -> str:
    state = context.trace_state
    return ",".join(f"{key}={value}" for key, value in state.items()) if state else ""


class ProtobufEncoder:
    """``ExportTraceServiceRequest`` bytes from finished spans, field for field what the
    SDK's ``encode_spans`` makes (checked against it in tests/test_otlp.py)."""

    def __init__(self) -> None:
        self._attributes = _Attributes()
        self._resources: dict[int, tuple[Resource, bytes]] = {}
        self._scopes: dict[int, tuple[InstrumentationScope | None, bytes]] = {}

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        groups: dict[int, dict[int, list[bytes]]] = {}
        for span in spans:
            resource, scope = span.resource, span.instrumentation_scope
            by_scope = groups.get(id(resource))
            if by_scope is None:
                by_scope = groups[id(resource)] = {}
                if id(resource) not in self._resources:
                    self._resources[id(resource)] = (resource, self._resource(resource))
            encoded = by_scope.get(id(scope))
            if encoded is None:
                encoded = by_scope[id(scope)] = []
                if id(scope) not in self._scopes:
                    self._scopes[id(scope)] = (scope, self._scope(scope))
            encoded.append(self._span(span))
        out = []
        for resource_id, by_scope in groups.items():
            scope_spans = b"".join(
                _len(b"\x12", self._scopes[scope_id][1] + b"".join(_len(b"\x12", span) for span in spans))
                for scope_id, spans in by_scope.items()
            )
            out.append(_len(b"\x0a", self._resources[resource_id][1] + scope_spans))
        return b"".join(out)

    def _resource(self, resource: Resource) -> bytes:
        """ResourceSpans' resource (1) and schema_url (3); scope_spans (2) go between,
        which protobuf parsers accept in any order."""
        encoded = _len(b"\x0a", self._attributes.encode(resource.attributes, b"\x0a"))
        if resource.schema_url:
            encoded += _len(b"\x1a", resource.schema_url.encode())
        return encoded

    def _scope(self, scope: InstrumentationScope | None) -> bytes:
        """ScopeSpans' scope (1) and schema_url (3)."""
        if scope is None:
            return b"\x0a\x00"
        body = _len(b"\x0a", scope.name.encode()) if scope.name else b""
        if scope.version:
            body += _len(b"\x12", scope.version.encode())
        body += self._attributes.encode(scope.attributes, b"\x1a")
        encoded = _len(b"\x0a", body)
        if scope.schema_url:
            encoded += _len(b"\x1a", scope.schema_url.encode())
        return encoded

    def _span(self, span: ReadableSpan) -> bytes:
        # The SDK's own fields: its properties copy events and links into new tuples
        # and wrap attributes in a proxy on every read (tests/test_otlp.py compares the
        # result with the SDK's encoder, so a change there shows).
        context = span._context
        parent = span._parent
        name = span._name.encode()
        n = len(name)
        parts = [
            b"\x0a\x10", context.trace_id.to_bytes(16, "big"), b"\x12\x08", context.span_id.to_bytes(8, "big"),
        ]  # fmt: skip
        if context.trace_state:
            parts.append(_len(b"\x1a", _trace_state(context).encode()))
        if parent is not None:
            parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
        parts += (
            b"\x2a", _VARINT[n] if n < 128 else _varint(n), name,
            _KIND[span._kind.value],
            _times(0x39, span._start_time or 0, 0x41, span._end_time or 0),
        )  # fmt: skip
        attributes = span._attributes
        if attributes:
            parts.append(self._attributes.encode(attributes, b"\x4a"))
            if span.dropped_attributes:
                parts.append(b"\x50" + _varint(span.dropped_attributes))
        if span._events:
            for event in span._events:
                body = b"\x09" + struct.pack("<Q", event.timestamp) + _len(b"\x12", event.name.encode())
                body += self._attributes.encode(event.attributes, b"\x1a")
                if event.dropped_attributes:
                    body += b"\x20" + _varint(event.dropped_attributes)
                parts.append(_len(b"\x5a", body))
            if span.dropped_events:
                parts.append(b"\x60" + _varint(span.dropped_events))
        if span._links:
            for link in span._links:
                body = b"\x0a\x10" + link.context.trace_id.to_bytes(16, "big") + b"\x12\x08"
                body += link.context.span_id.to_bytes(8, "big") + self._attributes.encode(link.attributes, b"\x22")
                if link.dropped_attributes:
                    body += b"\x28" + _varint(link.dropped_attributes)
                parts.append(_len(b"\x6a", body + b"\x35" + struct.pack("<I", _flags(link.context))))
            if span.dropped_links:
                parts.append(b"\x70" + _varint(span.dropped_links))
        status = span._status
        code = status.status_code.value
        if code or status.description:
            body = _len(b"\x12", status.description.encode()) if status.description else b""
            if code:
                body += b"\x18" + _VARINT[code]
            parts.append(_len(b"\x7a", body))
        else:
            parts.append(b"\x7a\x00")  # the SDK always sets the status, even when empty
        parts.append(_REMOTE if parent is not None and parent.is_remote else _LOCAL)
        return b"".join(parts)


def _json_value(value: Any) -> dict[str, Any] | None:
    """An ``AnyValue`` in OTLP/JSON (int64 as a decimal string, bytes as base64, as the
    protobuf JSON mapping writes them); None for a value OTLP cannot carry."""
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)} if -_INT64 - 1 <= value <= _INT64 else None
    if isinstance(value, float):
        # JSON has no NaN or infinities: the protobuf JSON mapping writes them as strings
        return {"doubleValue": value if math.isfinite(value) else _NON_FINITE[str(value)]}
    if isinstance(value, bytes):
        return {"bytesValue": value}  # msgspec writes bytes as base64
    if value is None:
        return {}
    if isinstance(value, Mapping):
        pairs = [_json_key_value(str(key), item) for key, item in value.items()]
        return {"kvlistValue": {"values": [pair for pair in pairs if pair is not None]}}
    if isinstance(value, Sequence):
        items = [_json_value(item) for item in value]
        return None if any(item is None for item in items) else {"arrayValue": {"values": items}}
    return None


_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _json_key_value(key: str, value: Any) -> dict[str, Any] | None:
    encoded = _json_value(value)
    return None if encoded is None else {"key": key, "value": encoded}


class JsonEncoder:
    """The same request in OTLP/JSON: lowerCamelCase field names, ids in hex, enums as
    numbers, 64-bit integers as decimal strings (the OTLP specification's JSON encoding)."""

    def __init__(self) -> None:
        self._pairs: dict[tuple[str, str], dict[str, Any]] = {}
        self._encode = msgspec.json.Encoder().encode

    def _attributes(self, attributes: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        if not attributes:
            return []
        pairs = self._pairs
        out = []
        for key, value in getattr(attributes, "_dict", attributes).items():  # as in _Attributes.encode
            if type(value) is str and len(value) <= _CACHED_STR_MAX:
                pair = pairs.get((key, value))
                if pair is None:
                    if len(pairs) >= _KV_CACHE_MAX:
                        pairs.clear()
                    pair = pairs[(key, value)] = {"key": key, "value": {"stringValue": value}}
                out.append(pair)
            else:
                encoded = _json_key_value(key, value)
                if encoded is not None:
                    out.append(encoded)
        return out

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        groups: dict[int, tuple[Resource, dict[int, tuple[InstrumentationScope | None, list[dict[str, Any]]]]]] = {}
        for span in spans:
            resource, scope = span.resource, span.instrumentation_scope
            entry = groups.get(id(resource))
            if entry is None:
                entry = groups[id(resource)] = (resource, {})
            scoped = entry[1].get(id(scope))
            if scoped is None:
                scoped = entry[1][id(scope)] = (scope, [])
            scoped[1].append(self._span(span))
        return self._encode({"resourceSpans": [
            self._resource_spans(resource, list(by_scope.values())) for resource, by_scope in groups.values()
        ]})  # fmt: skip

    def _resource_spans(self, resource: Resource, by_scope: list[tuple[Any, list[dict[str, Any]]]]) -> dict[str, Any]:
        scope_spans = []
        for scope, spans in by_scope:
            described: dict[str, Any] = {}
            if scope is not None:
                described = {"name": scope.name}
                if scope.version:
                    described["version"] = scope.version
                if scope.attributes:
                    described["attributes"] = self._attributes(scope.attributes)
            entry = {"scope": described, "spans": spans}
            if scope is not None and scope.schema_url:
                entry["schemaUrl"] = scope.schema_url
            scope_spans.append(entry)
        document = {"resource": {"attributes": self._attributes(resource.attributes)}, "scopeSpans": scope_spans}
        if resource.schema_url:
            document["schemaUrl"] = resource.schema_url
        return document

    def _span(self, span: ReadableSpan) -> dict[str, Any]:
        context = span._context  # the SDK's fields, as in ProtobufEncoder._span
        parent = span._parent
        document: dict[str, Any] = {
            "traceId": format(context.trace_id, "032x"),
            "spanId": format(context.span_id, "016x"),
            "flags": _HAS_IS_REMOTE | _IS_REMOTE if parent is not None and parent.is_remote else _HAS_IS_REMOTE,
            "name": span._name,
            "kind": span._kind.value + 1,
            "startTimeUnixNano": str(span._start_time or 0),
            "endTimeUnixNano": str(span._end_time or 0),
        }
        if parent is not None:
            document["parentSpanId"] = format(parent.span_id, "016x")
        if context.trace_state:
            document["traceState"] = _trace_state(context)
        if span._attributes:
            document["attributes"] = self._attributes(span._attributes)
            if span.dropped_attributes:
                document["droppedAttributesCount"] = span.dropped_attributes
        if span._events:
            events = []
            for event in span._events:
                described = {"timeUnixNano": str(event.timestamp), "name": event.name}
                if event.attributes:
                    described["attributes"] = self._attributes(event.attributes)
                if event.dropped_attributes:
                    described["droppedAttributesCount"] = event.dropped_attributes
                events.append(described)
            document["events"] = events
            if span.dropped_events:
                document["droppedEventsCount"] = span.dropped_events
        if span._links:
            links = []
            for link in span._links:
                described = {
                    "traceId": format(link.context.trace_id, "032x"),
                    "spanId": format(link.context.span_id, "016x"),
                    "flags": _flags(link.context),
                }
                if link.attributes:
                    described["attributes"] = self._attributes(link.attributes)
                if link.dropped_attributes:
                    described["droppedAttributesCount"] = link.dropped_attributes
                links.append(described)
            document["links"] = links
            if span.dropped_links:
                document["droppedLinksCount"] = span.dropped_links
        status = span._status
        if status.status_code.value or status.description:
            described = {"code": status.status_code.value} if status.status_code.value else {}
            if status.description:
                described["message"] = status.description
            document["status"] = described
        else:
            document["status"] = _EMPTY
        return document


_EMPTY: dict[str, Any] = {}


class SpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter with :class:`ProtobufEncoder` or, for
    ``http/json``, :class:`JsonEncoder` (sent as ``application/json``) in place of its encoder."""

    def __init__(self, protocol: str = PROTOBUF) -> None:
        json = protocol == JSON
        super().__init__(headers={"Content-Type": "application/json"} if json else None)
        self.protocol = protocol
        self._encode = (JsonEncoder() if json else ProtobufEncoder()).encode
        # The SDK exporter's HTTP client (retries, compression, TLS), a private part of
        # it: without one (another SDK version) protobuf falls back to the SDK's encoder.
        self.lean = hasattr(self, "_client")
        if json and not self.lean:
            raise ValueError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=http/json: this opentelemetry-exporter-otlp-proto-http has no HTTP "
                "client the gateway can send through (use http/protobuf, or the version in pyproject.toml)"
            )

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not self.lean:
            return super().export(spans)
        if self._shutdown:
            return SpanExportResult.FAILURE
        try:
            data = self._encode(spans)
        except Exception:
            _log.exception("could not encode %d spans for OTLP", len(spans))
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS if self._client.export(data).success else SpanExportResult.FAILURE
