"""Backend faults (issue 15, point 4): Redis killed and restarted under load with the
cache, cost and breaker all on it, and the SQLite ledger on a full disk under load.

Answers keep flowing as each plugin's failure mode says, /readyz tells the truth, each
plugin recovers by itself when Redis is back (no gateway restart), and no usage record
is dropped in silence. The single-call cases (one locked ledger, one Redis outage for
cost alone, the full-disk ledger unit) are in tests/test_cost*.py; these add the load,
the whole chain and the recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import signal
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.testing import RunningGateway, run_gateway

from helpers_lifecycle import loopback_config, start_gateway

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


def chain(redis_url: str, ledger: Path, failure_mode: str) -> dict[str, Any]:
    return {
        "providers": {"mock": {"type": "mock"}},
        "plugins": [
            {"use": "cache", "config": {"backend": redis_url, "ttl_s": 60, "backend_timeout_s": 0.2}},
            {
                "use": "cost",
                "config": {
                    "store": redis_url,
                    "ledger": str(ledger),
                    "budget_usd_per_day": 1000,
                    "failure_mode": failure_mode,
                    "redis_timeout_s": 0.2,
                    "flush_interval_s": 0.05,
                },
            },
            {"use": "breaker", "config": {"backend": redis_url, "sync_s": 0.1, "failure_threshold": 3}},
        ],
    }


async def post(session: aiohttp.ClientSession, url: str, *, content: str, stream: bool) -> tuple[int, str, bytes]:
    """(status, error code or "", body) of one chat call."""
    body = {**BODY, "messages": [{"role": "user", "content": content}], "stream": stream}
    async with session.post(f"{url}/v1/chat/completions", json=body) as reply:
        data = await reply.read()
        code = ""
        if reply.status >= 400:
            code = json.loads(data)["error"]["code"]
        elif stream:
            assert data.rstrip().endswith(b"data: [DONE]"), data[-200:]
        return reply.status, code, data


class Load:
    """Workers calling the gateway without pause; each answer is filed under the phase
    in force for the whole call, or under "start->end" when the phase changed during it."""

    def __init__(self, session: aiohttp.ClientSession, url: str, workers: int = 4) -> None:
        self.session = session
        self.url = url
        self.workers = workers
        self.phase = "before"
        self.answers: dict[str, Counter[tuple[int, str]]] = {}
        self.sent = 0

    async def _work(self, index: int) -> None:
        while True:
            phase = self.phase
            self.sent += 1
            status, code, _ = await post(
                self.session, self.url, content=f"load {index} {self.sent}", stream=self.sent % 2 == 0
            )
            if self.phase != phase:
                phase = f"{phase}->{self.phase}"
            self.answers.setdefault(phase, Counter())[(status, code)] += 1

    def count(self, phase: str) -> int:
        return sum(self.answers.get(phase, Counter()).values())

    async def until(self, phase: str, at_least: int, within_s: float = 10.0) -> None:
        for _ in range(int(within_s / 0.02)):
            if self.count(phase) >= at_least:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"only {self.count(phase)} answers in phase {phase}: {self.answers}")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Load]:
        tasks = [asyncio.create_task(self._work(index)) for index in range(self.workers)]
        try:
            yield self
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if not isinstance(result, asyncio.CancelledError):
                    raise AssertionError(f"a worker failed: {result!r}")


async def admin(session: aiohttp.ClientSession, gw: RunningGateway, path: str) -> tuple[int, Any]:
    async with session.get(gw.admin_url + path) as reply:
        return reply.status, await reply.json()


async def eventually(check: Any, within_s: float = 10.0) -> None:
    for _ in range(int(within_s / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within_s} s: {check.__name__}")


@pytest.mark.parametrize("failure_mode", ["open", "closed"])
async def test_redis_killed_and_restarted_under_load_follows_each_failure_mode_and_recovers_alone(
    tmp_path, redis_server, failure_mode
):
    ledger = tmp_path / "usage.db"
    async with (
        run_gateway(chain(redis_server.url, ledger, failure_mode), tmp_path) as gw,
        aiohttp.ClientSession() as session,
    ):
        load = Load(session, gw.url)
        async with load.running():
            await load.until("before", 20)
            assert (await admin(session, gw, "/readyz"))[0] == 200

            # A call in flight at the kill is neither "before" nor "down" (the shared
            # connection fails its calls at once, before this task hears the kill is done).
            load.phase = "stopping"
            await asyncio.to_thread(redis_server.stop)
            load.phase = "down"
            await load.until("down", 20)

            async def breaker_noticed() -> bool:  # its next sync, within sync_s (calls may fail faster)
                return (await admin(session, gw, "/stats"))[1]["plugins"]["breaker"]["backend_healthy"] == 0

            await eventually(breaker_noticed)
            ready_down, readiness = await admin(session, gw, "/readyz")
            _, stats_down = await admin(session, gw, "/stats")

            # "down" ends before Redis starts: a call made while start() waits for
            # its first PONG already reaches the new server.
            load.phase = "restarting"
            await asyncio.to_thread(redis_server.start)
            load.phase = "restarted"

            async def all_recovered() -> bool:
                status, _ = await admin(session, gw, "/readyz")
                _, stats = await admin(session, gw, "/stats")
                plugins = stats["plugins"]
                # the cache shows its size only when it reads it from a reachable Redis
                return status == 200 and plugins["breaker"]["backend_healthy"] == 1 and "size" in plugins["cache"]

            await eventually(all_recovered)
            # the cache answered misses while Redis was away and is back at storing
            # and hitting; a call started now reaches a working Redis everywhere
            stores = (await admin(session, gw, "/stats"))[1]["plugins"]["cache"]["stores"]
            load.phase = "after"
            await load.until("after", 20)
            _, stats_after = await admin(session, gw, "/stats")
        hits = (await admin(session, gw, "/stats"))[1]["plugins"]["cache"]["hits"]
        repeat = []

        async def hit_again() -> bool:  # the cache stores after the caller has its answer
            repeat.append(await post(session, gw.url, content="the same question", stream=False))
            return (await admin(session, gw, "/stats"))[1]["plugins"]["cache"]["hits"] > hits

        await eventually(hit_again)
        _, final = await admin(session, gw, "/stats")
        cost = next(p.instance for p in gw.gateway.chain.plugins if p.label == "cost")
        for _ in range(200):  # callers have their answer before the record is made
            if not gw.gateway.proxy.in_flight and not gw.gateway.background:
                break
            await asyncio.sleep(0.02)
        assert await asyncio.to_thread(cost.ledger.flush)
        served = cost.records

    assert set(load.answers["before"]) == {(200, "")}
    allowed = {(200, "")} if failure_mode == "open" else {(200, ""), (503, "backend_unavailable")}
    for phase, answers in load.answers.items():
        assert set(answers) <= allowed, (phase, answers)
    if failure_mode == "open":
        assert set(load.answers["down"]) == {(200, "")}, load.answers["down"]  # served, unmetered
        assert ready_down == 200
        assert stats_down["plugins"]["cost"]["unmetered"] >= 1
    else:
        assert set(load.answers["down"]) == {(503, "backend_unavailable")}, load.answers["down"]
        assert ready_down == 503 and readiness["checks"]["cost"] is False
    assert stats_down["plugins"]["cache"]["backend_errors"] >= 1
    assert stats_down["plugins"]["breaker"]["backend_healthy"] == 0
    # recovered by itself: every call started once it said so is served
    assert set(load.answers["after"]) == {(200, "")}, load.answers["after"]
    assert stats_after["plugins"]["cache"]["stores"] > stores, (
        stores,
        json.dumps(stats_after["plugins"]["cache"]),
        json.dumps({k: sum(v.values()) for k, v in load.answers.items()}),
    )
    assert {status for status, _, _ in repeat} == {200}
    # the ledger is local SQLite: every call that was answered is on record, none lost
    connection = sqlite3.connect(ledger)
    try:
        rows = connection.execute("SELECT COUNT(*) FROM usage").fetchone()[0]
    finally:
        connection.close()
    assert rows == served and final["plugins"]["cost"]["ledger_lost"] == 0
    answered = sum(
        count for answers in load.answers.values() for (status, _), count in answers.items() if status == 200
    )
    assert rows >= answered + len(repeat)


class LedgerFault:
    """A full disk (the gateway process's file size limit, RLIMIT_FSIZE, lowered from
    outside with prlimit to one byte: every SQLite write fails as on a full disk) or a
    lock (another connection holds BEGIN EXCLUSIVE past the ledger's busy timeout)."""

    def __init__(self, kind: str, pid: int, db: Path) -> None:
        self.kind, self.pid, self.db = kind, pid, db
        self.locker: sqlite3.Connection | None = None
        self.hard = resource.RLIM_INFINITY

    def begin(self) -> None:
        if self.kind == "full":
            _, self.hard = resource.prlimit(self.pid, resource.RLIMIT_FSIZE)
            resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (1, self.hard))
        else:
            self.locker = sqlite3.connect(self.db, isolation_level=None)
            self.locker.execute("BEGIN EXCLUSIVE")

    def end(self) -> None:
        if self.kind == "full":
            resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (self.hard, self.hard))
        elif self.locker is not None:
            self.locker.execute("ROLLBACK")
            self.locker.close()
            self.locker = None


