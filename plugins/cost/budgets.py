"""Budget counters: what each caller spent today and this month, and what calls in
flight have reserved.

A call is admitted while ``spent + reserved < limit`` for each period, and then
reserves its estimated cost; when it completes, the reservation is replaced by
what it really cost. So concurrent calls cannot overspend a budget by more than
what the calls already admitted (in flight) cost beyond their estimates.

Two backends: in process (one replica; the day's and month's spend are read back
from the ledger at startup), and Redis (many replicas share the counters; each
check-and-reserve and each settle is one Lua script, atomic on the server, sent
through the gateway's shared, pipelined Redis connection).
Periods are UTC days (``YYYY-MM-DD``) and months (``YYYY-MM``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import msgspec
from opentelemetry.trace import Span

from gateway.redis import when_written

DAY_TTL_S = 3 * 86400
MONTH_TTL_S = 33 * 86400
#: a reservation a crashed replica never settled stops counting after this long
RESERVATION_TTL_S = 900
#: how long a reservation given back by a call that cost nothing may wait for the next reserve
RELEASE_WITHIN_S = 0.05
#: callers whose Redis keys are kept made (more: the keys are made again)
_KEYS_KEPT = 10_000
#: a settle waiting to be sent: the caller's keys, the script's arguments, its span, its callback
_Settle = tuple[tuple[str, str, str], list[Any], Span | None, Callable[[BaseException | None], None]]


class Limits(msgspec.Struct, frozen=True):
    """Picodollars per period; None: unlimited."""

    per_day: int | None
    per_month: int | None


class Decision(msgspec.Struct):
    allowed: bool
    spent_day: int
    spent_month: int
    reserved: int
    #: "day" or "month" when refused
    period: str | None = None


_periods_cache: tuple[int, tuple[str, str]] = (-1, ("", ""))


def periods(now: float) -> tuple[str, str]:
    """The UTC day and month of ``now`` (formatted once a day: this runs on every call)."""
    global _periods_cache
    day_number = int(now // 86400)
    cached_day, names = _periods_cache
    if day_number != cached_day:
        day = dt.datetime.fromtimestamp(day_number * 86400, dt.UTC)
        names = (day.strftime("%Y-%m-%d"), day.strftime("%Y-%m"))
        _periods_cache = (day_number, names)
    return names


def resets_at(now: float) -> tuple[str, str]:
    """When the day's and the month's budgets start over (ISO 8601, UTC)."""
    today = dt.datetime.fromtimestamp(now, dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    tomorrow = today + dt.timedelta(days=1)
    next_month = (today.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return tomorrow.isoformat().replace("+00:00", "Z"), next_month.isoformat().replace("+00:00", "Z")


class MemoryBudgets:
    """Counters in this process (one event loop: every step is atomic)."""

    def __init__(self) -> None:
        self.spent: defaultdict[tuple[str, str], int] = defaultdict(int)  # (caller, day or month) -> picodollars
        self.reserved: defaultdict[str, int] = defaultdict(int)
        self._day = ""

    def load(self, rows: list[tuple[str, str, int]]) -> None:
        """Start from the ledger's (client, day, picodollars) rows of this month."""
        for client, day, pico in rows:
            self.spent[(client, day)] += pico
            self.spent[(client, day[:7])] += pico

    def _prune(self, day: str, month: str) -> None:
        """A new day: forget the periods before it."""
        self._day = day
        for key in [key for key in self.spent if key[1] not in (day, month)]:
            del self.spent[key]

    def take(self, caller: str, estimate: int, limits: Limits, now: float) -> Decision | None:
        """Reserve ``estimate`` for a call, or the refusal when a budget is spent (plain
        calls, not coroutines: nothing here waits)."""
        day, month = periods(now)
        if day != self._day:
            self._prune(day, month)
        spent = self.spent
        spent_day, spent_month = spent.get((caller, day), 0), spent.get((caller, month), 0)
        reserved = self.reserved.get(caller, 0)
        if limits.per_day is not None and spent_day + reserved >= limits.per_day:
            return Decision(False, spent_day, spent_month, reserved, "day")
        if limits.per_month is not None and spent_month + reserved >= limits.per_month:
            return Decision(False, spent_day, spent_month, reserved, "month")
        self.reserved[caller] = reserved + estimate
        return None

    def charge(self, caller: str, estimate: int | None, actual: int, now: float) -> None:
        """Give the reservation back and add what the call really cost."""
        if estimate is not None:
            left = self.reserved.get(caller, 0) - estimate
            if left > 0:
                self.reserved[caller] = left
            else:
                self.reserved.pop(caller, None)
        if actual:
            day, month = periods(now)
            if day != self._day:
                self._prune(day, month)
            self.spent[(caller, day)] += actual
            self.spent[(caller, month)] += actual

    async def quota(self, caller: str, now: float) -> tuple[int, int, int]:
        day, month = periods(now)
        return self.spent.get((caller, day), 0), self.spent.get((caller, month), 0), self.reserved.get(caller, 0)

    async def close(self) -> None:
        pass


