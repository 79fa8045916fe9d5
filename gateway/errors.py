"""Errors the gateway itself answers, rendered in the shape of the route's API.

Plugins and the core raise :class:`GatewayError` (or return one of its answers);
exactly one function, :func:`error_body`, turns it into bytes, so an OpenAI route
answers ``{"error": {...}}`` and an Anthropic route ``{"type": "error", ...}`` and
the official SDKs raise their proper exception classes.
"""

from __future__ import annotations

import math

import msgspec

from gateway.redact import redact

# OpenAI's error "type" for each status the gateway answers; Anthropic routes carry
# the gateway's own code in error.type instead (see error_body).
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    414: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
}


class GatewayError(Exception):
    """An answer the gateway gives instead of the upstream's.

    Raise it from any hook (or the core) to end the exchange with this status and
    code; ``headers`` are added to the answer (``Retry-After`` for 429 and 503).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.code!r}, {self.message!r})"


class StartupError(Exception):
    """The gateway cannot start: a port is taken, a plugin's startup failed."""


def invalid_request(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, "invalid_request", message, param=param)


def threat_detected(message: str) -> GatewayError:
    return GatewayError(400, "threat_detected", message)


def invalid_api_key(message: str = "Missing or unknown API key.") -> GatewayError:
    return GatewayError(401, "invalid_api_key", message)


def budget_exceeded(message: str) -> GatewayError:
    return GatewayError(402, "budget_exceeded", message)


def request_too_large(limit_bytes: int) -> GatewayError:
    return GatewayError(
        413, "request_too_large", f"Request body is larger than the limit of {limit_bytes} bytes."
    )


def rate_limit_exceeded(message: str, retry_after_s: float) -> GatewayError:
    return GatewayError(
        429, "rate_limit_exceeded", message, headers={"Retry-After": _seconds(retry_after_s)}
    )


def upstream_error(message: str) -> GatewayError:
    return GatewayError(502, "upstream_error", message)


def circuit_open(message: str, retry_after_s: float) -> GatewayError:
    return GatewayError(503, "circuit_open", message, headers={"Retry-After": _seconds(retry_after_s)})


def backend_unavailable(message: str) -> GatewayError:
    """503 with ``Retry-After: 1`` (like every 503 the gateway makes): a client that obeys
    it waits a moment for the backend to come back instead of hammering the gateway."""
    return GatewayError(503, "backend_unavailable", message, headers={"Retry-After": "1"})


def upstream_timeout(message: str) -> GatewayError:
    return GatewayError(504, "upstream_timeout", message)


def plugin_error(plugin: str) -> GatewayError:
    # The exception text stays in the log: it may quote a request or a backend URL.
    return GatewayError(500, "plugin_error", f"Plugin '{plugin}' failed; see the gateway log.")


def client_closed_request() -> GatewayError:
    """Recorded, never sent: the caller left before the answer was complete (nginx's 499)."""
    return GatewayError(499, "client_closed_request", "The caller closed the connection.")


def route_not_found(path: str) -> GatewayError:
    return GatewayError(404, "route_not_found", f"No route or provider serves {path}.")


def _seconds(value: float) -> str:
    """Whole seconds, rounded up (at least 1): a caller that waits this long is let through."""
    return str(max(1, math.ceil(value - 1e-9)))


_encode = msgspec.json.Encoder().encode


def error_body(error: GatewayError, api: str) -> bytes:
    """The JSON body for ``error`` in the shape of ``api`` ("openai" or "anthropic"); a
    plugin's message never shows a key of the configuration."""
    message = redact(error.message)
    if api == "anthropic":
        return _encode({"type": "error", "error": {"type": error.code, "message": message}})
    kind = _OPENAI_TYPES.get(error.status, "server_error" if error.status >= 500 else "invalid_request_error")
    return _encode({"error": {"message": message, "type": kind, "code": error.code, "param": error.param}})