@pytest.mark.parametrize("fault", ["full", "locked"])
async def test_a_full_or_locked_ledger_under_load_keeps_answers_flowing_and_loses_no_record(tmp_path, fault):
    """Under a real ``gateway run``: calls keep being answered, the failures and the
    records waiting show in /stats, and once the fault clears every record reaches the
    ledger, without a restart."""
    db = tmp_path / "usage.db"
    config = loopback_config(plugins=[{"use": "cost", "config": {"store": str(db), "flush_interval_s": 0.05}}])
    async with start_gateway(config, tmp_path) as gateway, aiohttp.ClientSession() as session:
        broken = LedgerFault(fault, gateway.proc.pid, db)
        broken.begin()
        try:
            statuses = await asyncio.gather(
                *(post(session, gateway.url, content=f"{fault} {index}", stream=index % 2 == 0) for index in range(30))
            )
            assert [status for status, _, _ in statuses] == [200] * 30

            async def stats() -> dict[str, Any]:
                async with session.get(gateway.admin_url + "/stats") as reply:
                    return (await reply.json())["plugins"]["cost"]  # type: ignore[no-any-return]

            for _ in range(200):
                figures = await stats()
                if figures["ledger_write_errors"] >= 1 and figures["ledger_pending"] == 30:
                    break
                await asyncio.sleep(0.05)
            assert figures["ledger_write_errors"] >= 1 and figures["ledger_pending"] == 30, figures
            assert figures["ledger_written"] == 0 and figures["ledger_lost"] == 0
        finally:
            broken.end()  # space is back, the lock is released
        for _ in range(300):  # the retry backoff is bounded
            figures = await stats()
            if figures["ledger_pending"] == 0:
                break
            await asyncio.sleep(0.05)
        assert figures["ledger_written"] == 30 and figures["ledger_lost"] == 0, figures
        gateway.send_signal(signal.SIGTERM)
        assert await gateway.wait(20) == 0
    connection = sqlite3.connect(db)
    try:
        assert connection.execute("SELECT COUNT(*) FROM usage").fetchone()[0] == 30
    finally:
        connection.close()


