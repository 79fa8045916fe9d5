"""Hardening, upstream faults: garbage, wrong content type, deep JSON, endless and
stalled streams, a very slow first byte, 5xx and 429 storms under concurrency.

Each ends in the right code (502 upstream_error, 504 upstream_timeout, 503
circuit_open, or a fallback's answer), never a 500 or a plugin failure, and no
request outlives its deadline. Resets, refusals, half bodies, cut streams and
sequential breaker behaviour are in tests/test_proxy.py and tests/test_breaker.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.cors import SERVER
from gateway.testing import run_gateway, serve_app

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
CHAT_ANSWER = {
    "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
}  # fmt: skip
MESSAGE = {"model": "claude-3-5-haiku", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def full_chain(tmp_path: Any, **breaker: Any) -> list[dict[str, Any]]:
    return [
        {"use": "scan", "config": {"action": "block", "min_severity": "MEDIUM", "scan_responses": True}},
        {"use": "cache", "config": {"backend": "memory", "ttl_s": 60, "max_entries": 100}},
        {"use": "cascade", "config": {"draft_model": "gpt-4o-mini", "escalate_model": "gpt-4o"}},
        {"use": "cost", "config": {"budget_usd_per_day": 1000, "store": str(tmp_path / "usage.db")}},
        {"use": "breaker", "config": {"failure_threshold": 1000, "recovery_s": 1, "retries": 0, **breaker}},
    ]


def config_for(url: str, tmp_path: Any, *, timeout_s: float = 5, chain: bool = True, **breaker: Any) -> dict[str, Any]:
    return {
        "providers": {"oa": {"type": "openai", "base_url": url, "api_key": "sk-provider", "timeout_s": timeout_s}},
        "plugins": full_chain(tmp_path, **breaker) if chain else [],
    }


def upstream(handler: Any) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def plugin_failures(gw: Any) -> dict[str, int]:
    async with aiohttp.ClientSession() as session, session.get(gw.admin_url + "/stats") as reply:
        stats = await reply.json()
    return {name: figures["failures"] for name, figures in stats["plugins"].items() if figures.get("failures")}


@pytest.mark.parametrize("chain", [True, False], ids=["full-chain", "no-plugin"])
@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/html", b"<html><body>502 Bad Gateway from some box</body></html>"),
        ("application/json", b"\x00\xff\xfe not json \x80"),
        ("application/json", b"[" * 50_000 + b"]" * 50_000),
        ("application/json", b'{"choices": "not a list", "usage": {"prompt_tokens": "many"}}'),
        ("text/event-stream", b"data: {\"half\":"),
        ("application/octet-stream", bytes(range(256)) * 64),
    ],
    ids=["html", "binary-as-json", "deep-json", "wrong-shapes", "sse-for-a-buffered-call", "octets"],
)
async def test_a_broken_answer_is_relayed_or_502_never_500_nor_a_plugin_failure(tmp_path, chain, content_type, body):
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async with serve_app(upstream(answer)) as url, run_gateway(config_for(url, tmp_path, chain=chain), tmp_path) as gw:
        async with aiohttp.ClientSession() as session:
            for path, request in (("/v1/chat/completions", CHAT), ("/v1/messages", MESSAGE)):  # /v1/messages is translated
                async with session.post(gw.url + path, json=request) as reply:
                    status, text = reply.status, await reply.read()
                assert status in (200, 502), (path, status, text[:300])
                if status == 502:
                    assert b"upstream_error" in text
                if path == "/v1/messages" and content_type != "text/event-stream":  # an SSE answer is relayed as a stream
                    assert status == 502, "an answer that cannot be translated is the provider's fault"
        assert await plugin_failures(gw) == {}


@pytest.mark.parametrize("chain", [True, False], ids=["full-chain", "no-plugin"])
async def test_garbage_inside_a_stream_is_relayed_and_ends_cleanly_without_plugin_failures(tmp_path, chain):
    pieces = [
        b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"}}]}\n\n",
        b"\xff\xfe\x00garbage without a newline " * 100,
        b"\n\ndata: {not json}\n\n",
        b"data: " + b"[" * 50_000 + b"]" * 50_000 + b"\n\n",
        b"event: error\ndata: {\"usage\": {\"total_tokens\": \"x\"}, \"choices\": 7}\n\n",
        b"data: [DONE]\n\n",
    ]

    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
        return response

    async with serve_app(upstream(stream)) as url, run_gateway(config_for(url, tmp_path, chain=chain), tmp_path) as gw:
        async with aiohttp.ClientSession() as session:
            async with session.post(gw.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as reply:
                received = await asyncio.wait_for(reply.read(), 10)
            assert reply.status == 200
            assert b'"content":"ok"' in received
            async with session.post(gw.url + "/v1/messages", json={**MESSAGE, "stream": True}) as reply:
                translated = await asyncio.wait_for(reply.read(), 10)
            assert reply.status in (200, 502), translated[:300]
        assert await plugin_failures(gw) == {}


SPOOFED = {
    "x-gateway-cache": "hit",
    "X-Gateway-Cost-USD": "0.000000",
    "x-gateway-threat": "NONE",
    "x-gateway-provider": "someone-else",
    "x-gateway-cascade": "accepted",
}


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "stream"])
async def test_an_upstreams_x_gateway_headers_and_server_never_reach_the_caller(tmp_path, stream):
    """``x-gateway-*`` states what this gateway did (a hit, a cost, a threat): an upstream that
    sends them (spoofing, or another gateway in front of the provider) is not believed, also
    with no plugin that would set them. Its ``Server`` names its software: the gateway's
    own replaces it. The provider's rate-limit headers are its own to state: they pass."""
    headers = {**SPOOFED, "Server": "provider-box/9.9", "x-ratelimit-remaining-requests": "41"}

    async def spoofing(request: web.Request) -> web.StreamResponse:
        await request.read()
        if not stream:
            return web.json_response(CHAT_ANSWER, headers=headers)
        answer = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
        await answer.prepare(request)
        await answer.write(b'data: {"id":"c","object":"chat.completion.chunk","choices":[]}\n\ndata: [DONE]\n\n')
        return answer

    async with serve_app(upstream(spoofing)) as url, run_gateway(config_for(url, tmp_path, chain=False), tmp_path) as gw:
        async with aiohttp.ClientSession() as session:
            async with session.post(gw.url + "/v1/chat/completions", json={**CHAT, "stream": stream}) as reply:
                await reply.read()
    assert reply.status == 200
    assert [name for name in reply.headers if name.lower().startswith("x-gateway-")] == ["x-gateway-provider"]
    assert reply.headers["x-gateway-provider"] == "oa"
    assert reply.headers["Server"] == SERVER and reply.headers["x-ratelimit-remaining-requests"] == "41"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/html", b"<html><body>Service unavailable (captive portal)</body></html>"),
        ("application/json", b'{"id": "chatcmpl-1", "choices": [{"index": 0, "mess'),
        ("application/json", b""),
        ("application/json", b"[1, 2, 3]"),
    ],
    ids=["html", "cut-short", "empty", "array"],
)
async def test_a_2xx_answer_that_is_not_a_json_object_is_502_in_the_callers_shape_and_fails_over(
    tmp_path, content_type, body
):
    # Before: relayed as 200, so the openai SDK returned the HTML page as a str (or
    # raised a bare JSONDecodeError), and the breaker never counted the failure.
    import anthropic
    import openai

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async with serve_app(upstream(answer)) as url:
        providers = {
            "oa": {"type": "openai", "base_url": url, "api_key": "sk-provider"},
            "claude": {"type": "anthropic", "base_url": url, "api_key": "sk-provider"},
            "backup": {"type": "mock"},
        }
        config = {
            "providers": providers,
            "routes": [{"prefix": "/v1/messages", "provider": "claude"}, {"prefix": "/v1/", "provider": "oa"}],
            "plugins": [{"use": "cost", "config": {"store": str(tmp_path / "usage.db")}}],
        }
        async with run_gateway(config, tmp_path) as gw:
            with pytest.raises(openai.InternalServerError) as raised:
                await gw.openai().chat.completions.create(**CHAT)
            assert raised.value.status_code == 502 and raised.value.body["code"] == "upstream_error"
            with pytest.raises(anthropic.InternalServerError) as failed:
                await gw.anthropic().messages.create(**MESSAGE)
            assert failed.value.status_code == 502 and failed.value.body["error"]["type"] == "upstream_error"
            assert await plugin_failures(gw) == {}
        breaker = {"use": "breaker", "config": {"retries": 0, "fallbacks": {"oa": ["backup"], "claude": ["backup"]}}}
        config["plugins"].append(breaker)
        async with run_gateway(config, tmp_path) as gw:
            raw = await gw.openai().chat.completions.with_raw_response.create(**CHAT)
            assert raw.headers["x-gateway-provider"] == "backup"
            assert raw.parse().choices[0].message.content.startswith("Mock reply to: hi")