# KEYS: spent of the day, spent of the month, reservations (a sorted set: member
# "request_id:picodollars", score: when it lapses, in ms).
# ARGV: now (ms), day limit, month limit (-1: none), member, reservation TTL (ms).
# Lua numbers are doubles: the comparison is exact up to 2^53 picodollars ($9,007)
# and off by less than a picodollar in 10^15 above; the counters themselves are
# INCRBY's exact 64-bit integers.
_RESERVE = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local reserved = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  reserved = reserved + tonumber(string.match(member, ':(%d+)$'))
end
local day = redis.call('GET', KEYS[1]) or '0'
local month = redis.call('GET', KEYS[2]) or '0'
local day_limit = tonumber(ARGV[2])
local month_limit = tonumber(ARGV[3])
if day_limit >= 0 and tonumber(day) + reserved >= day_limit then
  return {0, day, month, tostring(reserved), 'day'}
end
if month_limit >= 0 and tonumber(month) + reserved >= month_limit then
  return {0, day, month, tostring(reserved), 'month'}
end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[4])
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[5]))
return {1, day, month, tostring(reserved), ''}
"""

# KEYS: spent of the day, spent of the month, reservations. ARGV: member (or ''),
# actual picodollars, day TTL, month TTL.
_SETTLE = """
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[3], ARGV[1])
end
if ARGV[2] ~= '0' then
  redis.call('INCRBY', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
  redis.call('INCRBY', KEYS[2], ARGV[2])
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
end
return 1
"""

_QUOTA = """
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', tonumber(ARGV[1]))
local reserved = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  reserved = reserved + tonumber(string.match(member, ':(%d+)$'))
end
return {redis.call('GET', KEYS[1]) or '0', redis.call('GET', KEYS[2]) or '0', tostring(reserved)}
"""


class RedisBudgets:
    """Counters shared by every replica through one Redis, on the gateway's shared,
    pipelined connection (:mod:`gateway.redis`): a reserve is one script call in the
    pipeline of its event-loop iteration; a settle is queued without waiting for it
    (write-behind) and joins the next pipeline."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._reserve = redis.script(_RESERVE)
        self._settle = redis.script(_SETTLE)
        self._quota = redis.script(_QUOTA)
        #: settles that only give a reservation back, waiting for the next reserve (see settle_behind)
        self._releases: list[_Settle] = []
        self._release_timer: asyncio.TimerHandle | None = None
        #: the day (days since the epoch) the keys below were made for, and each caller's keys
        self._keys_day = -1
        self._keys_by_caller: dict[str, tuple[str, str, str]] = {}

    def _keys(self, caller: str, now: float) -> tuple[str, str, str]:
        """The caller's three keys (spent of the day, of the month, reservations): made
        once a day per caller, not twice a call (a reserve and a settle)."""
        day_number = int(now // 86400)
        if day_number != self._keys_day:
            self._keys_day = day_number
            self._keys_by_caller = {}
        keys = self._keys_by_caller.get(caller)
        if keys is None:
            day, month = periods(now)
            keys = (
                f"{self.prefix}:spent:{caller}:{day}",
                f"{self.prefix}:spent:{caller}:{month}",
                f"{self.prefix}:reserved:{caller}",
            )
            if len(self._keys_by_caller) >= _KEYS_KEPT:
                self._keys_by_caller.clear()  # many callers: start over rather than grow
            self._keys_by_caller[caller] = keys
        return keys

    async def ping(self) -> bool:
        await self.redis.ping()
        return True

    async def reserve(self, caller: str, request_id: str, estimate: int, limits: Limits, now: float) -> Decision:
        args = [
            int(now * 1000),
            -1 if limits.per_day is None else limits.per_day,
            -1 if limits.per_month is None else limits.per_month,
            f"{request_id}:{estimate}",
            RESERVATION_TTL_S * 1000,
        ]
        if self._releases:
            self._release()  # in this reserve's round trip
        allowed, day, month, reserved, period = await self._reserve(keys=self._keys(caller, now), args=args)
        return Decision(bool(allowed), int(day), int(month), int(reserved), period.decode() or None)

    def settle_behind(
        self,
        caller: str,
        request_id: str,
        estimate: int | None,
        actual: int,
        now: float,
        span: Span | None,
        done: Callable[[BaseException | None], None],
    ) -> None:
        """Queue the settle without waiting for it (write-behind); ``done(error or None)``
        once Redis answered, and ``span`` ended then.

        A settle that only gives a reservation back (the call cost nothing: a cache hit)
        waits to leave with the next reserve, in its round trip, or after
        ``RELEASE_WITHIN_S`` at the latest: one round trip fewer per hit when calls come
        one at a time. Until then the reservation still counts against the budget."""
        keys, args = self._settle_call(caller, request_id, estimate, actual, now)
        settle = (keys, args, span, done)
        if actual or estimate is None:
            self._send(settle)
            return
        self._releases.append(settle)
        if self._release_timer is None:
            self._release_timer = asyncio.get_running_loop().call_later(RELEASE_WITHIN_S, self._release)

    def _release(self) -> None:
        """Send the reservations waiting to be given back."""
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None
        releases, self._releases = self._releases, []
        for settle in releases:
            self._send(settle)

    def _send(self, settle: _Settle) -> None:
        keys, args, span, done = settle
        try:
            future = self._settle(keys=keys, args=args)
        except Exception as exc:  # the handle is closed
            if span is not None:
                span.end()
            done(exc)
            return
        when_written(future, span, done)

    async def settle(self, caller: str, request_id: str, estimate: int | None, actual: int, now: float) -> None:
        keys, args = self._settle_call(caller, request_id, estimate, actual, now)
        await self._settle(keys=keys, args=args)

    def _settle_call(
        self, caller: str, request_id: str, estimate: int | None, actual: int, now: float
    ) -> tuple[tuple[str, str, str], list[Any]]:
        """The settle script's keys and arguments: drop the reservation (if any), add ``actual``."""
        member = f"{request_id}:{estimate}" if estimate is not None else ""
        return self._keys(caller, now), [member, str(actual), DAY_TTL_S, MONTH_TTL_S]

    async def quota(self, caller: str, now: float) -> tuple[int, int, int]:
        self._release()  # the reservations given back so far are not in flight any more
        day, month, reserved = await self._quota(keys=self._keys(caller, now), args=[int(now * 1000)])
        return int(day), int(month), int(reserved)

    async def close(self) -> None:
        self._release()
        await self.redis.close()


def now_s() -> float:
    return time.time()
