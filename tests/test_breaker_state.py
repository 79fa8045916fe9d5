"""The breaker's state machine alone, with a fake clock (no gateway, no I/O)."""

from __future__ import annotations

import email.utils
import time

import pytest

from gateway.exchange import Response
from gateway_plugins.breaker import _retry_after_s
from gateway_plugins.breaker.state import CALL, CLOSED, HALF_OPEN, OPEN, PROBE, Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**options):
    clock = Clock()
    changes = []
    settings = {"failure_threshold": 3, "failure_rate": None, "window_size": 10, "recovery_s": 30, "probes": 1}
    settings.update(options)
    breaker = Breaker(
        "p", "p", None, on_transition=lambda change: changes.append((change.old, change.new)), clock=clock, **settings
    )
    return breaker, clock, changes


def test_closed_breaker_opens_on_the_threshold_th_consecutive_failure():
    breaker, _, changes = make()
    for _ in range(2):
        breaker.failure(breaker.acquire())
    assert breaker.state is CLOSED
    breaker.failure(breaker.acquire())
    assert breaker.state is OPEN and changes == [(CLOSED, OPEN)]
    assert breaker.acquire() == 0
    assert breaker.retry_after_s() == 30


def test_open_breaker_admits_probes_after_recovery_and_closes_on_success():
    breaker, clock, changes = make(failure_threshold=1, probes=2)
    breaker.failure(breaker.acquire())
    clock.now += 29.9
    assert breaker.acquire() == 0
    clock.now += 0.1
    first, second, third = breaker.acquire(), breaker.acquire(), breaker.acquire()
    assert (first, second, third) == (PROBE, PROBE, 0)
    assert breaker.state is HALF_OPEN
    breaker.success(first)
    assert breaker.state is CLOSED
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_a_failed_probe_reopens_for_a_full_recovery_period():
    breaker, clock, _ = make(failure_threshold=1)
    breaker.failure(breaker.acquire())
    clock.now += 30
    breaker.failure(breaker.acquire())
    assert breaker.state is OPEN and breaker.opened == 2
    assert breaker.retry_after_s() == 30


def test_a_released_probe_frees_its_place():
    breaker, clock, _ = make(failure_threshold=1)
    breaker.failure(breaker.acquire())
    clock.now += 30
    probe = breaker.acquire()
    assert breaker.acquire() == 0
    breaker.release(probe)  # the caller left
    assert breaker.acquire() == PROBE
    assert breaker.state is HALF_OPEN


def test_failure_rate_is_judged_only_once_the_window_is_full():
    breaker, _, _ = make(failure_threshold=100, failure_rate=0.5, window_size=4)
    for failed in (True, True, True):
        breaker.failure(breaker.acquire()) if failed else breaker.success(breaker.acquire())
    assert breaker.state is CLOSED  # 3 of 3, but fewer than 4 calls
    breaker.success(breaker.acquire())
    assert breaker.state is OPEN


def test_failure_rate_window_slides():
    breaker, _, _ = make(failure_threshold=100, failure_rate=0.5, window_size=4)
    for outcome in (True, False, False, False, True, False, False, False):
        (breaker.failure if outcome else breaker.success)(breaker.acquire())
    assert breaker.state is CLOSED and breaker.window_failures == 1


def test_a_call_let_through_before_opening_does_not_reopen_or_close():
    breaker, _, changes = make(failure_threshold=1)
    early = breaker.acquire()
    breaker.failure(breaker.acquire())
    breaker.failure(early)
    breaker.success(CALL)
    assert breaker.state is OPEN and changes == [(CLOSED, OPEN)]


def test_reset_closes_and_clears_counts():
    breaker, _, changes = make(failure_threshold=1)
    breaker.failure(breaker.acquire())
    breaker.reset()
    assert breaker.state is CLOSED and breaker.consecutive_failures == 0
    assert breaker.describe()["state"] == "closed"
    assert changes[-1] == (OPEN, CLOSED)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "1.5", "retry-after-ms": "100"}, 0.1),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_is_read_from_ms_or_seconds(headers, expected):
    assert _retry_after_s(Response(429, headers)) == expected


def test_retry_after_as_an_http_date():
    when = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8 < _retry_after_s(Response(429, {"retry-after": when})) <= 10


def test_each_failed_probe_doubles_the_open_time_up_to_the_cap():
    breaker, clock, _ = make(failure_threshold=1, recovery_s=10, recovery_max_s=35)
    breaker.failure(breaker.acquire())
    waits = [breaker.retry_after_s()]
    for _ in range(3):
        clock.now += breaker.retry_after_s()
        breaker.failure(breaker.acquire())  # the probe fails
        waits.append(breaker.retry_after_s())
    assert waits == [10, 20, 35, 35]
    clock.now += 35
    breaker.success(breaker.acquire())
    breaker.failure(breaker.acquire())
    assert breaker.retry_after_s() == 10  # closed in between: back to recovery_s


def test_without_a_cap_the_open_time_stays_recovery_s():
    breaker, clock, _ = make(failure_threshold=1, recovery_s=10)
    breaker.failure(breaker.acquire())
    clock.now += 10
    breaker.failure(breaker.acquire())
    assert breaker.retry_after_s() == 10