async def test_a_very_slow_first_byte_is_504_at_the_providers_timeout(tmp_path):
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({})

    async with serve_app(upstream(slow)) as url, run_gateway(config_for(url, tmp_path, timeout_s=0.5), tmp_path) as gw:
        async with aiohttp.ClientSession() as session:
            for request in (CHAT, {**CHAT, "stream": True}):
                started = time.monotonic()
                async with session.post(gw.url + "/v1/chat/completions", json=request) as reply:
                    body = await reply.json()
                assert reply.status == 504 and body["error"]["code"] == "upstream_timeout"
                assert time.monotonic() - started < 5  # the 0.5 s timeout, with room for a loaded machine


async def test_retries_of_a_slow_upstream_stop_at_the_breaker_deadline(tmp_path):
    calls = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await asyncio.sleep(30)
        return web.json_response({})

    async with serve_app(upstream(slow)) as url:
        config = config_for(url, tmp_path, timeout_s=0.4, retries=5, deadline_s=1.0)
        async with run_gateway(config, tmp_path) as gw, aiohttp.ClientSession() as session:
            started = time.monotonic()
            async with session.post(gw.url + "/v1/chat/completions", json=CHAT) as reply:
                body = await reply.json()
            elapsed = time.monotonic() - started
    assert reply.status == 504 and body["error"]["code"] == "upstream_timeout"
    assert elapsed < 5
    assert calls < 6  # the deadline cut the retries short


