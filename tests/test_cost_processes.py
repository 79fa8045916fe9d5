"""The cost plugin in real ``gateway run`` processes: the ledger's durability bound
on SIGTERM and SIGKILL, and budgets shared by two replicas through one redis-server."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp

from helpers_lifecycle import loopback_config, start_gateway

HELLO = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}
ONE_CALL_PICO = 9_300_000  # the mock's answer to HELLO: 2 input and 15 output tokens of gpt-4o-mini


def count_rows(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        return int(connection.execute("SELECT COUNT(*) FROM usage").fetchone()[0])
    finally:
        connection.close()


async def call(session: aiohttp.ClientSession, url: str, **headers: str) -> int:
    async with session.post(f"{url}/v1/chat/completions", json={**HELLO, "max_tokens": 15}, headers=headers) as reply:
        await reply.read()
        return reply.status


async def settled_quota(session: aiohttp.ClientSession, admin_url: str, client: str) -> dict[str, Any]:
    """The caller's quota once no call holds a reservation (callers have their answer
    before the charge is made)."""
    for _ in range(100):
        async with session.get(f"{admin_url}/usage/quota?client={client}") as reply:
            quota = await reply.json()
        if quota["day"]["reserved_usd"] == 0:
            break
        await asyncio.sleep(0.05)
    return quota  # type: ignore[no-any-return]


def config(store: str, **options: Any) -> dict[str, Any]:
    return loopback_config(plugins=[{"use": "cost", "config": {"store": store, **options}}])


async def test_sigterm_loses_no_record_even_inside_a_long_batch_window(tmp_path):
    db = tmp_path / "usage.db"
    # A 30 s window: nothing is written before the drain but for the shutdown flush.
    async with start_gateway(config(str(db), flush_interval_s=30), tmp_path) as gateway:
        async with aiohttp.ClientSession() as session:
            statuses = await asyncio.gather(*(call(session, gateway.url) for _ in range(40)))
        assert statuses == [200] * 40
        gateway.send_signal(signal.SIGTERM)
        assert await gateway.wait(20) == 0
    assert count_rows(db) == 40
    # and a restart keeps appending to the same ledger
    async with start_gateway(config(str(db), flush_interval_s=30), tmp_path) as gateway:
        async with aiohttp.ClientSession() as session:
            assert await call(session, gateway.url) == 200
        gateway.send_signal(signal.SIGTERM)
        assert await gateway.wait(20) == 0
    assert count_rows(db) == 41


async def test_sigkill_loses_at_most_the_last_batch_window(tmp_path):
    db = tmp_path / "usage.db"
    window_s = 0.3
    async with start_gateway(config(str(db), flush_interval_s=window_s), tmp_path) as gateway:
        async with aiohttp.ClientSession() as session:
            first = await asyncio.gather(*(call(session, gateway.url) for _ in range(30)))
            await asyncio.sleep(window_s + 0.7)  # older than one window: must be on disk
            last = await asyncio.gather(*(call(session, gateway.url) for _ in range(10)))
        gateway.send_signal(signal.SIGKILL)
        assert await gateway.wait(10) == -signal.SIGKILL
    assert first == [200] * 30 and last == [200] * 10
    assert 30 <= count_rows(db) <= 40


async def test_two_replicas_on_one_redis_enforce_one_budget_exactly(tmp_path, redis_server):
    budget_usd = str(Decimal(ONE_CALL_PICO * 5) / 10**12)  # exactly five calls
    options = {
        "budget_usd_per_day": float(budget_usd),
        "flush_interval_s": 0.1,
        "redis_prefix": "test:cost",
        # a slow machine must not turn into unmetered calls (failure_mode open)
        "failure_mode": "closed",
        "redis_timeout_s": 5,
    }
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    async with (
        start_gateway(config(redis_server.url, ledger=str(one / "usage.db"), **options), one) as first,
        start_gateway(config(redis_server.url, ledger=str(two / "usage.db"), **options), two) as second,
    ):
        async with aiohttp.ClientSession() as session:
            # one after the other, alternating replicas: exactly five are served
            statuses = [await call(session, (first, second)[i % 2].url) for i in range(8)]
            assert statuses == [200] * 5 + [402] * 3
            quota = await settled_quota(session, second.admin_url, "127.0.0.1")
            assert Decimal(str(quota["day"]["spent_usd"])) == Decimal(budget_usd)
            assert quota["backend"] == "redis" and quota["day"]["reserved_usd"] == 0
            # a fresh caller, 40 calls at once over both replicas: never more than the budget
            statuses = await asyncio.gather(
                *(
                    call(session, (first, second)[i % 2].url, **{"x-gateway-user": "burst", "x-mock-latency-ms": "30"})
                    for i in range(40)
                )
            )
            burst = await settled_quota(session, first.admin_url, "burst")
        assert 1 <= statuses.count(200) <= 5 and statuses.count(200) + statuses.count(402) == 40
        assert Decimal(str(burst["day"]["spent_usd"])) <= Decimal(budget_usd)
        for gateway in (first, second):
            gateway.send_signal(signal.SIGTERM)
            assert await gateway.wait(20) == 0
    rows = count_rows(one / "usage.db") + count_rows(two / "usage.db")
    assert rows == 48  # every call, served or refused, in one replica's ledger or the other's


async def test_sigterm_charges_every_call_drained_to_the_redis_budget(tmp_path, redis_server):
    """Settles are queued without waiting for Redis (write-behind): the calls that finish
    during the drain are still charged before the process exits, even when Redis is
    slow to answer then and the settles wait in the queue at shutdown."""
    import redis.asyncio as aioredis

    options = {"budget_usd_per_day": 1000, "redis_prefix": "test:drain", "redis_timeout_s": 5,
               "failure_mode": "closed", "ledger": str(tmp_path / "usage.db")}  # fmt: skip
    client = aioredis.from_url(redis_server.url)
    try:
        async with start_gateway(config(redis_server.url, **options), tmp_path) as gateway:
            async with aiohttp.ClientSession() as session:
                calls = [
                    asyncio.create_task(
                        call(session, gateway.url, **{"x-gateway-user": "drain", "x-mock-latency-ms": str(400 + 20 * i)})
                    )
                    for i in range(20)
                ]
                await asyncio.sleep(0.2)  # admitted and reserved, answers still to come
                gateway.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.15)
                # Redis stalls while the answers arrive: the settles queue up behind it.
                stall = asyncio.create_task(client.execute_command("DEBUG", "SLEEP", "1"))
                statuses = await asyncio.gather(*calls)
            assert await gateway.wait(20) == 0
            await stall
        assert statuses == [200] * 20
        day = (await client.keys("test:drain:spent:drain:????-??-??"))[0]
        assert int(await client.get(day)) == 20 * ONE_CALL_PICO
        assert await client.zcard("test:drain:reserved:drain") == 0
    finally:
        await client.aclose()
    assert count_rows(tmp_path / "usage.db") == 20
