"""GCRA limits, the in-memory store, and OpenAI's header formats.

Each limit is a Generic Cell Rate Algorithm (the leaky bucket as a meter): per
caller and limit one number is kept, the *theoretical arrival time* (TAT). A limit
of ``L`` units per period ``P`` costs ``P / L`` seconds per unit; a request of ``n``
units is admitted when ``max(TAT, now) + n * P / L - now <= P`` and then moves the
TAT there. ``TAT - now`` is the caller's *level*: 0 is a full bucket, ``P`` an
empty one. A fresh caller may spend the whole limit at once, then one unit every
``P / L``: never the double burst a fixed window admits at its boundary.

Tokens are reserved before the call (an estimate) and settled after it: the
difference moves the TAT back (a refund) or forward (a debt the caller pays off
before its next admission).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

#: (option name, kind, period in seconds, short field name in the Redis hash)
LIMIT_OPTIONS: tuple[tuple[str, str, float, str], ...] = (
    ("requests_per_second", "requests", 1.0, "rps"),
    ("requests_per_minute", "requests", 60.0, "rpm"),
    ("requests_per_hour", "requests", 3600.0, "rph"),
    ("requests_per_day", "requests", 86400.0, "rpd"),
    ("tokens_per_second", "tokens", 1.0, "tps"),
    ("tokens_per_minute", "tokens", 60.0, "tpm"),
    ("tokens_per_hour", "tokens", 3600.0, "tph"),
    ("tokens_per_day", "tokens", 86400.0, "tpd"),
)

# Floating point slack when comparing levels (memory backend): a caller that spends
# exactly its limit is admitted.
_EPSILON_S = 1e-9


class Limit:
    """One configured limit: ``amount`` units of ``kind`` per ``period_s``."""

    __slots__ = (
        "name", "kind", "period_s", "amount", "field", "interval_s", "is_tokens", "cap_s", "period_us", "amount_text",
        "limit_header", "remaining_header", "reset_header",
    )  # fmt: skip

    def __init__(self, name: str, kind: str, period_s: float, amount: int, field: str) -> None:
        self.name = name
        self.kind = kind
        self.period_s = period_s
        self.amount = amount
        self.field = field
        #: seconds of the period one unit (a request, a token) costs
        self.interval_s = period_s / amount
        self.is_tokens = kind == "tokens"
        #: the most a bucket holds, with slack for floating point: spending exactly the limit fits
        self.cap_s = period_s + _EPSILON_S
        #: the period in the Redis script's unit
        self.period_us = int(period_s * 1e6)
        # What every answer's headers say of the limit, built once.
        self.amount_text = str(amount)
        self.limit_header = f"x-ratelimit-limit-{kind}"
        self.remaining_header = f"x-ratelimit-remaining-{kind}"
        self.reset_header = f"x-ratelimit-reset-{kind}"

    def __repr__(self) -> str:
        return f"Limit({self.name}={self.amount})"


class MemoryStore:
    """TATs per caller in one process. Bounded: a caller whose every TAT has passed
    is the same as one never seen, so :meth:`sweep` drops it; past ``max_callers``
    the oldest entries go first (forgiving whatever they still owed)."""

    def __init__(self, max_callers: int) -> None:
        self.max_callers = max_callers
        #: caller key -> [TAT per limit of that caller], in time.monotonic() seconds
        self.tats: dict[str, list[float]] = {}
        self.evicted = 0

    def take(self, key: str, limits: Sequence[Limit], charges: Sequence[float]) -> tuple[bool, list[float]]:
        """Admit or not; returns (allowed, level of each limit before the charge)."""
        now = time.monotonic()
        tats = self.tats.get(key)
        if tats is None:
            if len(self.tats) >= self.max_callers:
                self._make_room(now)
            tats = self.tats[key] = [now] * len(limits)
        if len(tats) == 1:  # one limit: the common case, without a loop
            tat = tats[0]
            level = tat - now if tat > now else 0.0
            if level + charges[0] > limits[0].cap_s:
                return False, [level]
            tats[0] = now + level + charges[0]
            return True, [level]
        levels = [tat - now if tat > now else 0.0 for tat in tats]
        for index, limit in enumerate(limits):
            if levels[index] + charges[index] > limit.cap_s:
                return False, levels
        for index, level in enumerate(levels):
            tats[index] = now + level + charges[index]
        return True, levels

    def settle(self, key: str, size: int, deltas: Sequence[tuple[int, float]]) -> None:
        """Move TATs by ``(limit index, seconds)``: negative refunds, positive owes.

        ``size`` is how many limits the caller has (for a caller swept meanwhile)."""
        now = time.monotonic()
        tats = self.tats.get(key)
        if tats is None:
            # Swept: the caller was idle, so a refund changes nothing; a debt starts now.
            if all(delta <= 0 for _, delta in deltas):
                return
            tats = self.tats[key] = [now] * size
        for index, delta in deltas:
            tat = tats[index]
            if delta > 0 and tat < now:
                tat = now
            tats[index] = tat + delta

    def sweep(self) -> int:
        """Drop callers whose buckets are full again; returns how many went."""
        now = time.monotonic()
        idle = [key for key, tats in self.tats.items() if max(tats) <= now]
        for key in idle:
            del self.tats[key]
        return len(idle)

    def _make_room(self, now: float) -> None:
        if self.sweep():
            return
        # Every caller is busy: forget the one tracked longest (dicts keep insertion order).
        del self.tats[next(iter(self.tats))]
        self.evicted += 1


def remaining(limit: Limit, level_s: float, scale: float) -> int:
    """Whole units left when the bucket is at ``level_s`` (``scale`` > 1: flagged)."""
    left = (limit.period_s - level_s) / (limit.interval_s * scale)
    return max(0, int(left + 1e-6))


#: ``0ms`` ... ``999ms``: the reset a busy caller's every answer carries, formatted once
_MILLISECONDS = tuple(f"{ms}ms" for ms in range(1000))


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes ``x-ratelimit-reset-*``: ``20ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    if seconds <= 0:
        return "0s"
    total_ms = math.ceil(seconds * 1000 - 1e-6)
    if total_ms < 1000:
        return _MILLISECONDS[total_ms]
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, millis = divmod(rest, 1000)
    secs = f"{whole}.{millis:03d}".rstrip("0").rstrip(".") if millis else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