async def test_a_stream_that_stalls_mid_way_ends_with_a_timeout_error_event(tmp_path):
    async def stall(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"a"}}]}\n\n')
        await asyncio.sleep(30)
        return response

    async with serve_app(upstream(stall)) as url, run_gateway(config_for(url, tmp_path, timeout_s=0.5), tmp_path) as gw:
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            async with session.post(gw.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as reply:
                received = await asyncio.wait_for(reply.read(), 10)
            assert time.monotonic() - started < 5
        assert b'"content":"a"' in received
        assert b"upstream_timeout" in received
        assert await plugin_failures(gw) == {}


async def test_an_endless_stream_flows_to_the_caller_and_stops_when_the_caller_leaves(tmp_path):
    state = {"events": 0, "cancelled": False}

    async def endless(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            while True:
                await response.write(b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"x"}}]}\n\n')
                state["events"] += 1
                await asyncio.sleep(0.005)
        except (asyncio.CancelledError, ConnectionResetError):
            state["cancelled"] = True
            raise

    async with serve_app(upstream(endless)) as url, run_gateway(config_for(url, tmp_path), tmp_path) as gw:
        async with aiohttp.ClientSession() as session:
            async with session.post(gw.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as reply:
                for _ in range(50):  # events keep arriving as they are made
                    await asyncio.wait_for(reply.content.readuntil(b"\n\n"), 5)
        for _ in range(100):
            if state["cancelled"]:
                break
            await asyncio.sleep(0.05)
        assert state["cancelled"], "the upstream kept streaming to nobody"
        await asyncio.sleep(0.2)
        assert gw.gateway.proxy.in_flight == 0
        assert await plugin_failures(gw) == {}


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_a_storm_of_failures_under_concurrency_is_served_by_the_fallback_or_refused_never_500(tmp_path, status):
    config = {
        "providers": {
            "primary": {"type": "mock", "mock": {"error_rate": 1, "error_status": status, "latency_ms": 5}},
            "backup": {"type": "mock", "mock": {"latency_ms": 5}},
        },
        "plugins": [
            *full_chain(tmp_path)[:4],
            {
                "use": "breaker",
                "config": {"failure_threshold": 3, "recovery_s": 30, "retries": 1, "fallbacks": {"primary": ["backup"]}},
            },
        ],
    }
    async with run_gateway(config, tmp_path) as gw:
        client = gw.openai()

        async def one(n: int) -> tuple[int, str | None]:
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"storm {n}"}]
            )
            return raw.status_code, raw.headers.get("x-gateway-provider")

        answers = await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(40))), 30)
        async with aiohttp.ClientSession() as session, session.get(gw.admin_url + "/breakers") as reply:
            breakers = await reply.json()
        assert await plugin_failures(gw) == {}
    assert answers == [(200, "backup")] * 40
    states = {breaker["provider"]: breaker["state"] for breaker in breakers["breakers"]}
    assert states.get("primary") == "open"


async def test_a_storm_with_no_fallback_opens_the_breaker_and_answers_503_circuit_open_fast(tmp_path):
    config = {
        "providers": {"primary": {"type": "mock", "mock": {"error_rate": 1, "error_status": 503}}},
        "plugins": [{"use": "breaker", "config": {"failure_threshold": 3, "recovery_s": 30, "retries": 0}}],
    }
    async with run_gateway(config, tmp_path) as gw, aiohttp.ClientSession() as session:

        async def one() -> tuple[int, str]:
            async with session.post(gw.url + "/v1/chat/completions", json=CHAT) as reply:
                return reply.status, (await reply.json())["error"]["code"]

        answers = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(40))), 20)
    assert {status for status, _ in answers} <= {503}
    assert "circuit_open" in {code for _, code in answers}
