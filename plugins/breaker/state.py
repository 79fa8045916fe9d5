"""One circuit breaker's state machine, with no I/O and an injectable clock.

closed --(failure_threshold consecutive failures, or failure_rate over the window)--> open
open   --(recovery_s elapsed)--> half-open: up to ``probes`` calls are let through
half-open --(a probe succeeds)--> closed;  --(a probe fails)--> open again

A call first takes a permit (:meth:`Breaker.acquire`), then reports exactly one
outcome with the same permit: :meth:`success`, :meth:`failure` or :meth:`release`
(no verdict: the caller left, or the call never reached the provider).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
#: the gauge value of each state in /stats and /metrics
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

#: a permit for a call in the closed state, and one for a half-open probe
CALL, PROBE = 1, 2


class Transition:
    """A state change to log, count and put on the span."""

    __slots__ = ("breaker", "old", "new", "reason")

    def __init__(self, breaker: Breaker, old: str, new: str, reason: str) -> None:
        self.breaker = breaker
        self.old = old
        self.new = new
        self.reason = reason


class Breaker:
    """The breaker of one provider (or one provider and model)."""

    __slots__ = (
        "key",
        "provider",
        "model",
        "failure_threshold",
        "failure_rate",
        "window_size",
        "recovery_s",
        "recovery_max_s",
        "reopened",
        "probes",
        "clock",
        "on_transition",
        "state",
        "consecutive_failures",
        "window",
        "window_failures",
        "failures",
        "successes",
        "opened",
        "opened_at",
        "open_until",
        "probes_in_flight",
        "source",
        "published_at",
        "close_acked_at",
    )

    def __init__(
        self,
        key: str,
        provider: str,
        model: str | None,
        *,
        failure_threshold: int,
        failure_rate: float | None,
        window_size: int,
        recovery_s: float,
        probes: int,
        recovery_max_s: float | None = None,
        on_transition: Callable[[Transition], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self.provider = provider
        self.model = model
        self.failure_threshold = failure_threshold
        self.failure_rate = failure_rate
        self.window_size = window_size
        self.recovery_s = recovery_s
        #: with a failed probe the open time doubles, up to this (Envoy's max_ejection_time)
        self.recovery_max_s = recovery_max_s if recovery_max_s is not None else recovery_s
        #: failed probes since the breaker last closed
        self.reopened = 0
        self.probes = probes
        self.clock = clock
        self.on_transition = on_transition
        self.state = CLOSED
        self.consecutive_failures = 0
        #: outcomes of the last ``window_size`` calls (True: failure), for ``failure_rate``
        self.window: deque[bool] = deque(maxlen=window_size)
        self.window_failures = 0
        #: totals since start, for /breakers and /stats
        self.failures = 0
        self.successes = 0
        self.opened = 0
        #: wall-clock time of the last opening (None while never opened)
        self.opened_at: float | None = None
        #: monotonic time from which the open breaker lets a probe through
        self.open_until = 0.0
        self.probes_in_flight = 0
        #: "local" (our own calls opened it) or "shared" (another replica's, through the backend)
        self.source = "local"
        #: monotonic time the backend acknowledged our opening (None: not published)
        self.published_at: float | None = None
        #: monotonic time the backend acknowledged our last closing (inf while it is on its way):
        #: a shared read sent before it may still show the entry we removed
        self.close_acked_at = -math.inf

    # -- calls -------------------------------------------------------------------

    def acquire(self) -> int:
        """A permit (CALL or PROBE), or 0 when the call must not reach the provider."""
        state = self.state
        if state is CLOSED:
            return CALL
        if state is OPEN:
            if self.clock() < self.open_until:
                return 0
            self._move(HALF_OPEN, "recovery time elapsed")
        if self.probes_in_flight >= self.probes:
            return 0
        self.probes_in_flight += 1
        return PROBE

    def retry_after_s(self) -> float:
        """Seconds until the breaker lets a call through again (for ``Retry-After``)."""
        if self.state is OPEN:
            return max(self.open_until - self.clock(), 0.0)
        return 1.0 if self.state is HALF_OPEN else 0.0

    def success(self, permit: int) -> None:
        self.successes += 1
        self.consecutive_failures = 0
        if permit == PROBE:
            self.probes_in_flight = max(self.probes_in_flight - 1, 0)
            if self.state is HALF_OPEN:
                self._close("a probe succeeded")
            return
        if self.failure_rate is not None and self.state is CLOSED:
            self._record(False)
            self._judge_rate()

    def failure(self, permit: int) -> None:
        self.failures += 1
        self.consecutive_failures += 1
        if permit == PROBE:
            self.probes_in_flight = max(self.probes_in_flight - 1, 0)
            if self.state is HALF_OPEN:
                self.trip("a probe failed")
            return
        if self.state is not CLOSED:
            return  # a call let through before the breaker opened: already open
        if self.failure_rate is not None:
            self._record(True)
            if self._judge_rate():
                return
        if self.consecutive_failures >= self.failure_threshold:
            self.trip(f"{self.consecutive_failures} consecutive failures")

    def release(self, permit: int) -> None:
        """No verdict on this call (the caller left, or it never reached the provider)."""
        if permit == PROBE:
            self.probes_in_flight = max(self.probes_in_flight - 1, 0)

    # -- state changes -----------------------------------------------------------

    def trip(self, reason: str, until: float | None = None, source: str = "local") -> None:
        """Open now, until ``until`` (monotonic; default: ``recovery_s`` from now)."""
        old = self.state
        self.state = OPEN
        self.reopened = self.reopened + 1 if old is HALF_OPEN else 0
        if until is None:
            until = self.clock() + self.open_for_s()
        self.open_until = until
        self.opened_at = time.time()
        self.opened += 1
        self.source = source
        self.published_at = None
        self.probes_in_flight = 0
        self._clear_window()
        self.on_transition(Transition(self, old, OPEN, reason))

    def open_for_s(self) -> float:
        """How long an opening lasts now: ``recovery_s``, doubled per failed probe, capped."""
        return min(self.recovery_s * (1 << min(self.reopened, 30)), max(self.recovery_max_s, self.recovery_s))

    def half_open(self, reason: str) -> None:
        """Let the next call probe now (another replica closed it, or its entry went away)."""
        if self.state is OPEN:
            self._move(HALF_OPEN, reason)

    def reset(self, reason: str = "reset") -> None:
        self.consecutive_failures = 0
        self.probes_in_flight = 0
        self._clear_window()
        if self.state is not CLOSED:
            self._close(reason)

    def _close(self, reason: str) -> None:
        old = self.state
        self.state = CLOSED
        self.consecutive_failures = 0
        self.reopened = 0
        self.source = "local"
        self._clear_window()
        self.on_transition(Transition(self, old, CLOSED, reason))

    def _move(self, new: str, reason: str) -> None:
        old = self.state
        self.state = new
        self.probes_in_flight = 0
        self.on_transition(Transition(self, old, new, reason))

    def _record(self, failed: bool) -> None:
        window = self.window
        if len(window) == window.maxlen and window[0]:
            self.window_failures -= 1
        window.append(failed)
        if failed:
            self.window_failures += 1

    def _judge_rate(self) -> bool:
        """Open when the window is full and its failure share reached ``failure_rate``."""
        window = self.window
        if len(window) >= self.window_size and self.window_failures >= self.failure_rate * len(window):  # type: ignore[operator]
            self.trip(f"{self.window_failures} failures in the last {len(window)} calls")
            return True
        return False

    def _clear_window(self) -> None:
        self.window.clear()
        self.window_failures = 0

    # -- reading -----------------------------------------------------------------

    def describe(self) -> dict[str, object]:
        """This breaker as ``GET /breakers`` shows it."""
        now = self.clock()
        next_probe_in_s = max(self.open_until - now, 0.0) if self.state is OPEN else None
        return {
            "key": self.key,
            "provider": self.provider,
            "model": self.model,
            "state": self.state,
            "source": self.source,
            "consecutive_failures": self.consecutive_failures,
            "window": {"calls": len(self.window), "failures": self.window_failures},
            "failures": self.failures,
            "successes": self.successes,
            "opened": self.opened,
            "opened_at": _iso(self.opened_at),
            "next_probe_at": _iso(time.time() + next_probe_in_s) if next_probe_in_s is not None else None,
            "next_probe_in_s": round(next_probe_in_s, 3) if next_probe_in_s is not None else None,
            "probes_in_flight": self.probes_in_flight,
        }


def _iso(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_s)) + f".{int(epoch_s % 1 * 1000):03d}Z"
