"""The ratelimit plugin end to end: the official SDKs against a real gateway, with the
in-process mock provider and, for the shared backend, a real redis-server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import openai
import pytest

from gateway.testing import run_gateway

MESSAGES = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(params=["memory", "redis"])
def backend(request) -> dict[str, Any]:
    """The options that pick a backend: the tests that take it run once with each."""
    if request.param == "memory":
        return {}
    server = request.getfixturevalue("redis_server")
    return {"backend": server.url, "timeout_ms": 2000, "probe_interval_s": 0.1}


def gateway_config(limits: dict[str, Any], *, facts: bool = False, **sections: Any) -> dict[str, Any]:
    plugins: list[dict[str, Any]] = [{"use": "facts_plugin:Facts"}] if facts else []
    plugins.append({"use": "ratelimit", "config": limits})
    return {"providers": {"mock": {"type": "mock"}}, "plugins": plugins, **sections}


async def chat(client: Any, user: str = "alice", headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
    """One chat call; returns the raw response (headers and all)."""
    return await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-gateway-user": user, **(headers or {})}, **kwargs
    )


async def admitted(client: Any, count: int, **kwargs: Any) -> int:
    """How many of ``count`` sequential calls got through (the rest must be 429s)."""
    passed = 0
    for _ in range(count):
        try:
            await chat(client, **kwargs)
            passed += 1
        except openai.RateLimitError:
            pass
    return passed


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as reply:
        return reply.status, await reply.json()


async def test_fourth_request_in_a_minute_gets_429_with_retry_after(tmp_path, backend):
    async with run_gateway(gateway_config({"requests_per_minute": 3, **backend}), tmp_path) as gw:
        client = gw.openai()
        for expected_left in (2, 1, 0):
            reply = await chat(client)
            assert reply.headers["x-ratelimit-limit-requests"] == "3"
            assert reply.headers["x-ratelimit-remaining-requests"] == str(expected_left)
        with pytest.raises(openai.RateLimitError) as caught:
            await chat(client)
        error = caught.value
        assert error.status_code == 429
        assert error.code == "rate_limit_exceeded"
        headers = error.response.headers
        # One request comes back every 20 s: 3 per minute, smoothly.
        assert 15 <= int(headers["Retry-After"]) <= 20
        assert 15_000 <= int(headers["retry-after-ms"]) <= 20_000
        assert int(headers["Retry-After"]) * 1000 >= int(headers["retry-after-ms"])  # rounded up, never early
        assert headers["x-ratelimit-limit-requests"] == "3"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"].endswith("s")
        # Another caller has its own budget.
        reply = await chat(client, user="bob")
        assert reply.headers["x-ratelimit-remaining-requests"] == "2"
        stats = (await get_json(f"{gw.admin_url}/stats"))[1]["plugins"]["ratelimit"]
    assert stats["allowed"] == 4 and stats["limited"] == 1
    assert stats["allowed_by_limit"] == {"requests_per_minute": 4}
    assert stats["limited_by_limit"] == {"requests_per_minute": 1}


async def test_anthropic_route_gets_429_in_anthropic_shape(tmp_path):
    async with run_gateway(gateway_config({"requests_per_hour": 1}), tmp_path) as gw:
        client = gw.anthropic()
        kwargs = {"model": "claude-3-5-haiku-latest", "max_tokens": 50, "messages": MESSAGES}
        await client.messages.create(**kwargs)
        import anthropic

        with pytest.raises(anthropic.RateLimitError) as caught:
            await client.messages.create(**kwargs)
    assert caught.value.body["error"]["type"] == "rate_limit_exceeded"
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"


async def test_openai_sdk_with_default_retries_waits_then_succeeds(tmp_path):
    async with run_gateway(gateway_config({"requests_per_second": 1}), tmp_path) as gw:
        client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="sk-caller")  # default max_retries (2)
        assert client.max_retries == 2
        try:
            await chat(client)
            started = time.monotonic()
            reply = await chat(client)  # 429 first, then the SDK's retry after retry-after-ms
            waited = time.monotonic() - started
        finally:
            await client.close()
        stats = (await get_json(f"{gw.admin_url}/stats"))[1]["plugins"]["ratelimit"]
    assert reply.http_response.status_code == 200
    assert waited >= 0.5
    assert stats["limited"] >= 1 and stats["allowed"] == 2


async def test_client_overrides_replace_the_defaults_for_that_client(tmp_path):
    config = gateway_config(
        {
            "requests_per_minute": 3,
            "tokens_per_minute": 100_000,
            "clients": {"frontend": {"requests_per_minute": 1}, "batch": {"unlimited": True}},
        },
        clients={"frontend": {"key": "fk"}, "backend": {"key": "bk"}, "batch": {"key": "ck"}},
    )
    async with run_gateway(config, tmp_path) as gw:
        reply = await chat(gw.openai(api_key="fk"))
        assert reply.headers["x-ratelimit-limit-requests"] == "1"
        # The override kept the default token limit.
        assert reply.headers["x-ratelimit-limit-tokens"] == "100000"
        assert await admitted(gw.openai(api_key="fk"), 2) == 0
        assert await admitted(gw.openai(api_key="bk"), 4) == 3
        batch = await chat(gw.openai(api_key="ck"))
        assert "x-ratelimit-limit-requests" not in batch.headers


async def test_flagged_requests_get_the_tightened_limits(tmp_path, backend):
    config = gateway_config({"requests_per_minute": 4, "flagged_multiplier": 0.5, **backend}, facts=True)
    async with run_gateway(config, tmp_path) as gw:
        client = gw.openai()
        flagged = {"x-test-threat": "MEDIUM"}
        reply = await chat(client, headers=flagged)
        assert reply.headers["x-ratelimit-limit-requests"] == "2"
        assert reply.headers["x-ratelimit-remaining-requests"] == "1"
        assert await admitted(client, 3, headers=flagged) == 1
        # A clean request of another caller still sees the whole limit.
        reply = await chat(client, user="clean")
        assert reply.headers["x-ratelimit-limit-requests"] == "4"
        assert reply.headers["x-ratelimit-remaining-requests"] == "3"
    spans = gw.spans_named("ratelimit request")
    assert any(span.attributes.get("gateway.ratelimit.flagged") for span in spans)


async def test_token_limit_reserves_the_estimate_while_the_call_is_in_flight(tmp_path, backend):
    async with run_gateway(gateway_config({"tokens_per_minute": 1000, **backend}), tmp_path) as gw:
        client = gw.openai()
        slow = {"x-mock-latency-ms": "400"}
        first = asyncio.create_task(chat(client, headers=slow, max_tokens=700))
        await asyncio.sleep(0.15)
        # The first call holds ~700 tokens until it settles: a second of the same size must wait.
        with pytest.raises(openai.RateLimitError) as caught:
            await chat(client, max_tokens=700)
        reply = await first
    assert int(reply.headers["x-ratelimit-remaining-tokens"]) < 300
    assert caught.value.response.headers["x-ratelimit-limit-tokens"] == "1000"


async def test_token_limit_settles_the_real_usage_after_the_answer(tmp_path, backend):
    async with run_gateway(gateway_config({"tokens_per_minute": 1000, **backend}), tmp_path) as gw:
        client = gw.openai()
        reply = await chat(client, max_tokens=900)
        usage = reply.parse().usage.total_tokens
        assert usage < 100
        # Settled to the real usage once complete ran (right after the answer).
        for _ in range(50):
            stats = (await get_json(f"{gw.admin_url}/stats"))[1]["plugins"]["ratelimit"]
            if stats["settled"]:
                break
            await asyncio.sleep(0.02)
        second = await chat(client, max_tokens=800)
    left = int(second.headers["x-ratelimit-remaining-tokens"])
    assert 1000 - usage - 800 - 40 <= left <= 1000 - usage - 800


async def test_counting_a_prompts_tokens_reserves_no_tokens(tmp_path, backend):
    # The anthropic SDK's messages.count_tokens is a POST whose answer carries no usage: the
    # reservation (prompt + default_max_tokens) stood as its charge, and five calls spent a
    # 1000-token minute.
    async with run_gateway(gateway_config({"tokens_per_minute": 1000, **backend}), tmp_path) as gw:
        client = gw.anthropic()
        for _ in range(5):
            raw = await client.messages.with_raw_response.count_tokens(model="claude-haiku-4-5", messages=MESSAGES)
            assert (await raw.parse()).input_tokens > 0
            assert raw.headers["x-ratelimit-remaining-tokens"] == "1000"


async def test_a_cache_hit_spends_no_tokens_but_counts_as_a_request(tmp_path, backend):
    config = gateway_config({"requests_per_minute": 10, "tokens_per_minute": 1000, **backend}, facts=True)
    async with run_gateway(config, tmp_path) as gw:
        client = gw.openai()
        await chat(client, headers={"x-test-cache": "hit"}, max_tokens=500)
        for _ in range(50):
            stats = (await get_json(f"{gw.admin_url}/stats"))[1]["plugins"]["ratelimit"]
            if stats["settled"]:
                break
            await asyncio.sleep(0.02)
        reply = await chat(client, max_tokens=10)
    assert reply.headers["x-ratelimit-remaining-requests"] == "8"
    # Only the second call's reservation is held: the hit was refunded in full.
    assert int(reply.headers["x-ratelimit-remaining-tokens"]) >= 1000 - 10 - 60


async def test_a_stream_the_caller_abandons_settles_the_tokens_seen_so_far(tmp_path, backend):
    async with run_gateway(gateway_config({"tokens_per_minute": 5000, **backend}), tmp_path) as gw:
        client = gw.anthropic()
        async with client.messages.stream(
            model="claude-3-5-haiku-latest",
            max_tokens=4000,
            messages=MESSAGES,
            extra_headers={"x-gateway-user": "alice", "x-mock-inter-token-ms": "50"},
        ) as stream:
            async for _event in stream:
                break  # leave after the first event: input tokens are known, output hardly begun
        for _ in range(100):
            stats = (await get_json(f"{gw.admin_url}/stats"))[1]["plugins"]["ratelimit"]
            if stats["settled"]:
                break
            await asyncio.sleep(0.02)
        assert stats["settled"] == 1
        reply = await chat(gw.openai(), max_tokens=10)
    # The 4000 reserved came back; only what the stream used (and this call) is held.
    assert int(reply.headers["x-ratelimit-remaining-tokens"]) > 5000 - 200


async def test_spans_carry_the_decision_and_remaining(tmp_path):
    async with run_gateway(gateway_config({"requests_per_minute": 1, "tokens_per_day": 100_000}), tmp_path) as gw:
        client = gw.openai()
        await chat(client)
        with pytest.raises(openai.RateLimitError):
            await chat(client)
    spans = gw.spans_named("ratelimit request")
    assert [span.attributes["gateway.ratelimit.decision"] for span in spans] == ["allowed", "limited"]
    assert spans[0].attributes["gateway.ratelimit.remaining_requests"] == 0
    assert spans[0].attributes["gateway.ratelimit.remaining_tokens"] > 99_000
    assert spans[1].attributes["gateway.ratelimit.limit"] == "requests_per_minute"
    assert "gateway.ratelimit.backend_ms" in spans[0].attributes


# -- the shared backend: a real redis-server ------------------------------------------------


def redis_limits(redis_server: Any, **limits: Any) -> dict[str, Any]:
    return {"backend": redis_server.url, "timeout_ms": 2000, "probe_interval_s": 0.1, **limits}


async def redis_commands(redis_server: Any) -> dict[str, int]:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_server.url)
    try:
        info = await client.info("commandstats")
    finally:
        await client.aclose()
    return {name.removeprefix("cmdstat_"): figures["calls"] for name, figures in info.items()}


async def test_each_decision_is_one_evalsha_round_trip_with_a_span(tmp_path, redis_server):
    config = gateway_config(redis_limits(redis_server, requests_per_minute=100, tokens_per_minute=100_000))
    async with run_gateway(config, tmp_path) as gw:
        client = gw.openai()
        await chat(client)  # warm: the pool's connection says hello once
        before = await redis_commands(redis_server)
        for _ in range(5):
            await chat(client)
        await asyncio.sleep(0.3)  # settles run after each answer
        after = await redis_commands(redis_server)
    spent = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    # 5 decisions and 5 settles, one EVALSHA each; besides, only the probe's PINGs and our INFO.
    assert spent["evalsha"] == 10
    # commandstats also counts the commands a script runs inside Redis; on the wire
    # there is nothing else (PING: the readiness probe; HELLO: a new pooled connection).
    inside_scripts = {"time", "hmget", "hget", "hset", "pttl", "pexpire"}
    assert {name for name, calls in spent.items() if calls} - inside_scripts <= {"evalsha", "ping", "info", "hello"}
    redis_spans = [span for span in gw.spans() if span.attributes.get("db.system") == "redis"]
    assert len(redis_spans) >= 12
    assert {span.attributes["gateway.ratelimit.script"] for span in redis_spans} == {"take", "settle"}
    take = gw.spans_named("ratelimit request")[-1]
    assert take.attributes["gateway.ratelimit.backend"] == "redis"
    assert any(span.parent.span_id == take.context.span_id for span in redis_spans)


async def test_two_gateway_processes_sharing_redis_enforce_one_global_limit(tmp_path, redis_server):
    from helpers_lifecycle import loopback_config, start_gateway

    config = loopback_config(plugins=[{"use": "ratelimit", "config": redis_limits(redis_server, requests_per_hour=10)}])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with start_gateway(config, tmp_path / "a") as one, start_gateway(config, tmp_path / "b") as two:
        clients = [openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="sk-caller", max_retries=0) for gw in (one, two)]
        try:
            # One call through each replica, then 28 concurrent calls of the same caller
            # spread over both. (A replica's concurrent decisions reach Redis as one
            # pipeline, so which replica wins a burst is whose pipeline arrives first.)
            results = [await chat(client, user="shared") for client in clients]
            results += await asyncio.gather(
                *(chat(clients[i % 2], user="shared") for i in range(28)), return_exceptions=True
            )
        finally:
            for client in clients:
                await client.close()
        stats = [(await get_json(f"{gw.admin_url}/stats"))[1]["plugins"]["ratelimit"] for gw in (one, two)]
    passed = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(passed) == 10 and len(refused) == 20
    assert sum(s["allowed"] for s in stats) == 10
    assert all(s["allowed"] > 0 for s in stats)  # both replicas admitted some


async def test_redis_down_with_failure_mode_closed_answers_503_then_recovers(tmp_path, redis_server):
    config = gateway_config(redis_limits(redis_server, requests_per_minute=100, failure_mode="closed"))
    async with run_gateway(config, tmp_path) as gw:
        client = gw.openai()
        await chat(client)
        assert (await get_json(f"{gw.admin_url}/readyz"))[0] == 200
        redis_server.stop()
        with pytest.raises(openai.InternalServerError) as caught:
            await chat(client)
        assert caught.value.status_code == 503
        assert caught.value.code == "backend_unavailable"
        assert caught.value.response.headers["Retry-After"] == "1"  # as on every 503 (before: none)
        status, body = await get_json(f"{gw.admin_url}/readyz")
        assert status == 503 and body["checks"]["ratelimit"] is False
        redis_server.start()
        for _ in range(100):
            if (await get_json(f"{gw.admin_url}/readyz"))[0] == 200:
                break
            await asyncio.sleep(0.05)
        reply = await chat(client)
        assert reply.http_response.status_code == 200
        stats = (await get_json(f"{gw.admin_url}/stats"))[1]["plugins"]["ratelimit"]
    assert stats["backend_errors"] >= 1 and stats["failed_closed"] == 1 and stats["backend_up"] == 1
    events = [event.name for span in gw.spans_named("ratelimit request") for event in span.events]
    assert "ratelimit.backend_error" in events


async def test_redis_down_with_failure_mode_open_lets_requests_through(tmp_path, redis_server, caplog):
    config = gateway_config(redis_limits(redis_server, requests_per_minute=1))
    async with run_gateway(config, tmp_path) as gw:
        client = gw.openai()
        await chat(client)
        redis_server.stop()
        for _ in range(5):
            reply = await chat(client)  # over the limit, but unchecked
            assert "x-ratelimit-remaining-requests" not in reply.headers
        # Failing open, the replica stays in service.
        assert (await get_json(f"{gw.admin_url}/readyz"))[0] == 200
        stats = (await get_json(f"{gw.admin_url}/stats"))[1]["plugins"]["ratelimit"]
        redis_server.start()
        for _ in range(100):
            s = (await get_json(f"{gw.admin_url}/stats"))[1]["plugins"]["ratelimit"]
            if s["backend_up"]:
                break
            await asyncio.sleep(0.05)
        # Back: the caller's bucket survived? No: Redis restarted empty, so it is full again.
        await chat(client)
        with pytest.raises(openai.RateLimitError):
            await chat(client)
    assert stats["failed_open"] == 5 and stats["backend_up"] == 0
    warnings = [r for r in caplog.records if r.name == "gateway.ratelimit" and r.levelname == "WARNING"]
    assert 1 <= len(warnings) <= 2  # not one per request


async def test_a_gateway_started_while_redis_is_down_becomes_ready_when_it_answers(tmp_path, redis_server):
    redis_server.stop()
    config = gateway_config(redis_limits(redis_server, requests_per_minute=5, failure_mode="closed"))
    async with run_gateway(config, tmp_path) as gw:
        assert (await get_json(f"{gw.admin_url}/readyz"))[0] == 503
        with pytest.raises(openai.InternalServerError):
            await chat(gw.openai())
        redis_server.start()
        for _ in range(100):
            if (await get_json(f"{gw.admin_url}/readyz"))[0] == 200:
                break
            await asyncio.sleep(0.05)
        reply = await chat(gw.openai())  # the scripts were never loaded: EVALSHA falls back to EVAL once
        assert reply.headers["x-ratelimit-remaining-requests"] == "4"


async def test_shadow_mode_counts_and_tells_but_lets_every_request_through(tmp_path):
    async with run_gateway(gateway_config({"requests_per_minute": 2, "shadow_mode": True}), tmp_path) as gw:
        client = gw.openai()
        replies = [await chat(client) for _ in range(4)]
        stats = (await get_json(f"{gw.admin_url}/stats"))[1]["plugins"]["ratelimit"]
    assert [reply.headers["x-ratelimit-remaining-requests"] for reply in replies] == ["1", "0", "0", "0"]
    assert stats["allowed"] == 2 and stats["limited"] == 2 and stats["shadow_passed"] == 2
    decisions = [span.attributes["gateway.ratelimit.decision"] for span in gw.spans_named("ratelimit request")]
    assert decisions == ["allowed", "allowed", "shadow_limited", "shadow_limited"]


async def test_redis_keys_carry_the_prefix_and_expire_once_the_buckets_are_full(tmp_path, redis_server):
    import redis.asyncio as aioredis

    config = gateway_config(redis_limits(redis_server, requests_per_second=2, key_prefix="team-a:rl:"))
    async with run_gateway(config, tmp_path) as gw:
        await chat(gw.openai(), user="alice")
    client = aioredis.from_url(redis_server.url)
    try:
        assert await client.keys("*") == [b"team-a:rl:alice"]
        assert 0 < await client.pttl("team-a:rl:alice") <= 1500  # full again in 0.5 s, plus a second's slack
        assert await client.hkeys("team-a:rl:alice") == [b"rps"]
    finally:
        await client.aclose()
