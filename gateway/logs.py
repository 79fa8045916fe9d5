"""JSON log lines that carry the request id and the trace id.

One object per line on stderr: ``ts``, ``level``, ``logger``, ``message``, then
``request_id`` and ``trace_id``/``span_id`` when a request is being served, then any
``extra`` fields. Nothing here ever formats a message whose level is not enabled.

With ``log.access`` (the default) the core writes one access line per request
(:class:`AccessLog`), whatever plugins are in the chain.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp.http_exceptions import HttpProcessingError
from opentelemetry import trace

from gateway.metrics import route_of
from gateway.proxy import request_id_var
from gateway.redact import redact
from gateway.telemetry import requested_model

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

    from gateway.config import LogConfig
    from gateway.exchange import Exchange

# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_encode = msgspec.json.Encoder(enc_hook=repr).encode
_UNKNOWN: Any = object()
#: the record logging's error report names when access lines could not be written
_UNWRITTEN = logging.LogRecord("gateway.access", logging.INFO, "", 0, "access lines not written", None, None)


class JsonFormatter(logging.Formatter):
    _second = -1
    _stamp = ""

    def ts(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # one strftime a second, not one a line
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._stamp}.{int((created - second) * 1000):03d}Z"

    def head(
        self, created: float, level: str, logger: str, message: str, request_id: str | None, context: SpanContext | None
    ) -> dict[str, Any]:
        """The fields every line starts with, the request and trace ids included."""
        line: dict[str, Any] = {"ts": self.ts(created), "level": level, "logger": logger, "message": message}
        if request_id is not None:
            line["request_id"] = request_id
        if context is not None and context.is_valid:
            line["trace_id"] = format(context.trace_id, "032x")
            line["span_id"] = format(context.span_id, "016x")
        return line

    def format(self, record: logging.LogRecord) -> str:
        ids = record.__dict__.get("_ids")  # an access line's own (see write_access_line)
        if ids is None:  # any other line: the request being served now
            ids = (request_id_var.get(), trace.get_current_span().get_span_context())
        line = self.head(record.created, record.levelname.lower(), record.name, record.getMessage(), *ids)
        fields = record.__dict__.get("_fields")
        if fields is not None:  # the access line's fields, in one attribute (see write_access_line)
            line.update(fields)
        else:
            for key, value in record.__dict__.items():
                if key not in _STANDARD and not key.startswith("_"):
                    line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return redact(_encode(line).decode())  # a plugin's message or exception may quote a key


class GatewayHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stderr handler :func:`setup` installs. Access lines skip the logging
    machinery (a record, its handlers, the formatter) and go straight to it when it
    is the only handler they would reach: see :meth:`AccessLog.write`.

    The access lines of the requests that end in one event-loop iteration go out in
    one write when it is over (a write and a flush a line cost a request about a
    fifth of what its access line does); any other line first writes those, so the
    order of lines is kept, and so does ``flush`` (at exit too)."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._lines: list[bytes] = []

    def write_line(self, line: bytes) -> None:
        """Queue one encoded line (no newline) for the end of this loop iteration."""
        self.acquire()
        try:
            lines = self._lines
            lines.append(line)
            if len(lines) > 1:
                return  # the write is already due
        finally:
            self.release()
        try:
            asyncio.get_running_loop().call_soon(self.write_lines)
        except RuntimeError:  # no loop running: now
            self.write_lines()

    def write_lines(self) -> None:
        """Write the queued access lines, in one write."""
        self.acquire()
        try:
            lines = self._lines
            if not lines:
                return
            self._lines = []
            lines.append(b"")
            data = b"\n".join(lines)
            stream = self.stream
            binary = getattr(stream, "buffer", None)
            try:
                if binary is None:
                    stream.write(data.decode())
                else:
                    stream.flush()  # a text write not flushed yet goes first
                    binary.write(data)
                    binary.flush()
            except Exception:  # stderr closed or full: what logging does with any line it cannot write
                self.handleError(_UNWRITTEN)
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        if self._lines:
            self.write_lines()
        super().emit(record)

    def flush(self) -> None:
        if self._lines:
            self.write_lines()
        super().flush()


def setup(level: str = "info") -> None:
    """Send every log line, the gateway's and its libraries', to stderr as JSON."""
    handler = GatewayHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # No line shows the file and line number of its call: do not look them up
    # (walking the stack is the dearest part of a log call).
    logging._srcfile = None  # type: ignore[attr-defined]
    fast_records()
    logging.getLogger("aiohttp.server").addFilter(_without_request_bytes)


def _without_request_bytes(record: logging.LogRecord) -> bool:
    """aiohttp logs a request it cannot parse with a traceback quoting the offending
    line, which may hold a key: keep the line, drop the quote."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError):
        record.args = (record.getMessage(), type(exc).__name__)
        record.msg = "%s: %s (the request is not quoted: it may hold a key)"
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True


