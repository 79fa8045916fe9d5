"""The shared store: GCRA in Redis, one atomic Lua script call per decision.

Every replica runs the same two scripts against one Redis, so the limits are
global and exact: a decision reads and moves a caller's TATs inside one script,
which Redis runs atomically, and its clock is Redis's own (``TIME``), so replicas'
clocks never disagree. A caller is one hash (``<key_prefix><caller>``, one field
per limit, TATs in microseconds) that expires once its buckets are full again.

Calls go through the gateway's shared Redis connection (:mod:`gateway.redis`): a
decision is one ``EVALSHA`` in the pipeline of its event-loop iteration, together
with the other requests' and plugins' calls of that moment; a settle is queued
without waiting (write-behind) and joins the next pipeline. After a Redis restart
the script cache is empty: the first call gets ``NOSCRIPT`` and is sent again with
``EVAL`` once, which caches it again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway.redis import ERRORS, Redis, Script, when_written
from gateway_plugins.ratelimit.gcra import Limit

# ARGV: field, charge_us, capacity_us for each limit. Returns {allowed, level_us...}:
# each limit's level (TAT - now, at least 0) before the charge.
TAKE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local n = #ARGV / 3
local fields = {}
for i = 1, n do fields[i] = ARGV[3 * i - 2] end
local tats = redis.call('HMGET', KEYS[1], unpack(fields))
local levels = {}
local allowed = 1
for i = 1, n do
  local level = (tonumber(tats[i]) or now) - now
  if level < 0 then level = 0 end
  levels[i] = level
  if level + tonumber(ARGV[3 * i - 1]) > tonumber(ARGV[3 * i]) then allowed = 0 end
end
if allowed == 1 then
  local pairs_ = {}
  local longest = 0
  for i = 1, n do
    local after = levels[i] + tonumber(ARGV[3 * i - 1])
    pairs_[2 * i - 1] = fields[i]
    pairs_[2 * i] = string.format('%d', now + after)
    if after > longest then longest = after end
  end
  redis.call('HSET', KEYS[1], unpack(pairs_))
  local ttl_ms = math.ceil(longest / 1000) + 1000
  if redis.call('PTTL', KEYS[1]) < ttl_ms then redis.call('PEXPIRE', KEYS[1], ttl_ms) end
end
return {allowed, unpack(levels)}
"""

# ARGV: field, delta_us pairs. A negative delta refunds, a positive one is owed.
SETTLE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local longest = 0
for i = 1, #ARGV, 2 do
  local delta = tonumber(ARGV[i + 1])
  local tat = tonumber(redis.call('HGET', KEYS[1], ARGV[i]))
  if tat == nil and delta > 0 then tat = now end
  if tat ~= nil then
    if delta > 0 and tat < now then tat = now end
    tat = tat + delta
    redis.call('HSET', KEYS[1], ARGV[i], string.format('%d', tat))
    if tat - now > longest then longest = tat - now end
  end
end
if longest > 0 then
  local ttl_ms = math.ceil(longest / 1000) + 1000
  if redis.call('PTTL', KEYS[1]) < ttl_ms then redis.call('PEXPIRE', KEYS[1], ttl_ms) end
end
return 1
"""

#: a decision sent and not yet awaited: its reply's future, perf_counter and epoch ns when sent
Sent = tuple[asyncio.Future[Any], float, int]

#: what a call to Redis may raise when Redis is away, slow or confused
BACKEND_ERRORS: tuple[type[BaseException], ...] = ERRORS


class RedisStore:
    """The two scripts on the gateway's shared Redis connection, and a span per call."""

    def __init__(self, url: str, key_prefix: str, timeout_s: float) -> None:
        self.url = url
        self.key_prefix = key_prefix
        self.timeout_s = timeout_s
        self.redis: Redis | None = None
        self.attributes: dict[str, Any] = {}
        self.tracer: trace.Tracer = trace.NoOpTracer()
        self._take: Script | None = None
        self._settle: Script | None = None

    def open(self, gateway: Any) -> None:
        """Take a handle on the gateway's connection to the URL (in ``startup``)."""
        self.redis = redis = gateway.redis(self.url, timeout_s=self.timeout_s)
        self.attributes = dict(redis.attributes)
        self._take = redis.script(TAKE)
        self._settle = redis.script(SETTLE)

    async def load_scripts(self) -> None:
        assert self.redis is not None
        await asyncio.gather(self.redis.call("SCRIPT", "LOAD", TAKE), self.redis.call("SCRIPT", "LOAD", SETTLE))

    async def ping(self) -> None:
        assert self.redis is not None
        await self.redis.ping()

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.close()

    def take(self, caller: str, limits: Sequence[Limit], charges: Sequence[float]) -> Sent:
        """Send the decision now: it joins this loop iteration's pipeline (:meth:`taken` awaits it)."""
        args: list[Any] = []
        for limit, charge in zip(limits, charges, strict=True):
            # Whole microseconds, rounded down: a caller spending exactly its limit fits.
            args += (limit.field, int(charge * 1e6), limit.period_us)
        assert self._take is not None
        started, sent_ns = time.perf_counter(), time.time_ns()
        future = self._take(keys=(self.key_prefix + caller,), args=args)
        future.add_done_callback(_retrieved)  # a request cancelled before it awaits leaves no warning
        return future, started, sent_ns

    async def taken(self, sent: Sent, traced: bool) -> tuple[bool, list[float], float]:
        """(allowed, level of each limit in seconds before the charge, seconds Redis took).
        With ``traced`` (the request is recorded) the call's span is made here, under the
        span current now, from when it was sent."""
        future, started, sent_ns = sent
        if not traced:
            reply = await future
            return reply[0] == 1, [level / 1e6 for level in reply[1:]], time.perf_counter() - started
        # The key names the caller: it stays off the span like every identity but the trace's own.
        with self.tracer.start_as_current_span(
            "EVALSHA",
            kind=SpanKind.CLIENT,
            attributes=self._span_attributes("take"),
            start_time=sent_ns,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                reply = await future
            except BaseException as exc:
                _failed_span(span, exc)
                raise
        return reply[0] == 1, [level / 1e6 for level in reply[1:]], time.perf_counter() - started

    def settle(
        self,
        caller: str,
        deltas: Sequence[tuple[Limit, float]],
        traced: bool,
        done: Callable[[BaseException | None], None],
    ) -> bool:
        """Queue the settle without waiting for it (write-behind); ``done(error or None)``
        once Redis answered. False when there was nothing to settle."""
        args: list[Any] = []
        for limit, delta_s in deltas:
            delta_us = round(delta_s * 1e6)
            if delta_us:
                args += (limit.field, delta_us)
        if not args:
            return False
        assert self._settle is not None
        future = self._settle(keys=(self.key_prefix + caller,), args=args)
        span = None
        if traced:
            span = self.tracer.start_span("EVALSHA", kind=SpanKind.CLIENT, attributes=self._span_attributes("settle"))
        when_written(future, span, done)
        return True

    def _span_attributes(self, name: str) -> dict[str, Any]:
        return {**self.attributes, "db.operation.name": "EVALSHA", "gateway.ratelimit.script": name}


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _failed_span(span: trace.Span, exc: BaseException) -> None:
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    span.set_attribute("error.type", type(exc).__name__)
