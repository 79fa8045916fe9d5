"""Breaker state shared between replicas through Redis, off the hot path.

One Redis hash (``<prefix>open``) maps a breaker's key (``openai``, or
``openai/gpt-4o`` with ``per_model``) to the wall-clock time (epoch seconds) until
which it is open. A replica whose breaker opens writes its field (``HSET``); a
replica whose breaker closes, or an admin reset, removes it (``HDEL``). Every
``sync_s`` a background task reads the whole hash (one ``HGETALL``) and applies it
to the local breakers: an entry opens the local breaker until that time (so the
outage is learned once, not once per replica); an entry that went away lets a
breaker that was open here probe at once. Requests never wait on Redis: they read
local state only, which the sync keeps at most ``sync_s`` behind.

When Redis is unreachable the breakers go on with local state alone; the failure
is logged at most once per ``LOG_EVERY_S`` and counted (``backend_errors``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

log = logging.getLogger("gateway.breaker")

LOG_EVERY_S = 30.0
TIMEOUT_S = 0.5


class SharedState:
    """The Redis hash of open breakers, and the task that keeps the local ones in step with it."""

    def __init__(self, url: str, prefix: str, sync_s: float, tracer: trace.Tracer) -> None:
        self.url = url
        self.hash = f"{prefix}open"
        self.sync_s = sync_s
        self.tracer = tracer
        self.client: Any = None
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self.writes: set[asyncio.Task[None]] = set()
        self.errors = 0
        self.healthy = True
        self.synced_at: float | None = None
        self._logged_at = -LOG_EVERY_S

    async def start(self, apply: Callable[[dict[str, float], float], None], gateway: Any) -> None:
        # The gateway's shared, pipelined connection (gateway.redis): the sync's HGETALL
        # and the writes travel with the other plugins' calls of the moment.
        self.client = gateway.redis(self.url, timeout_s=TIMEOUT_S)
        await self.sync(apply)  # a replica that starts during an outage knows it before its first request
        self.task = asyncio.create_task(self._run(apply), name="breaker-sync")

    async def close(self) -> None:
        self.closing = True
        if self.task is not None:
            # redis-py may turn the cancellation of a call in flight into a timeout,
            # which sync() treats as an outage and carries on: the flag ends the loop,
            # and the wait is bounded whatever happens.
            self.task.cancel()
            await asyncio.wait({self.task}, timeout=TIMEOUT_S + 1)
        if self.writes:
            await asyncio.gather(*self.writes, return_exceptions=True)
        if self.client is not None:
            await self.client.close()

    async def _run(self, apply: Callable[[dict[str, float], float], None]) -> None:
        while not self.closing:
            await asyncio.sleep(self.sync_s)
            await self.sync(apply)

    async def sync(self, apply: Callable[[dict[str, float], float], None]) -> None:
        """Read every open entry and hand them to ``apply(entries, sent_at)``."""
        sent_at = time.monotonic()
        try:
            raw = await self.client.call("HGETALL", self.hash)
        except Exception as exc:  # any Redis or network failure: local state goes on
            self._failed("read", exc)
            return
        self._recovered()
        entries: dict[str, float] = {}
        for key, value in zip(raw[::2], raw[1::2], strict=True):  # field, value, field, value...
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                entries[key.decode()] = float(value)
        self.synced_at = time.time()
        apply(entries, sent_at)

    def publish_open(self, key: str, until_epoch_s: float, done: Callable[[], None]) -> None:
        """Write ``key`` open until ``until_epoch_s`` in the background; ``done()`` once stored."""
        self._spawn(self._write("HSET", key, until_epoch_s, done))

    def publish_closed(self, key: str, done: Callable[[], None] | None = None) -> None:
        """Remove ``key`` in the background; ``done()`` once Redis answered (or the write failed)."""
        self._spawn(self._write("HDEL", key, None, done))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.writes.add(task)
        task.add_done_callback(self.writes.discard)

    async def _write(self, command: str, key: str, until: float | None, done: Callable[[], None] | None) -> None:
        attributes = {"db.system": "redis", "db.operation.name": command, "gateway.breaker": key}
        with self.tracer.start_as_current_span(f"breaker redis {command}", kind=trace.SpanKind.CLIENT, attributes=attributes):
            try:
                if until is not None:
                    await self.client.call("HSET", self.hash, key, repr(until))
                else:
                    await self.client.call("HDEL", self.hash, key)
            except Exception as exc:
                self._failed("write", exc)
                trace.get_current_span().set_status(trace.StatusCode.ERROR)
                if until is None and done is not None:
                    done()  # a removal that failed is over all the same: the next reads decide
                return
        self._recovered()
        if done is not None:
            done()

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        self.healthy = False
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.warning(
                "breaker backend unreachable (%s failed: %s); going on with this replica's own breaker state",
                what,
                type(exc).__name__,
                extra={"backend": "redis"},
            )

    def _recovered(self) -> None:
        if not self.healthy:
            self.healthy = True
            self._logged_at = -LOG_EVERY_S
            log.info("breaker backend reachable again", extra={"backend": "redis"})
