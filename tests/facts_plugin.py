"""A tiny test plugin that sets the facts other plugins would: scan's threat severity
(from ``x-test-threat``) and the cache's status (from ``x-test-cache``), so the
ratelimit tests need neither scan nor cache."""

from __future__ import annotations

from gateway import Exchange, hookimpl


class Facts:
    @hookimpl
    async def request(self, exchange: Exchange) -> None:
        threat = exchange.headers.get("x-test-threat")
        if threat:
            exchange.threat_severity = threat
        cache = exchange.headers.get("x-test-cache")
        if cache:
            exchange.cache_status = cache
