"""The cache plugin end to end: through the gateway, with the official SDKs, a real redis-server."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.trace import SpanKind
from test_cache_units import TOOL_CHAT, TOOL_MESSAGE

from gateway import Exchange, hookimpl
from gateway.config import ConfigError, load
from gateway.errors import threat_detected
from gateway.testing import run_gateway, serve_app, write_config

from helpers_lifecycle import loopback_config, start_gateway

CHAT = [{"role": "user", "content": "What is a sidecar?"}]
MOCK = {"mock": {"type": "mock"}}


def cache_config(**options):
    entry = {"use": "cache", "config": options} if options else {"use": "cache"}
    return {"providers": MOCK, "plugins": [entry]}


def upstream_calls(gw) -> int:
    """CLIENT spans of upstream attempts (the cache's own Redis spans are CLIENT too, without GenAI attributes)."""
    return sum(
        1 for span in gw.spans() if span.kind == SpanKind.CLIENT and "gen_ai.operation.name" in (span.attributes or {})
    )


async def chat(client, content="What is a sidecar?", **kwargs):
    """One chat call; (x-gateway-cache, the answer's text, the raw response)."""
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": content}], **kwargs
    )
    return raw.headers.get("x-gateway-cache"), raw.parse().choices[0].message.content, raw


async def post(url, body: bytes | dict, headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url + "/v1/chat/completions", data=data, headers={"Content-Type": "application/json", **(headers or {})}
        ) as reply:
            return reply.status, reply.headers.get("x-gateway-cache"), await reply.read()


async def admin(gw, method, path):
    async with aiohttp.ClientSession() as session:
        async with session.request(method, gw.admin_url + path) as reply:
            return reply.status, await reply.json()


async def stored(url, count, within_s=20.0):
    """Wait until the gateway at admin ``url`` has stored ``count`` answers."""
    deadline = asyncio.get_running_loop().time() + within_s
    while (await cache_stats(url))["stores"] < count:
        assert asyncio.get_running_loop().time() < deadline, "the answer was never stored"
        await asyncio.sleep(0.02)


async def cache_stats(url):
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/stats") as reply:
            return (await reply.json())["plugins"]["cache"]


# -- the key -----------------------------------------------------------------------


