"""Plugins for the translation tests: one records what plugins see, one fails over like a breaker."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway import Exchange, GatewayError, Response, StreamEvent, hookimpl
from gateway.hookspecs import CallNext

#: what the recorder saw in the last exchange
SEEN: dict[str, Any] = {}


class Recorder:
    @hookimpl
    async def request(self, exchange: Exchange) -> None:
        SEEN.clear()
        SEEN["api"] = exchange.api
        SEEN["request_keys"] = sorted(exchange.json() or {})
        SEEN["chunks"] = []

    @hookimpl
    async def chunk(self, exchange: Exchange, event: StreamEvent) -> None:
        SEEN["chunks"].append((event.name, event.json()))

    @hookimpl
    async def response(self, exchange: Exchange, response: Response) -> None:
        SEEN["provider_api"] = exchange.provider_api
        SEEN["answer"] = None if response.is_stream else response.json()

    @hookimpl
    async def complete(self, exchange: Exchange) -> None:
        SEEN["usage"] = exchange.usage
        SEEN["error"] = exchange.error


class FallbackConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    to: str


class Fallback:
    """On a 5xx, try once more on another provider, as the breaker plugin does."""

    Config = FallbackConfig

    def __init__(self, config: FallbackConfig) -> None:
        self.to = config.to
        self.providers: dict[str, Any] = {}

    @hookimpl
    def configure(self, gateway: Any) -> None:
        self.providers = gateway.providers

    @hookimpl
    async def send(self, exchange: Exchange, call_next: CallNext) -> Response:
        try:
            response = await call_next(exchange)
        except GatewayError as error:
            if error.status < 500:
                raise
        else:
            if response.status < 500:
                return response
        exchange.provider = self.providers[self.to]
        return await call_next(exchange)
