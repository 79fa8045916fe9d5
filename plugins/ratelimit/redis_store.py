"""The shared store: GCRA in Redis, one atomic Lua script call per decision.

Every replica runs the same two scripts against one Redis, so the limits are
global and exact: a decision reads and moves a caller's TATs inside one script,
which Redis runs atomically, and its clock is Redis's own (``TIME``), so replicas'
clocks never disagree. A caller is one hash (``<key_prefix><caller>``, one field
per limit, TATs in microseconds) that expires once its buckets are full again.

One decision is one ``EVALSHA`` (one round trip). After a Redis restart the
script cache is empty: the first call gets ``NOSCRIPT`` and sends the script with
``EVAL`` once, which caches it again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

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

#: what a call to Redis may raise when Redis is away, slow or confused
BACKEND_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


class RedisStore:
    """The Redis client, the two scripts, and a span per call."""

    def __init__(self, url: str, key_prefix: str, timeout_s: float, max_connections: int) -> None:
        # No retries inside the client: a lost reply may mean the script ran, and a
        # retry would charge the caller twice. The next request simply tries again.
        # A bounded pool: past max_connections a call waits up to timeout_s for one.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
        )
        self.client = aioredis.Redis(connection_pool=pool)
        self.key_prefix = key_prefix
        kwargs = pool.connection_kwargs
        self.attributes: dict[str, Any] = {
            "db.system": "redis",
            "db.system.name": "redis",
            "db.namespace": str(kwargs.get("db", 0)),
            "server.address": str(kwargs.get("host", kwargs.get("path", ""))),
        }
        if "port" in kwargs:
            self.attributes["server.port"] = int(kwargs["port"])
        self.tracer: trace.Tracer = trace.NoOpTracer()
        self.take_sha = _sha(TAKE)
        self.settle_sha = _sha(SETTLE)

    async def load_scripts(self) -> None:
        await self.client.script_load(TAKE)
        await self.client.script_load(SETTLE)

    async def ping(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()
        await self.client.connection_pool.disconnect()

    async def take(
        self, caller: str, limits: Sequence[Limit], charges: Sequence[float], traced: bool
    ) -> tuple[bool, list[float], float]:
        """(allowed, level of each limit in seconds before the charge, seconds Redis took)."""
        args: list[Any] = []
        for limit, charge in zip(limits, charges, strict=True):
            # Whole microseconds, rounded down: a caller spending exactly its limit fits.
            args += (limit.field, int(charge * 1e6), int(limit.period_s * 1e6))
        reply, elapsed = await self._run("take", self.take_sha, TAKE, caller, args, traced)
        return reply[0] == 1, [level / 1e6 for level in reply[1:]], elapsed

    async def settle(self, caller: str, deltas: Sequence[tuple[Limit, float]], traced: bool) -> float:
        args: list[Any] = []
        for limit, delta_s in deltas:
            delta_us = round(delta_s * 1e6)
            if delta_us:
                args += (limit.field, delta_us)
        if not args:
            return 0.0
        _, elapsed = await self._run("settle", self.settle_sha, SETTLE, caller, args, traced)
        return elapsed

    async def _run(
        self, name: str, sha: str, script: str, caller: str, args: list[Any], traced: bool
    ) -> tuple[Any, float]:
        key = self.key_prefix + caller
        if not traced:
            started = time.perf_counter()
            reply = await self._evalsha(sha, script, key, args)
            return reply, time.perf_counter() - started
        # The key names the caller: it stays off the span like every identity but the trace's own.
        attributes = {**self.attributes, "db.operation.name": "EVALSHA", "gateway.ratelimit.script": name}
        with self.tracer.start_as_current_span(
            "EVALSHA",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            started = time.perf_counter()
            try:
                reply = await self._evalsha(sha, script, key, args)
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.set_attribute("error.type", type(exc).__name__)
                raise
            return reply, time.perf_counter() - started

    async def _evalsha(self, sha: str, script: str, key: str, args: list[Any]) -> Any:
        try:
            return await self.client.evalsha(sha, 1, key, *args)
        except NoScriptError:
            # Redis restarted (or SCRIPT FLUSH): EVAL runs it and caches it again.
            return await self.client.eval(script, 1, key, *args)
