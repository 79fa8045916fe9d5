"""Browsers calling the gateway directly: CORS answers and the headers of a proxy facing them.

Nothing is allowed by default: without ``cors.allow_origins`` a browser on another
origin cannot read any answer. A preflight (``OPTIONS`` with
``Access-Control-Request-Method``) is always answered here, never forwarded: 204
with the allowances when the origin and method are allowed, else 403.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.config import CorsConfig
from gateway.errors import GatewayError

#: what the gateway calls itself in ``Server``: no version, neither its own nor aiohttp's and Python's
#: (aiohttp's default), which would tell a scanner which known flaws to try
SERVER = "llm-sidecar-gateway"
#: on every answer: no MIME sniffing, no framing (harmless for SSE and JSON), and the
#: gateway's own ``Server`` over the provider's (which would name the provider's software)
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Server": SERVER}

#: the answer headers a page may read: the gateway's own and the rate-limit ones
EXPOSED = (
    "x-request-id, x-gateway-provider, x-gateway-model, x-gateway-cache, x-gateway-cost-usd, x-gateway-threat, "
    "x-gateway-cascade, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, "
    "x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens, retry-after, server-timing"
)


def is_preflight(method: str, headers: Mapping[str, str]) -> bool:
    return method == "OPTIONS" and "Access-Control-Request-Method" in headers


def cors_not_allowed(message: str) -> GatewayError:
    return GatewayError(403, "cors_not_allowed", message, headers={"Cache-Control": "no-store"})


class Cors:
    """The ``cors`` section, compiled once."""

    def __init__(self, config: CorsConfig) -> None:
        self.any_origin = "*" in config.allow_origins
        self.origins = frozenset(origin.rstrip("/") for origin in config.allow_origins)
        self.methods = frozenset(method.upper() for method in config.allow_methods)
        self.allow_methods = ", ".join(sorted(self.methods))
        self.any_header = "*" in config.allow_headers
        self.allow_headers = ", ".join(config.allow_headers)
        self.credentials = config.allow_credentials
        self.max_age = str(config.max_age_s)

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin in self.origins

    def answer_headers(self, origin: str) -> dict[str, str]:
        """What an allowed origin's actual (non-preflight) answer carries."""
        headers = {"Access-Control-Allow-Origin": self._origin_value(origin), "Access-Control-Expose-Headers": EXPOSED}
        if self.credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        if not (self.any_origin and not self.credentials):
            headers["Vary"] = "Origin"
        return headers

    def preflight(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The 204 answer's headers, or 403 ``cors_not_allowed``."""
        origin = headers.get("Origin", "")
        if not origin or not self.allows(origin):
            raise cors_not_allowed("This origin may not call the gateway (cors.allow_origins).")
        method = headers.get("Access-Control-Request-Method", "").upper()
        if method not in self.methods:
            raise cors_not_allowed(f"Method {method or '(none)'} is not allowed (cors.allow_methods).")
        requested = headers.get("Access-Control-Request-Headers", "")
        answer = self.answer_headers(origin)
        answer.update(
            {
                "Access-Control-Allow-Methods": self.allow_methods,
                # "*" does not cover Authorization in browsers: echo what was asked for instead.
                "Access-Control-Allow-Headers": requested if self.any_header else self.allow_headers,
                "Access-Control-Max-Age": self.max_age,
                "Cache-Control": "no-store",
                "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            }
        )
        return answer

    def _origin_value(self, origin: str) -> str:
        return "*" if self.any_origin and not self.credentials else origin