async def test_after_a_redis_restart_the_cache_recovers_after_one_failure_not_one_per_pooled_connection(
    tmp_path, redis_server
):
    """The connection died with the server. At most one failure (and its short pause)
    may follow: concurrent lookups share one pipelined connection (gateway.redis), which
    notices the server closing it (or fails once on it and starts over), so the calls
    after the pause reconnect instead of each finding another dead socket."""
    import redis.asyncio as redis

    from gateway_plugins.cache.plugin import BACKEND_PAUSE_S

    config = {
        "providers": {"mock": {"type": "mock", "mock": {"latency_ms": 50}}},
        "plugins": [{"use": "cache", "config": {"backend": redis_server.url, "ttl_s": 60}}],
    }

    async def burst(session: aiohttp.ClientSession, url: str, tag: str) -> None:
        answers = await asyncio.gather(*(post(session, url, content=f"{tag} {i}", stream=False) for i in range(8)))
        assert [status for status, _, _ in answers] == [200] * 8

    async with run_gateway(config, tmp_path) as gw, aiohttp.ClientSession() as session:
        cache = next(p.instance for p in gw.gateway.chain.plugins if p.label == "cache")
        watcher = redis.Redis.from_url(redis_server.url)
        try:
            for round_ in range(3):
                await burst(session, gw.url, f"warm {round_}")
            assert len(await watcher.client_list()) - 1 == 1  # concurrent lookups: one connection
        finally:
            await watcher.aclose()
        await asyncio.to_thread(redis_server.stop)
        await asyncio.to_thread(redis_server.start)
        await post(session, gw.url, content="after the restart", stream=False)
        errors = cache.backend_errors
        assert errors <= 1
        await asyncio.sleep(BACKEND_PAUSE_S + 0.2)
        stores = cache.stores
        await burst(session, gw.url, "after the pause")
        for _ in range(100):  # stores land after the callers have their answers
            if cache.stores >= stores + 8:
                break
            await asyncio.sleep(0.02)
        assert cache.backend_errors == errors
        assert cache.stores == stores + 8
