"""Process faults (issue 15, point 5): SIGTERM in the middle of a load of buffered and
streamed calls to a real ``gateway run`` with the cost ledger on SQLite.

Every call the gateway admitted (it sent a status line) completes whole; a call it
did not admit fails to connect and is never half-answered; the process exits 0 and
the ledger, read by a restarted gateway, holds exactly one record per completed call.
The single slow call, the single stream and the grace cut are in test_lifecycle.py;
reload is in test_reload.py.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections import Counter
from typing import Any

import aiohttp

from helpers_lifecycle import loopback_config, start_gateway

STREAM_WORDS = 15  # the mock answers "hello there" with 15 words


def config(db: str) -> dict[str, Any]:
    return loopback_config(
        shutdown_grace_s=10,
        # slow enough that many calls are in flight when the signal lands
        providers={"mock": {"type": "mock", "mock": {"latency_ms": 100, "inter_token_ms": 20}}},
        plugins=[{"use": "cost", "config": {"store": db, "flush_interval_s": 0.2}}],
    )


async def one_call(session: aiohttp.ClientSession, url: str, index: int) -> str:
    """ "whole" for a complete 200 answer, "refused" when the gateway never answered;
    anything else (an error status, a cut body) is a lost call and fails the test."""
    stream = index % 2 == 0
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}], "stream": stream}
    try:
        reply = await session.post(f"{url}/v1/chat/completions", json=body)
    except aiohttp.ClientConnectionError:
        return "refused"  # no status line: not admitted, the caller may retry elsewhere
    async with reply:
        assert reply.status == 200, (reply.status, await reply.text())
        data = await reply.read()  # a cut stream raises here
    if stream:
        assert data.rstrip().endswith(b"data: [DONE]"), data[-200:]
        assert data.count(b'"content"') >= STREAM_WORDS, data
    else:
        assert b'"finish_reason":"stop"' in data.replace(b" ", b""), data
    return "whole"


async def load(
    url: str, until: asyncio.Event, counts: Counter[str], spans: list[tuple[float, float]], workers: int
) -> None:
    """Calls without pause until ``until``; ``spans`` gets (start, end) of each whole call."""
    # One connection per call: a kept-alive connection the server closes between two
    # calls would make the client retry, hiding what the gateway did.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=15)) as session:

        async def worker(first: int) -> None:
            index = first
            while not until.is_set():
                started = time.monotonic()
                outcome = await one_call(session, url, index)
                counts[outcome] += 1
                if outcome == "whole":
                    spans.append((started, time.monotonic()))
                if outcome == "refused":
                    await asyncio.sleep(0.01)  # the port is closed: no busy loop
                index += workers

        await asyncio.gather(*(worker(index) for index in range(workers)))


def ledger_rows(db: str) -> int:
    connection = sqlite3.connect(db)
    try:
        return int(connection.execute("SELECT COUNT(*) FROM usage").fetchone()[0])
    finally:
        connection.close()


async def test_sigterm_under_load_completes_every_admitted_call_and_records_each_exactly_once(tmp_path):
    db = str(tmp_path / "usage.db")
    counts: Counter[str] = Counter()
    whole: list[tuple[float, float]] = []
    stop = asyncio.Event()
    async with start_gateway(config(db), tmp_path) as gateway:
        loader = asyncio.create_task(load(gateway.url, stop, counts, whole, workers=12))
        async with aiohttp.ClientSession() as admin:
            # a steady state: calls finishing while several others are in flight
            for _ in range(500):
                async with admin.get(f"{gateway.admin_url}/stats") as reply:
                    in_flight = (await reply.json())["in_flight"]
                if counts["whole"] >= 24 and in_flight >= 4:
                    break
                await asyncio.sleep(0.02)
        assert counts["whole"] >= 24 and in_flight >= 4, (counts, in_flight)
        signalled_at = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        code = await gateway.wait(20)
        stop.set()
        await asyncio.wait_for(loader, 20)  # a lost call raises here
    assert code == 0
    drained = sum(started < signalled_at < ended for started, ended in whole)
    assert drained >= 1, "no call was in flight across the signal: nothing was drained"
    assert counts["refused"] >= 1, "no call was refused: the load ended before the drain"
    # the ledger as a restarted gateway sees it (and it keeps appending)
    async with start_gateway(config(db), tmp_path) as again:
        async with aiohttp.ClientSession() as session:
            assert await one_call(session, again.url, 1) == "whole"
        again.send_signal(signal.SIGTERM)
        assert await again.wait(20) == 0
    assert ledger_rows(db) == counts["whole"] + 1, counts