async def test_second_identical_call_is_a_hit_that_never_reaches_the_upstream(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        client = gw.openai()
        first = await chat(client)
        second = await chat(client)
        assert first[0] == "miss" and second[0] == "hit"
        assert first[1] == second[1]
        assert upstream_calls(gw) == 1
        assert second[2].headers["Age"] == "0"
        assert "x-gateway-provider" not in second[2].headers


async def test_key_ignores_json_key_order_whitespace_user_stream_options_and_metadata(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        body = {
            "model": "gpt-4o-mini",
            "messages": CHAT,
            "temperature": 0.2,
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
            ],
        }
        assert (await post(gw.url, body))[1] == "miss"
        reordered = json.dumps(dict(reversed(list(body.items()))), indent=3).encode()
        assert (await post(gw.url, reordered))[1] == "hit"
        noisy = {**body, "user": "someone-else", "metadata": {"trace": "x"}, "stream_options": None}
        assert (await post(gw.url, noisy))[1] == "hit"
        assert upstream_calls(gw) == 1


async def test_a_different_message_parameter_or_model_is_a_miss(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        client = gw.openai()
        assert (await chat(client))[0] == "miss"
        assert (await chat(client, content="Something else"))[0] == "miss"
        assert (await chat(client, temperature=0.3))[0] == "miss"
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=CHAT)
        assert raw.headers["x-gateway-cache"] == "miss"
        assert upstream_calls(gw) == 4


async def test_scope_client_never_serves_one_callers_answer_to_another(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        alice = gw.openai(default_headers={"x-gateway-user": "alice"})
        bob = gw.openai(default_headers={"x-gateway-user": "bob"})
        assert (await chat(alice))[0] == "miss"
        assert (await chat(bob))[0] == "miss"
        assert (await chat(alice))[0] == "hit"
        assert upstream_calls(gw) == 2


async def test_a_repeated_body_is_keyed_anew_when_the_caller_or_a_key_header_differs(tmp_path):
    """The cache remembers its decision by body (a repeat skips decoding and hashing it):
    the caller, the headers that shape an answer and Cache-Control still count on every call."""
    body = json.dumps({"model": "gpt-4o-mini", "messages": CHAT}).encode()
    async with run_gateway(cache_config(), tmp_path) as gw:
        assert (await post(gw.url, body))[1] == "miss"
        assert (await post(gw.url, body))[1] == "hit"
        assert (await post(gw.url, body, {"anthropic-beta": "b1"}))[1] == "miss"
        assert (await post(gw.url, body, {"anthropic-beta": "b1"}))[1] == "hit"
        assert (await post(gw.url, body, {"x-gateway-user": "bob"}))[1] == "miss"
        assert (await post(gw.url, body, {"Cache-Control": "no-cache"}))[1] == "bypass"
        assert (await post(gw.url, body))[1] == "hit"
        assert upstream_calls(gw) == 4


async def test_scope_shared_lets_callers_share_answers(tmp_path):
    async with run_gateway(cache_config(scope="shared"), tmp_path) as gw:
        alice = gw.openai(default_headers={"x-gateway-user": "alice"})
        bob = gw.openai(default_headers={"x-gateway-user": "bob"})
        assert (await chat(alice))[0] == "miss"
        assert (await chat(bob))[0] == "hit"


async def test_a_temperature_above_the_bound_bypasses_the_cache(tmp_path):
    async with run_gateway(cache_config(max_temperature=0.5), tmp_path) as gw:
        client = gw.openai()
        assert (await chat(client, temperature=0.9))[0] == "bypass"
        assert (await chat(client, temperature=0.9))[0] == "bypass"
        assert (await chat(client, temperature=0.5))[0] == "miss"
        assert (await chat(client, temperature=0.5))[0] == "hit"
        assert upstream_calls(gw) == 3


# -- control -----------------------------------------------------------------------


async def test_cache_control_no_cache_skips_the_read_but_refreshes_the_entry(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        client = gw.openai()
        assert (await chat(client, extra_headers={"Cache-Control": "no-cache"}))[0] == "bypass"
        assert (await chat(client, extra_headers={"Cache-Control": "no-cache"}))[0] == "bypass"
        assert (await chat(client))[0] == "hit"
        assert upstream_calls(gw) == 2
        stats = await cache_stats(gw.admin_url)  # not looked up: bypasses, as docs/cache.md counts them
        assert (stats["bypasses"], stats["misses"], stats["hits"], stats["stores"]) == (2, 0, 1, 2)


async def test_cache_control_no_store_neither_reads_nor_writes(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        client = gw.openai()
        assert (await chat(client, extra_headers={"Cache-Control": "no-store"}))[0] == "bypass"
        assert (await chat(client))[0] == "miss"
        assert (await chat(client, extra_headers={"Cache-Control": "no-store"}))[0] == "bypass"
        assert upstream_calls(gw) == 3
        stats = await cache_stats(gw.admin_url)
        assert stats["bypasses"] == 2 and stats["misses"] == 1 and stats["stores"] == 1


async def test_cache_control_max_age_refuses_older_entries(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        client = gw.openai()
        assert (await chat(client))[0] == "miss"
        await asyncio.sleep(1.1)
        assert (await chat(client, extra_headers={"Cache-Control": "max-age=60"}))[0] == "hit"
        assert (await chat(client, extra_headers={"Cache-Control": "max-age=0"}))[0] == "miss"


async def test_every_answer_says_hit_miss_or_bypass_even_a_models_listing(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        raw = await gw.openai().models.with_raw_response.list()
        assert raw.headers["x-gateway-cache"] == "bypass"


# -- what is cached ----------------------------------------------------------------


async def test_upstream_errors_are_not_cached(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        status, cache, _ = await post(gw.url, {"model": "gpt-4o-mini", "messages": CHAT}, {"x-mock-error-rate": "1"})
        assert status == 500 and cache == "miss"
        status, cache, _ = await post(gw.url, {"model": "gpt-4o-mini", "messages": CHAT})
        assert status == 200 and cache == "miss"
        assert (await post(gw.url, {"model": "gpt-4o-mini", "messages": CHAT}))[1] == "hit"


async def test_a_stream_cut_by_the_upstream_is_not_cached(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        client = gw.openai()
        body = {"model": "gpt-4o-mini", "messages": CHAT, "stream": True}
        status, cache, text = await post(gw.url, body, {"x-mock-stream-cut-after": "2"})
        assert status == 200 and b"[DONE]" not in text
        assert (await chat(client))[0] == "miss"
        assert (await cache_stats(gw.admin_url))["stores"] == 1


async def test_a_stream_the_caller_abandons_is_not_cached(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        body = {"model": "gpt-4o-mini", "messages": CHAT, "stream": True}
        async with aiohttp.ClientSession() as session:
            async with session.post(
                gw.url + "/v1/chat/completions", json=body, headers={"x-mock-inter-token-ms": "50"}
            ) as reply:
                await reply.content.readany()
        for _ in range(100):
            if (await cache_stats(gw.admin_url))["in_flight"] == 0:
                break
            await asyncio.sleep(0.02)
        assert (await cache_stats(gw.admin_url))["stores"] == 0
        assert (await chat(gw.openai()))[0] == "miss"


async def test_entries_expire_after_ttl(tmp_path):
    async with run_gateway(cache_config(ttl_s=0.2), tmp_path) as gw:
        client = gw.openai()
        assert (await chat(client))[0] == "miss"
        assert (await chat(client))[0] == "hit"
        await asyncio.sleep(0.3)
        assert (await chat(client))[0] == "miss"


async def test_max_entries_evicts_the_least_recently_used(tmp_path):
    async with run_gateway(cache_config(max_entries=2), tmp_path) as gw:
        client = gw.openai()
        for content in ("one", "two"):
            assert (await chat(client, content=content))[0] == "miss"
        assert (await chat(client, content="one"))[0] == "hit"  # "two" is now the least recently used
        assert (await chat(client, content="three"))[0] == "miss"
        assert (await chat(client, content="one"))[0] == "hit"
        assert (await chat(client, content="two"))[0] == "miss"
        stats = await cache_stats(gw.admin_url)
        assert stats["evictions"] == 2 and stats["size"] == 2


async def test_max_memory_bytes_bounds_what_memory_holds(tmp_path):
    async with run_gateway(cache_config(max_memory_bytes=800), tmp_path) as gw:
        client = gw.openai()
        for content in ("one", "two", "three", "four"):
            assert (await chat(client, content=content))[0] == "miss"
        stats = await cache_stats(gw.admin_url)
        assert 0 < stats["bytes"] <= 800 and stats["evictions"] == 4 - stats["size"]
        assert (await chat(client, content="four"))[0] == "hit"


async def test_an_answer_over_max_entry_bytes_is_served_but_not_stored(tmp_path):
    async with run_gateway(cache_config(max_entry_bytes=100), tmp_path) as gw:
        client = gw.openai()
        assert (await chat(client))[0] == "miss"
        assert (await chat(client))[0] == "miss"
        assert (await cache_stats(gw.admin_url))["too_large"] == 2


async def test_embeddings_are_cached(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        client = gw.openai()
        first = await client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["a", "b"])
        second = await client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["a", "b"])
        assert first.headers["x-gateway-cache"] == "miss" and second.headers["x-gateway-cache"] == "hit"
        assert first.parse().data[1].embedding == second.parse().data[1].embedding


# -- streams -----------------------------------------------------------------------


async def openai_stream_text(client, **kwargs):
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=CHAT, stream=True, **kwargs
    )
    chunks = [chunk async for chunk in raw.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return raw.headers["x-gateway-cache"], text, chunks


async def test_openai_stream_is_replayed_to_stream_and_json_callers(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        client = gw.openai()
        cache, streamed, _ = await openai_stream_text(client)
        assert cache == "miss" and streamed.startswith("Mock reply to: What is a sidecar?")
        cache, replayed, chunks = await openai_stream_text(client)
        assert cache == "hit" and replayed == streamed
        assert chunks[-1].choices[0].finish_reason == "stop"
        cache, text, raw = await chat(client)
        assert cache == "hit" and text == streamed
        reply = raw.parse()
        assert reply.object == "chat.completion" and reply.choices[0].finish_reason == "stop"
        assert upstream_calls(gw) == 1


async def test_a_stream_stored_without_the_caller_asking_for_usage_still_gives_usage_later(tmp_path):
    # The rebuilt JSON answer carries usage (as a buffered OpenAI answer always does), and a later
    # caller that asks for the usage chunk gets it; the first caller, which did not ask, gets none.
    async with run_gateway(cache_config(), tmp_path) as gw:
        client = gw.openai()
        cache, streamed, first_chunks = await openai_stream_text(client)
        assert cache == "miss" and all(chunk.choices for chunk in first_chunks)
        cache, text, raw = await chat(client)
        usage = raw.parse().usage
        assert cache == "hit" and text == streamed and usage is not None and usage.total_tokens > 0
        cache, replayed, chunks = await openai_stream_text(client, stream_options={"include_usage": True})
        assert cache == "hit" and replayed == streamed and chunks[-1].usage == usage
        cache, _, chunks = await openai_stream_text(client)
        assert cache == "hit" and all(chunk.choices for chunk in chunks)
        assert upstream_calls(gw) == 1


async def test_openai_json_answer_is_served_as_a_stream_with_usage_when_asked(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        client = gw.openai()
        _, text, raw = await chat(client)
        cache, streamed, chunks = await openai_stream_text(client, stream_options={"include_usage": True})
        assert cache == "hit" and streamed == text
        assert chunks[-1].usage.total_tokens == raw.parse().usage.total_tokens
        cache, _, chunks = await openai_stream_text(client)
        assert cache == "hit" and all(chunk.choices for chunk in chunks)
        assert upstream_calls(gw) == 1


async def test_a_stored_usage_chunk_reaches_only_callers_that_ask_for_it(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        client = gw.openai()
        await openai_stream_text(client, stream_options={"include_usage": True})
        cache, _, chunks = await openai_stream_text(client)
        assert cache == "hit" and all(chunk.choices for chunk in chunks)
        _, _, chunks = await openai_stream_text(client, stream_options={"include_usage": True})
        assert chunks[-1].usage is not None


async def test_anthropic_stream_is_replayed_to_stream_and_json_callers(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        client = gw.anthropic()
        request = {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": CHAT}
        async with client.messages.stream(**request) as stream:
            first = await stream.get_final_message()
        async with client.messages.stream(**request) as stream:
            replayed = await stream.get_final_message()
            assert stream.response.headers["x-gateway-cache"] == "hit"
        assert replayed.content[0].text == first.content[0].text
        assert replayed.stop_reason == "end_turn" and replayed.usage.output_tokens == first.usage.output_tokens
        raw = await client.messages.with_raw_response.create(**request)
        message = await raw.parse()
        assert raw.headers["x-gateway-cache"] == "hit"
        assert message.content[0].text == first.content[0].text and message.stop_reason == "end_turn"
        assert message.usage.input_tokens == first.usage.input_tokens
        assert upstream_calls(gw) == 1
        (client_span,) = [s for s in gw.spans() if "gen_ai.operation.name" in (s.attributes or {})]
        assert client_span.attributes["gen_ai.usage.output_tokens"] == first.usage.output_tokens


async def test_anthropic_json_answer_is_served_as_a_stream(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        client = gw.anthropic()
        request = {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": CHAT}
        first = await client.messages.create(**request)
        async with client.messages.stream(**request) as stream:
            texts = [text async for text in stream.text_stream]
            replayed = await stream.get_final_message()
            assert stream.response.headers["x-gateway-cache"] == "hit"
        assert "".join(texts) == first.content[0].text
        assert replayed.usage.output_tokens == first.usage.output_tokens
        assert upstream_calls(gw) == 1


async def test_responses_api_keeps_streamed_and_buffered_answers_apart(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        client = gw.openai()
        first = await client.responses.with_raw_response.create(model="gpt-4o-mini", input="hello")
        second = await client.responses.with_raw_response.create(model="gpt-4o-mini", input="hello")
        assert first.headers["x-gateway-cache"] == "miss" and second.headers["x-gateway-cache"] == "hit"
        streamed = await client.responses.with_raw_response.create(model="gpt-4o-mini", input="hello", stream=True)
        assert streamed.headers["x-gateway-cache"] == "miss"
        events = [event async for event in streamed.parse()]
        assert events[-1].type == "response.completed"
        again = await client.responses.with_raw_response.create(model="gpt-4o-mini", input="hello", stream=True)
        assert again.headers["x-gateway-cache"] == "hit"
        assert [event.type async for event in again.parse()][-1] == "response.completed"


async def test_tool_calls_and_thinking_survive_json_to_stream_for_both_sdks(tmp_path):
    calls = []

    async def answer(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.json_response(TOOL_MESSAGE if request.path.endswith("/messages") else TOOL_CHAT)

    app = web.Application()
    app.router.add_post("/{path:.*}", answer)
    async with serve_app(app) as upstream:
        providers = {
            "oai": {"type": "openai", "base_url": upstream, "api_key": "sk-up"},
            "ant": {"type": "anthropic", "base_url": upstream, "api_key": "sk-up"},
        }
        async with run_gateway({"providers": providers, "plugins": [{"use": "cache"}]}, tmp_path) as gw:
            client = gw.openai()
            request = {"model": "gpt-4o-mini", "messages": CHAT}
            await client.chat.completions.create(**request)
            async with client.beta.chat.completions.stream(**request) as stream:
                final = await stream.get_final_completion()
            tool_calls = final.choices[0].message.tool_calls
            assert [(c.id, c.function.name, c.function.arguments) for c in tool_calls] == [
                ("call_1", "weather", '{"city":"Oslo"}'),
                ("call_2", "time", "{}"),
            ]
            anthropic = gw.anthropic()
            request = {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": CHAT}
            await anthropic.messages.create(**request)
            async with anthropic.messages.stream(**request) as stream:
                message = await stream.get_final_message()
                assert stream.response.headers["x-gateway-cache"] == "hit"
            assert message.model_dump(exclude_none=True)["content"] == TOOL_MESSAGE["content"]
            assert message.stop_reason == "tool_use"
    assert len(calls) == 2


# -- single-flight -----------------------------------------------------------------


async def test_twenty_concurrent_identical_requests_make_one_upstream_call(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        client = gw.openai(default_headers={"x-mock-latency-ms": "300"})
        answers = await asyncio.gather(*(chat(client) for _ in range(20)))
        assert upstream_calls(gw) == 1
        assert sorted(cache for cache, _, _ in answers) == ["hit"] * 19 + ["miss"]
        assert len({text for _, text, _ in answers}) == 1
        stats = await cache_stats(gw.admin_url)
        assert stats["coalesced"] == 19 and stats["misses"] == 1


async def test_a_follower_counts_its_wait_for_the_identical_call_as_upstream_time(tmp_path):
    """SPEC: Server-Timing is the gateway's own time and the upstream's; a caller that
    waited for the identical call in flight waited for the upstream (it said 0.000)."""
    async with run_gateway(cache_config(), tmp_path) as gw:
        client = gw.openai(default_headers={"x-mock-latency-ms": "300"})
        answers = await asyncio.gather(*(chat(client) for _ in range(5)))
        assert (await cache_stats(gw.admin_url))["coalesced"] == 4
    for cache, _, raw in answers:
        timing = dict(part.strip().split(";dur=") for part in raw.headers["Server-Timing"].split(","))
        assert float(timing["upstream"]) > 0, cache


async def test_concurrent_stream_and_json_callers_share_one_streamed_call(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        client = gw.openai(default_headers={"x-mock-inter-token-ms": "20"})
        results = await asyncio.gather(openai_stream_text(client), openai_stream_text(client), chat(client))
        assert upstream_calls(gw) == 1
        assert results[0][1] == results[1][1] == results[2][1]


async def test_a_follower_that_did_not_ask_for_usage_gets_no_usage_chunk_from_its_leader(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        client = gw.openai(default_headers={"x-mock-inter-token-ms": "20"})
        (_, leader_text, leader_chunks), (cache, text, chunks) = await asyncio.gather(
            openai_stream_text(client, stream_options={"include_usage": True}), openai_stream_text(client)
        )
        assert upstream_calls(gw) == 1 and cache == "hit" and text == leader_text
        assert leader_chunks[-1].usage is not None and all(chunk.choices for chunk in chunks)


async def test_followers_of_a_streamed_leader_get_events_as_they_arrive(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        client = gw.openai(default_headers={"x-mock-inter-token-ms": "60"})
        leader_done = asyncio.Event()
        follower_first_content_before_leader_done = asyncio.Event()

        async def leader():
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=CHAT, stream=True
            )
            async for _ in raw.parse():
                pass
            leader_done.set()

        async def follower():
            await asyncio.sleep(0.1)  # the leader is streaming by now
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=CHAT, stream=True
            )
            assert raw.headers["x-gateway-cache"] == "hit" and raw.headers["Age"] == "0"
            async for chunk in raw.parse():
                if chunk.choices and chunk.choices[0].delta.content and not leader_done.is_set():
                    follower_first_content_before_leader_done.set()

        await asyncio.gather(leader(), follower())
        assert follower_first_content_before_leader_done.is_set()
        assert upstream_calls(gw) == 1


async def test_when_a_streamed_leaders_caller_leaves_its_followers_still_get_the_whole_answer(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        body = {"model": "gpt-4o-mini", "messages": CHAT, "stream": True}
        slow = {"x-mock-inter-token-ms": "40"}

        async def leader_who_leaves():
            async with aiohttp.ClientSession() as session:
                async with session.post(gw.url + "/v1/chat/completions", json=body, headers=slow) as reply:
                    await reply.content.readany()
                    flights = gw.gateway.chain.plugins[0].instance.flights
                    for _ in range(250):  # leave once the follower has attached
                        if any(flight.followers > 1 for flight in flights.values()):  # the leader reads too
                            break
                        await asyncio.sleep(0.02)

        async def follower():
            await asyncio.sleep(0.05)
            return await openai_stream_text(gw.openai(default_headers=slow))

        _, (cache, text, chunks) = await asyncio.gather(leader_who_leaves(), follower())
        assert cache == "hit" and text.startswith("Mock reply to: What is a sidecar?")
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert (await chat(gw.openai()))[0] == "hit"  # stored once the followers had it
        assert upstream_calls(gw) == 1


async def test_followers_call_the_upstream_themselves_when_the_leader_fails(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        body = {"model": "gpt-4o-mini", "messages": CHAT}
        failing = post(gw.url, body, {"x-mock-latency-ms": "200", "x-mock-error-rate": "1"})

        async def follower():
            await asyncio.sleep(0.05)
            return await post(gw.url, body)

        (lead_status, _, _), (status, cache, _) = await asyncio.gather(failing, follower())
        assert lead_status == 500 and status == 200 and cache == "miss"
        assert upstream_calls(gw) == 2


async def test_a_follower_waits_at_most_follow_timeout_then_calls_itself(tmp_path):
    async with run_gateway(cache_config(follow_timeout_s=0.05), tmp_path) as gw:
        client = gw.openai(default_headers={"x-mock-latency-ms": "400"})
        answers = await asyncio.gather(chat(client), chat(client))
        assert upstream_calls(gw) == 2
        assert [cache for cache, _, _ in answers] == ["miss", "miss"]


# -- admin, figures, interplay ---------------------------------------------------------


async def test_admin_delete_cache_empties_all_or_by_provider_or_model(tmp_path):
    config = {"providers": {"mock": {"type": "mock"}, "other": {"type": "mock"}}, "plugins": [{"use": "cache"}]}
    config["routes"] = [{"model": "gpt-4o", "provider": "other"}, {"prefix": "/", "provider": "mock"}]
    async with run_gateway(config, tmp_path) as gw:
        client = gw.openai()
        await chat(client)
        await chat(client, content="two")
        await client.chat.completions.create(model="gpt-4o", messages=CHAT)
        assert (await admin(gw, "DELETE", "/cache?provider=other")) == (
            200,
            {"deleted": 1, "provider": "other", "model": None},
        )
        assert (await admin(gw, "DELETE", "/cache?model=gpt-4o")) == (
            200,
            {"deleted": 0, "provider": None, "model": "gpt-4o"},
        )
        status, body = await admin(gw, "DELETE", "/cache?model=gpt-4o-mini&provider=mock")
        assert body["deleted"] == 2
        assert (await chat(client))[0] == "miss"
        await chat(client, content="two")
        assert (await admin(gw, "DELETE", "/cache"))[1]["deleted"] == 2
        status, described = await admin(gw, "GET", "/cache")
        assert status == 200 and described["options"]["scope"] == "client" and described["stats"]["size"] == 0


async def test_hits_misses_bypasses_and_hit_rate_in_stats_and_metrics(tmp_path):
    async with run_gateway(cache_config(), tmp_path) as gw:
        client = gw.openai()
        await chat(client)
        await chat(client)
        await chat(client)
        await chat(client, extra_headers={"Cache-Control": "no-store"})
        stats = await cache_stats(gw.admin_url)
        assert (stats["hits"], stats["misses"], stats["bypasses"], stats["size"]) == (2, 1, 1, 1)
        assert stats["hit_rate"] == pytest.approx(2 / 3, abs=1e-3)
        async with aiohttp.ClientSession() as session:
            metrics = await (await session.get(gw.admin_url + "/metrics")).text()
        assert "gateway_cache_hits 2.0" in metrics
        assert "gateway_cache_hit_rate " in metrics


class FastAlias:
    """docs/plugins.md's alias: "fast" means gpt-4o-mini (the tests place it after or before the cache)."""

    @hookimpl
    async def request(self, exchange: Exchange) -> None:
        if exchange.model == "fast":
            exchange.model = "gpt-4o-mini"


async def test_a_model_changed_after_the_cache_request_hook_is_cached_under_the_model_sent(tmp_path):
    plugins = [{"use": "cache"}, {"use": "test_cache:FastAlias"}]
    async with run_gateway({"providers": MOCK, "plugins": plugins}, tmp_path) as gw:
        client = gw.openai()
        first = await client.chat.completions.with_raw_response.create(model="fast", messages=CHAT)
        second = await client.chat.completions.with_raw_response.create(model="fast", messages=CHAT)
        direct = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=CHAT)
    assert [raw.headers["x-gateway-cache"] for raw in (first, second, direct)] == ["miss", "hit", "hit"]
    assert second.parse().model == "gpt-4o-mini" and second.headers["x-gateway-model"] == "gpt-4o-mini"
    assert upstream_calls(gw) == 1


async def test_an_alias_before_the_cache_keys_the_entry_under_the_provider_that_answers(tmp_path):
    """The key's provider segment is the provider the call goes to, so ``DELETE /cache?provider=``
    finds the entry there (it was filed under the provider the alias name would have taken)."""
    config = {
        "providers": {"mock": {"type": "mock"}, "mini": {"type": "mock"}},
        "routes": [{"model": "gpt-4o-mini", "provider": "mini"}, {"prefix": "/v1/", "provider": "mock"}],
        "plugins": [{"use": "test_cache:FastAlias"}, {"use": "cache"}],
    }
    async with run_gateway(config, tmp_path) as gw:
        client = gw.openai()
        first = await client.chat.completions.with_raw_response.create(model="fast", messages=CHAT)
        second = await client.chat.completions.with_raw_response.create(model="fast", messages=CHAT)
        async with aiohttp.ClientSession() as session:
            elsewhere = await (await session.delete(gw.admin_url + "/cache?provider=mock")).json()
            there = await (await session.delete(gw.admin_url + "/cache?provider=mini")).json()
    assert [raw.headers["x-gateway-cache"] for raw in (first, second)] == ["miss", "hit"]
    assert first.headers["x-gateway-provider"] == "mini"
    assert (elsewhere["deleted"], there["deleted"]) == (0, 1)


class CacheStatusRecorder:
    """A plugin after the cache in the chain: what cost and ratelimit would read."""

    seen: list[tuple[str | None, str | None]] = []

    @hookimpl
    async def request(self, exchange: Exchange) -> None:
        return None

    @hookimpl
    async def complete(self, exchange: Exchange) -> None:
        usage = exchange.usage
        CacheStatusRecorder.seen.append((exchange.cache_status, usage and usage.output_tokens))


class BlockFlaggedAnswers:
    """Like scan with scan_responses: blocks an answer when the request says so."""

    @hookimpl
    async def response(self, exchange: Exchange, response):
        if exchange.headers.get("x-test-block"):
            raise threat_detected("blocked by the test scanner")


async def test_an_answer_blocked_by_a_response_scanner_is_not_stored(tmp_path):
    config = {"providers": MOCK, "plugins": [{"use": "test_cache:BlockFlaggedAnswers"}, {"use": "cache"}]}
    async with run_gateway(config, tmp_path) as gw:
        status, cache, _ = await post(gw.url, {"model": "gpt-4o-mini", "messages": CHAT}, {"x-test-block": "1"})
        assert (status, cache) == (400, "miss")
        assert (await post(gw.url, {"model": "gpt-4o-mini", "messages": CHAT}))[1] == "miss"
        assert (await post(gw.url, {"model": "gpt-4o-mini", "messages": CHAT}))[1] == "hit"


async def test_a_hit_runs_every_plugins_hooks_and_says_hit_on_the_exchange(tmp_path):
    CacheStatusRecorder.seen = []
    config = {"providers": MOCK, "plugins": [{"use": "cache"}, {"use": "test_cache:CacheStatusRecorder"}]}
    async with run_gateway(config, tmp_path) as gw:
        client = gw.openai()
        await chat(client)
        await chat(client)
        await chat(client, extra_headers={"Cache-Control": "no-store"})
    assert [status for status, _ in CacheStatusRecorder.seen] == ["miss", "hit", "bypass"]


async def test_the_demo_config_answers_the_second_identical_call_from_the_cache(tmp_path):
    demo = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"
    async with run_gateway(demo) as gw:
        client = gw.openai()
        assert (await chat(client))[0] == "miss"
        assert (await chat(client))[0] == "hit"


def test_bad_options_are_startup_errors_naming_the_key(tmp_path):
    from gateway.app import Gateway

    for options, pattern in (
        ({"backend": "memcached://x"}, r"plugins\[0\]\.config\.backend: .*redis://"),
        ({"scope": "everyone"}, r"plugins\[0\].*scope"),
        ({"ttl_s": 0}, r"plugins\[0\].*ttl_s"),
    ):
        path = write_config(cache_config(**options), tmp_path)
        with pytest.raises(ConfigError, match=pattern):
            Gateway(load(str(path)))


# -- Redis ---------------------------------------------------------------------------


async def test_two_gateway_processes_share_the_cache_through_redis(tmp_path, redis_server):
    config = loopback_config(
        plugins=[{"use": "cache", "config": {"backend": redis_server.url, "scope": "shared", "backend_timeout_s": 5}}]
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with start_gateway(config, tmp_path / "a") as one, start_gateway(config, tmp_path / "b") as two:
        body = {"model": "gpt-4o-mini", "messages": CHAT}
        status, cache, first = await post(one.url, body)
        assert (status, cache) == (200, "miss")
        await stored(one.admin_url, 1)  # the store runs after the answer is sent
        status, cache, second = await post(two.url, body)
        assert (status, cache) == (200, "hit") and json.loads(second) == json.loads(first)
        stream = {**body, "stream": True}
        status, cache, _ = await post(two.url, stream)
        assert cache == "hit"
        assert (await cache_stats(two.admin_url))["size"] == 1
        async with aiohttp.ClientSession() as session:
            async with session.delete(one.admin_url + "/cache") as reply:
                assert (await reply.json())["deleted"] == 1
        assert (await post(two.url, body))[1] == "miss"


async def test_redis_outage_degrades_to_misses_with_a_log_line_and_a_count(tmp_path, redis_server, caplog):
    config = cache_config(backend=redis_server.url, backend_timeout_s=2)  # a loaded CI machine is slow, not down
    async with run_gateway(config, tmp_path) as gw:
        client = gw.openai()
        assert (await chat(client))[0] == "miss"
        assert (await chat(client))[0] == "hit"
        redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="gateway.plugins.cache"):
            for _ in range(3):
                cache, text, raw = await chat(client)
                assert cache == "miss" and raw.http_response.status_code == 200 and text
        lines = [r for r in caplog.records if "cache backend unreachable" in r.getMessage()]
        assert len(lines) == 1
        stats = await cache_stats(gw.admin_url)
        assert stats["backend_errors"] >= 1 and "size" not in stats
        redis_server.start()
        await asyncio.sleep(1.1)  # the pause after an error
        assert (await chat(client))[0] == "miss"
        assert (await chat(client))[0] == "hit"


async def test_a_redis_down_at_startup_means_misses_not_errors(tmp_path, redis_server):
    redis_server.stop()
    async with run_gateway(cache_config(backend=redis_server.url), tmp_path) as gw:
        client = gw.openai()
        assert (await chat(client))[0] == "miss"
        assert (await chat(client))[0] == "miss"
        assert (await cache_stats(gw.admin_url))["backend_errors"] >= 1


async def test_redis_calls_are_spans_with_db_system(tmp_path, redis_server):
    async with run_gateway(cache_config(backend=redis_server.url, backend_timeout_s=2), tmp_path) as gw:
        client = gw.openai()
        await chat(client)
        await chat(client)
        spans = [span for span in gw.spans() if "db.system" in (span.attributes or {})]
        assert {span.name for span in spans} == {"cache GET", "cache SET"}
        assert all(span.attributes["db.system"] == "redis" and span.kind == SpanKind.CLIENT for span in spans)
        send_spans = {span.context.span_id for span in gw.spans_named("cache send")}
        assert [span.attributes["gateway.cache.status"] for span in gw.spans_named("cache send")] == ["miss", "hit"]
        assert all(span.parent.span_id in send_spans for span in spans if span.name == "cache GET")


async def test_redis_max_entries_evicts_the_oldest(tmp_path, redis_server):
    async with run_gateway(cache_config(backend=redis_server.url, max_entries=2, backend_timeout_s=2), tmp_path) as gw:
        client = gw.openai()
        for content in ("one", "two", "three"):
            assert (await chat(client, content=content))[0] == "miss"
        assert (await chat(client, content="one"))[0] == "miss"
        stats = await cache_stats(gw.admin_url)
        assert stats["evictions"] == 2 and stats["size"] == 2