def fast_records() -> None:
    """Log records skip what no line shows: thread, process and task names."""
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # aiohttp's access log would be a second, unstructured line per request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


access_log = logging.getLogger("gateway.access")


def _ms(seconds: float | None) -> float | None:
    """Milliseconds to the microsecond. An integer over 1000 prints with at most three
    decimals, as round(x, 3) does, at a fifth of its cost (four per access line)."""
    return int(seconds * 1e6 + 0.5) / 1000 if seconds is not None else None


def access_fields(exchange: Exchange, status: int, model: str | None | Any = _UNKNOWN) -> dict[str, Any]:
    """What one access line says about an exchange; never a header, key or body.

    The request id and trace id come with every log line (see :class:`JsonFormatter`).
    """
    provider = exchange.provider if exchange.attempts else None
    error = exchange.error
    response = exchange.response
    usage = exchange.usage
    cost_usd = exchange.cost_usd
    return {
        "method": exchange.method,
        "path": exchange.path,
        "route": route_of(exchange.path),
        "status": status,
        "caller": exchange.caller,
        "client": exchange.client,
        "provider": provider.name if provider is not None else None,
        "model": requested_model(exchange) if model is _UNKNOWN else model,
        "served_model": exchange.served_model,
        "stream": response.is_stream if response is not None else False,
        "attempts": exchange.attempts,
        "duration_ms": _ms(exchange.elapsed_s()),
        "upstream_ms": _ms(exchange.upstream_s),
        "gateway_ms": _ms(exchange.gateway_s),
        "first_token_ms": _ms(exchange.first_token_s),
        "input_tokens": usage.input_tokens if usage is not None else None,
        "output_tokens": usage.output_tokens if usage is not None else None,
        "cached_input_tokens": usage.cached_input_tokens if usage is not None else None,
        # SPEC's names: the line has "tokens" (input + output) and "cost" (USD) too
        "tokens": usage.input_tokens + usage.output_tokens if usage is not None else None,
        "cost_usd": cost_usd,
        "cost": cost_usd,
        "cache": exchange.cache_status,
        "threat": exchange.threat_severity,
        "cascade": exchange.cascade_decision,
        "error": error.code if error is not None else None,
    }


class AccessLog:
    """``log.access``: one JSON line per request on logger ``gateway.access``, at ``log.access_level``."""

    def __init__(self, config: LogConfig) -> None:
        self.enabled = config.access
        self.level = logging.getLevelName(config.access_level.upper())
        self.level_name = config.access_level
        self.lines = 0

    def write(
        self, exchange: Exchange, status: int, model: str | None | Any = _UNKNOWN, span: trace.Span | None = None
    ) -> None:
        """The access line of a finished exchange (``model``: the body's, when the caller already read it;
        ``span``: its SERVER span, None when it was not traced), whatever the current context."""
        if not self.enabled or not access_log.isEnabledFor(self.level):
            return
        context = span.get_span_context() if span is not None else None
        handler = _direct_handler(self.level)
        if handler is None:
            write_access_line(self.level, exchange, status, model, context)
        else:
            # The same line JsonFormatter would make, for a quarter of the cost.
            formatter = handler.formatter
            assert isinstance(formatter, JsonFormatter)
            message = f"{exchange.method} {exchange.path} {status}"
            line = formatter.head(time.time(), self.level_name, "gateway.access", message, exchange.request_id, context)
            line.update(access_fields(exchange, status, model))
            handler.write_line(_encode(line))
        self.lines += 1


def _direct_handler(level: int) -> GatewayHandler | None:
    """The handler an access line would reach, when it is setup()'s alone (no other
    handler or filter on the way), else None."""
    root = logging.root
    handlers = root.handlers
    if access_log.handlers or access_log.filters or root.filters or not access_log.propagate or len(handlers) != 1:
        return None
    handler = handlers[0]
    if type(handler) is not GatewayHandler or handler.filters or handler.level > level:
        return None
    if not isinstance(handler.formatter, JsonFormatter):
        return None
    return handler


def write_access_line(
    level: int,
    exchange: Exchange,
    status: int,
    model: str | None | Any = _UNKNOWN,
    context: SpanContext | None = None,
) -> None:
    """Log the access line of an exchange on ``gateway.access`` (its level enabled)."""
    record = logging.LogRecord(
        "gateway.access", level, "", 0, "%s %s %s", (exchange.method, exchange.path, status), None
    )
    record._fields = access_fields(exchange, status, model)
    record._ids = (exchange.request_id, context)
    access_log.handle(record)
