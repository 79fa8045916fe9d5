"""Breaker state shared through a real redis-server: two `gateway run` processes learn an outage once."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from gateway.testing import run_gateway

from helpers_lifecycle import loopback_config, start_gateway

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
FAIL = {"x-mock-error-rate": "1", "x-mock-error-status": "503"}


def shared_config(redis_url, **options):
    breaker = {"failure_threshold": 1, "retries": 0, "recovery_s": 30, "backend": redis_url, "sync_s": 0.05, **options}
    return loopback_config(plugins=[{"use": "breaker", "config": breaker}])


async def post(session, url, headers=None):
    async with session.post(url + "/v1/chat/completions", json=BODY, headers=headers or {}) as answer:
        return answer.status, answer.headers, await answer.json()


async def state_of(session, admin_url, key="mock"):
    async with session.get(admin_url + "/breakers") as answer:
        document = await answer.json()
    return next(b for b in document["breakers"] if b["key"] == key)


async def until_state(session, admin_url, state, within_s=3.0):
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        breaker = await state_of(session, admin_url)
        if breaker["state"] == state or asyncio.get_running_loop().time() > deadline:
            return breaker
        await asyncio.sleep(0.02)


async def test_a_breaker_opened_on_one_replica_short_circuits_the_other(tmp_path, redis_server):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config = shared_config(redis_server.url)
    async with (
        start_gateway(config, tmp_path / "a") as a,
        start_gateway(config, tmp_path / "b") as b,
        aiohttp.ClientSession() as session,
    ):
        status, _, _ = await post(session, a.url, FAIL)
        assert status == 503
        assert (await state_of(session, a.admin_url))["state"] == "open"

        learned = await until_state(session, b.admin_url, "open")
        assert learned["state"] == "open" and learned["source"] == "shared"
        assert 15 < learned["next_probe_in_s"] <= 30  # A's opening time

        status, headers, body = await post(session, b.url)
        assert status == 503 and body["error"]["code"] == "circuit_open"
        assert "x-gateway-provider" not in headers  # B never called the provider
        async with session.get(b.admin_url + "/stats") as answer:
            figures = (await answer.json())["plugins"]["breaker"]
        assert figures["failures_by_provider"] == {"mock": 0}
        assert figures["short_circuited"] == 1

        # An admin reset on A reaches B: B's breaker lets its next call probe.
        async with session.post(a.admin_url + "/breakers/mock/reset") as answer:
            assert answer.status == 200
        assert (await until_state(session, b.admin_url, "half_open"))["state"] == "half_open"
        status, headers, _ = await post(session, b.url)
        assert status == 200 and headers["x-gateway-provider"] == "mock"


async def test_a_replica_that_starts_during_an_outage_knows_it_before_its_first_request(tmp_path, redis_server):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config = shared_config(redis_server.url, sync_s=30)  # B's periodic sync would come too late
    async with run_gateway(config, tmp_path / "a") as a, aiohttp.ClientSession() as session:
        await post(session, a.url, FAIL)
        await asyncio.sleep(0.2)  # A's write to Redis is in the background
        async with run_gateway(config, tmp_path / "b") as b:
            status, _, body = await post(session, b.url)
    assert status == 503 and body["error"]["code"] == "circuit_open"


async def test_a_redis_outage_falls_back_to_local_state_with_one_log_line(tmp_path, redis_server, caplog):
    caplog.set_level(logging.INFO, logger="gateway.breaker")
    config = shared_config(redis_server.url, recovery_s=1)
    async with run_gateway(config, tmp_path) as gw, aiohttp.ClientSession() as session:
        redis_server.stop()
        for _ in range(2):
            status, _, _ = await post(session, gw.url, FAIL)  # opens locally (publishing fails)
            assert status == 503
            status, _, body = await post(session, gw.url)
            assert body["error"]["code"] == "circuit_open"  # still broken locally
            await asyncio.sleep(1.05)
        async with session.get(gw.admin_url + "/breakers") as answer:
            document = await answer.json()
        assert document["backend_healthy"] is False
        async with session.get(gw.admin_url + "/readyz") as answer:
            assert answer.status == 200  # local state serves: not a reason to stop traffic
        warnings = [r for r in caplog.records if "backend unreachable" in r.getMessage()]
        assert len(warnings) == 1

        redis_server.start()
        await asyncio.sleep(0.3)
        async with session.get(gw.admin_url + "/breakers") as answer:
            assert (await answer.json())["backend_healthy"] is True
    assert any("reachable again" in r.getMessage() for r in caplog.records)


async def test_opening_writes_a_redis_span(tmp_path, redis_server):
    config = shared_config(redis_server.url)
    async with run_gateway(config, tmp_path) as gw, aiohttp.ClientSession() as session:
        await post(session, gw.url, FAIL)
        await asyncio.sleep(0.2)
        (span,) = gw.spans_named("breaker redis HSET")
    assert span.attributes["db.system"] == "redis"
    assert span.attributes["gateway.breaker"] == "mock"


async def test_a_gateway_starts_and_serves_while_redis_is_down(tmp_path, redis_server, caplog):
    caplog.set_level(logging.WARNING, logger="gateway.breaker")
    redis_server.stop()
    async with run_gateway(shared_config(redis_server.url), tmp_path) as gw, aiohttp.ClientSession() as session:
        status, _, _ = await post(session, gw.url)
        assert status == 200
        async with session.get(gw.admin_url + "/stats") as answer:
            figures = (await answer.json())["plugins"]["breaker"]
    assert figures["backend_healthy"] == 0 and figures["backend_errors"] >= 1
    (warning,) = [r for r in caplog.records if "backend unreachable" in r.getMessage()]
    assert "redis://" not in warning.getMessage()  # the URL (and any password in it) stays out of logs


async def test_an_admin_reset_is_not_undone_by_a_read_sent_before_it(tmp_path, redis_server):
    # A read of the shared hash already on its way when the admin resets the breaker still
    # holds the entry the reset removes: it must not reopen the breaker (it did, as "opened by
    # another replica", and a call then got 503 circuit_open right after a successful reset).
    import redis.asyncio as aioredis

    async with run_gateway(shared_config(redis_server.url), tmp_path) as gw, aiohttp.ClientSession() as session:
        status, _, _ = await post(session, gw.url, FAIL)
        assert status == 503
        await asyncio.sleep(0.2)  # the opening is written to Redis in the background
        stall = aioredis.from_url(redis_server.url)
        try:
            # Redis answers nothing for 0.3 s (under the breaker's 0.5 s timeout): the sync's
            # HGETALL, sent every 0.05 s, waits in line, and the reset's HDEL goes after it.
            sleeping = asyncio.create_task(stall.execute_command("DEBUG", "SLEEP", "0.3"))
            await asyncio.sleep(0.1)
            async with session.post(gw.admin_url + "/breakers/mock/reset") as answer:
                assert answer.status == 200
            await sleeping
        finally:
            await stall.aclose()
        await asyncio.sleep(0.2)  # the stale read has been applied, and fresh ones after it
        breaker = await state_of(session, gw.admin_url)
        assert breaker["state"] == "closed" and breaker["opened"] == 1
        status, headers, _ = await post(session, gw.url)
        assert status == 200 and headers["x-gateway-provider"] == "mock"
