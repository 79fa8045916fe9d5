"""JSON log lines that carry the request id and the trace id.

One object per line on stderr: ``ts``, ``level``, ``logger``, ``message``, then
``request_id`` and ``trace_id``/``span_id`` when a request is being served, then any
``extra`` fields. Nothing here ever formats a message whose level is not enabled.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import msgspec
from opentelemetry import trace

from gateway.proxy import request_id_var

# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_encode = msgspec.json.Encoder(enc_hook=repr).encode


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            line["request_id"] = request_id
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            line["trace_id"] = format(context.trace_id, "032x")
            line["span_id"] = format(context.span_id, "016x")
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encode(line).decode()


def setup(level: str = "info") -> None:
    """Send every log line, the gateway's and its libraries', to stderr as JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would be a second, unstructured line per request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
