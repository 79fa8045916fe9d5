"""The cost plugin end to end: through the gateway, with the official SDKs."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from aiohttp import web

from gateway import Exchange, Response, hookimpl
from gateway.testing import RunningGateway, run_gateway, serve_app

HELLO = [{"role": "user", "content": "hello there"}]
# The mock answers "hello there" with 15 words: 2 input and 15 output tokens.
GPT_4O_MINI_HELLO = Decimal(2) * Decimal("0.15") / 10**6 + Decimal(15) * Decimal("0.60") / 10**6  # $0.0000093


def cost_config(tmp_path: Path, providers: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    options.setdefault("store", str(tmp_path / "usage.db"))
    options.setdefault("flush_interval_s", 0.05)
    return {
        "providers": providers or {"mock": {"type": "mock"}},
        "plugins": [{"use": "cost", "config": options}],
    }


def plugin(gw: RunningGateway, name: str = "cost") -> Any:
    return next(p.instance for p in gw.gateway.chain.plugins if p.label == name)


async def ledger_rows(gw: RunningGateway, name: str = "cost", *, at_least: int = 0) -> list[dict[str, Any]]:
    """The ledger, flushed; ``at_least`` waits for records of exchanges still completing."""
    cost = plugin(gw, name)
    for _ in range(750):  # the caller may have its answer before ``complete`` ran (15 s on a loaded machine)
        if cost.records >= at_least and not gw.gateway.proxy.in_flight and not gw.gateway.background:
            break
        await asyncio.sleep(0.02)
    assert await asyncio.to_thread(cost.ledger.flush)
    connection = sqlite3.connect(cost.ledger_path)
    connection.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in connection.execute("SELECT * FROM usage ORDER BY id")]
    finally:
        connection.close()


async def admin_get(gw: RunningGateway, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(gw.admin_url + path) as reply:
        text = await reply.text()
        return reply.status, json.loads(text) if reply.content_type == "application/json" else text


# -- usage and prices -------------------------------------------------------------------


async def test_a_buffered_answer_carries_its_exact_cost_and_becomes_a_ledger_record(tmp_path):
    async with run_gateway(cost_config(tmp_path), tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=HELLO, extra_headers={"x-request-id": "req-1"}
        )
        rows = await ledger_rows(gw)
    assert Decimal(raw.headers["x-gateway-cost-usd"]) == GPT_4O_MINI_HELLO
    (row,) = rows
    assert row["request_id"] == "req-1"
    assert row["client"] == "127.0.0.1"
    assert (row["provider"], row["model"], row["path"], row["status"]) == ("mock", "gpt-4o-mini", "/v1/chat/completions", 200)
    assert (row["input_tokens"], row["output_tokens"], row["estimated"], row["cache_hit"]) == (2, 15, 0, 0)
    assert Decimal(row["cost_picousd"]) / 10**12 == GPT_4O_MINI_HELLO


async def test_anthropic_embeddings_and_responses_answers_are_priced(tmp_path):
    async with run_gateway(cost_config(tmp_path), tmp_path) as gw:
        message = await gw.anthropic().messages.with_raw_response.create(
            model="claude-haiku-4-5-20251001", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        embedding = await gw.openai().embeddings.with_raw_response.create(
            model="text-embedding-3-small", input=["one two three", "four"]
        )
        response = await gw.openai().responses.with_raw_response.create(model="gpt-4o", input="hello there")
        rows = await ledger_rows(gw)
    # Haiku 4.5 ($1 in, $5 out): 1 input word and 14 output words
    assert Decimal(message.headers["x-gateway-cost-usd"]) == (1 * 1 + 14 * 5) / Decimal(10**6)
    assert Decimal(embedding.headers["x-gateway-cost-usd"]) == 4 * Decimal("0.02") / 10**6
    assert Decimal(response.headers["x-gateway-cost-usd"]) == (Decimal(2) * Decimal("2.5") + 15 * 10) / 10**6
    assert [row["model"] for row in rows] == ["claude-haiku-4-5-20251001", "text-embedding-3-small", "gpt-4o"]
    assert [(row["input_tokens"], row["output_tokens"]) for row in rows] == [(1, 14), (4, 0), (2, 15)]


async def test_a_streamed_chat_gets_its_usage_without_the_caller_seeing_the_extra_chunk(tmp_path):
    async with run_gateway(cost_config(tmp_path), tmp_path) as gw:
        stream = await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True)
        chunks = [chunk async for chunk in stream]
        rows = await ledger_rows(gw)
        stats = plugin(gw).stats()
    assert chunks and all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)  # the usage-only chunk (choices: []) is hidden
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks).startswith("Mock reply to: hello there")
    (row,) = rows
    assert (row["input_tokens"], row["output_tokens"], row["estimated"], row["stream"]) == (2, 15, 0, 1)
    assert Decimal(row["cost_picousd"]) / 10**12 == GPT_4O_MINI_HELLO
    assert stats["usage_chunks_hidden"] == 1


async def test_a_caller_that_asked_for_stream_usage_still_gets_its_usage_chunk(tmp_path):
    async with run_gateway(cost_config(tmp_path), tmp_path) as gw:
        stream = await gw.openai().chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (2, 15)


async def test_an_anthropic_stream_is_priced_from_message_start_and_message_delta(tmp_path):
    async with run_gateway(cost_config(tmp_path), tmp_path) as gw:
        async with gw.anthropic().messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=HELLO) as stream:
            await stream.get_final_message()
        rows = await ledger_rows(gw)
        server = gw.spans_named("POST /v1/messages")
        hook = gw.spans_named("cost complete")
    (row,) = rows
    assert (row["input_tokens"], row["output_tokens"], row["estimated"]) == (2, 15, 0)
    assert Decimal(row["cost_picousd"]) == (2 * 3 + 15 * 15) * 10**6
    assert server[0].attributes["gateway.cost_usd"] == pytest.approx(0.000231)
    assert hook[0].attributes["gateway.cost_usd"] == pytest.approx(0.000231)
    assert hook[0].attributes["gen_ai.usage.output_tokens"] == 15


async def test_a_cut_stream_is_recorded_with_the_tokens_streamed_so_far_marked_estimated(tmp_path):
    async with run_gateway(cost_config(tmp_path), tmp_path) as gw:
        with pytest.raises(openai.APIError):
            stream = await gw.openai().chat.completions.create(
                model="gpt-4o-mini", messages=HELLO, stream=True, extra_headers={"x-mock-stream-cut-after": "5"}
            )
            async for _ in stream:
                pass
        rows = await ledger_rows(gw, at_least=1)
    (row,) = rows
    assert row["status"] == 502 and row["error"] == "upstream_error"
    assert row["estimated"] == 1
    assert row["input_tokens"] >= 2
    assert 5 <= row["output_tokens"] <= 8  # "Mock reply to: hello there" in cl100k tokens
    assert row["cost_picousd"] > 0


async def test_an_anthropic_stream_cut_after_message_start_keeps_its_reported_input(tmp_path):
    async with run_gateway(cost_config(tmp_path), tmp_path) as gw:
        with pytest.raises(anthropic.APIError):
            async with gw.anthropic().messages.stream(
                model="claude-haiku-4-5",
                max_tokens=100,
                messages=[{"role": "user", "content": "one two three four five six"}],
                extra_headers={"x-mock-stream-cut-after": "3"},
            ) as stream:
                await stream.get_final_message()
        rows = await ledger_rows(gw, at_least=1)
    (row,) = rows
    assert row["input_tokens"] == 6  # from message_start, as reported
    assert row["estimated"] == 1 and 3 <= row["output_tokens"] <= 6


# -- a provider with prompt caching, reasoning, or no usage at all ------------------------


def fake_provider_app() -> web.Application:
    """An upstream that reports cache and reasoning tokens, or leaves usage out."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        kind = request.headers.get("x-fake", "")
        message = {"role": "assistant", "content": "The answer is forty two."}
        document: dict[str, Any] = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }
        if kind == "cached":
            document["usage"] = {
                "prompt_tokens": 2000,
                "completion_tokens": 500,
                "total_tokens": 2500,
                "prompt_tokens_details": {"cached_tokens": 1536},
                "completion_tokens_details": {"reasoning_tokens": 448},
            }
        elif kind == "malformed":
            document["usage"] = {"prompt_tokens": "lots", "completion_tokens": None}
        elif kind == "absurd":  # over SQLite's 2**63 - 1, and below zero
            document["usage"] = {"prompt_tokens": 2**64 - 1, "completion_tokens": -5, "total_tokens": 2**64 - 6}
        if body.get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for word in ["The", " answer", " is", " forty", " two."]:
                chunk = {**document, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": word}}]}
                chunk.pop("usage", None)
                await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            return response
        return web.json_response(document)

    async def messages(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": [{"type": "text", "text": "Cached."}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 20,
                    "cache_creation_input_tokens": 1000,
                    "cache_read_input_tokens": 4000,
                    "output_tokens": 10,
                },
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/messages", messages)
    return app


@pytest.fixture
async def fake_provider():
    async with serve_app(fake_provider_app()) as url:
        yield {"openai": {"type": "openai", "base_url": url, "api_key": "sk-test"}, "claude": {"type": "anthropic", "base_url": url, "api_key": "sk-ant"}}


async def test_cached_input_and_reasoning_tokens_are_billed_at_their_own_rates(tmp_path, fake_provider):
    async with run_gateway(cost_config(tmp_path, fake_provider), tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(
            model="gpt-4.1", messages=HELLO, extra_headers={"x-fake": "cached"}
        )
        rows = await ledger_rows(gw)
    # gpt-4.1: $2 input, $0.50 cached input, $8 output (reasoning is output)
    expected = (Decimal(464) * 2 + Decimal(1536) * Decimal("0.5") + Decimal(500) * 8) / 10**6
    assert Decimal(raw.headers["x-gateway-cost-usd"]) == expected
    (row,) = rows
    assert (row["input_tokens"], row["cached_input_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (2000, 1536, 500, 448)


async def test_anthropic_cache_reads_and_writes_are_billed_at_their_own_rates(tmp_path, fake_provider):
    async with run_gateway(cost_config(tmp_path, fake_provider), tmp_path) as gw:
        raw = await gw.anthropic().messages.with_raw_response.create(
            model="claude-sonnet-4-5-20250929", max_tokens=10, messages=HELLO
        )
        rows = await ledger_rows(gw)
    expected = (Decimal(20) * 3 + Decimal(4000) * Decimal("0.3") + Decimal(1000) * Decimal("3.75") + Decimal(10) * 15) / 10**6
    assert Decimal(raw.headers["x-gateway-cost-usd"]) == expected
    (row,) = rows
    assert (row["input_tokens"], row["cached_input_tokens"], row["cache_write_tokens"]) == (5020, 4000, 1000)


@pytest.mark.parametrize("kind", ["missing", "malformed", "absurd"])
async def test_an_answer_without_usable_usage_is_estimated_offline_and_flagged(tmp_path, fake_provider, kind):
    async with run_gateway(cost_config(tmp_path, fake_provider), tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, extra_headers={"x-fake": kind}
        )
        stream = await gw.openai().chat.completions.create(
            model="gpt-4o", messages=HELLO, stream=True, extra_headers={"x-fake": kind}
        )
        text = "".join([chunk.choices[0].delta.content async for chunk in stream if chunk.choices])
        rows = await ledger_rows(gw)
        stats = plugin(gw).stats()
    assert raw.parse().choices[0].message.content == "The answer is forty two."
    assert text == "The answer is forty two."
    assert Decimal(raw.headers["x-gateway-cost-usd"]) > 0
    for row in rows:
        assert row["estimated"] == 1
        assert row["output_tokens"] == 6  # "The answer is forty two." in cl100k
        assert row["input_tokens"] >= 2
        assert row["cost_picousd"] > 0
    assert stats["usage_missing"] == 2 and stats["estimated"] == 2


async def test_absurd_usage_figures_never_stop_the_ledger_and_later_calls_are_recorded(tmp_path, fake_provider):
    # Before: a provider's prompt_tokens of 2**64 - 1 stopped the ledger's writer thread
    # (OverflowError), so that call and every later one were lost from /usage for good.
    async with run_gateway(cost_config(tmp_path, fake_provider), tmp_path) as gw:
        client = gw.openai()
        await client.chat.completions.create(model="gpt-4o", messages=HELLO, extra_headers={"x-fake": "absurd"})
        await client.chat.completions.create(model="gpt-4o", messages=HELLO, extra_headers={"x-fake": "cached"})
        rows = await ledger_rows(gw, at_least=2)
        _, usage = await admin_get(gw, "/usage?days=1")
    assert len(rows) == 2
    assert all(row[name] >= 0 for row in rows for name in ("input_tokens", "output_tokens", "cost_picousd"))
    assert (rows[1]["input_tokens"], rows[1]["output_tokens"]) == (2000, 500)
    assert usage["totals"]["requests"] == 2


class HugeUsage:
    """A plugin after cost that reports a figure SQLite cannot store (2**63 + 1)."""

    @hookimpl
    async def response(self, exchange: Exchange, response: Response) -> None:
        if "x-huge" in exchange.headers:
            exchange.add_usage(2**63 + 1, 1)


async def test_a_record_the_ledger_cannot_store_is_lost_alone_and_counted(tmp_path):
    config = cost_config(tmp_path)
    config["plugins"].append({"use": "test_cost:HugeUsage"})
    async with run_gateway(config, tmp_path) as gw:
        client = gw.openai()
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, extra_headers={"x-huge": "1"})
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        rows = await ledger_rows(gw, at_least=3)
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        later = await ledger_rows(gw, at_least=4)
        ledger = plugin(gw).ledger
    assert len(rows) == 2 and len(later) == 3  # the writer goes on
    assert ledger.lost == 1 and ledger.pending == 0


async def test_an_unknown_model_costs_zero_and_is_warned_about_once(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="gateway.plugins.cost")
    async with run_gateway(cost_config(tmp_path), tmp_path) as gw:
        for _ in range(3):
            raw = await gw.openai().chat.completions.with_raw_response.create(model="my-finetune", messages=HELLO)
            assert raw.headers["x-gateway-cost-usd"] == "0"
        stats = plugin(gw).stats()
        rows = await ledger_rows(gw)
    warnings = [r for r in caplog.records if "my-finetune" in r.getMessage()]
    assert len(warnings) == 1
    assert stats["unknown_model_calls"] == 3 and stats["unknown_models"] == 1
    assert [row["cost_picousd"] for row in rows] == [0, 0, 0]
    assert [row["output_tokens"] for row in rows] == [15, 15, 15]  # tokens still recorded


async def test_the_prices_option_overrides_and_extends_the_built_in_table(tmp_path):
    prices = {
        "my-finetune": {"input_per_mtok": 1, "output_per_mtok": 2},
        "gpt-4o-mini": {"input_per_mtok": "0.10", "output_per_mtok": "0.40"},
    }
    async with run_gateway(cost_config(tmp_path, prices=prices), tmp_path) as gw:
        custom = await gw.openai().chat.completions.with_raw_response.create(model="my-finetune-2025-01-31", messages=HELLO)
        mini = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
    assert Decimal(custom.headers["x-gateway-cost-usd"]) == Decimal(2 * 1 + 15 * 2) / 10**6
    assert Decimal(mini.headers["x-gateway-cost-usd"]) == (2 * Decimal("0.10") + 15 * Decimal("0.40")) / 10**6


class HitCache:
    """A stand-in cache for the test: answers from ``send`` and says it was a hit."""

    @hookimpl
    async def send(self, exchange: Exchange, call_next: Any) -> Response:
        if "x-test-hit" not in exchange.headers:
            exchange.cache_status = "miss"
            return await call_next(exchange)
        exchange.cache_status = "hit"
        return Response.json_response(
            {
                "id": "chatcmpl-cached",
                "object": "chat.completion",
                "created": 1,
                "model": "gpt-4o",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "cached"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 100, "total_tokens": 200},
            }
        )


async def test_a_cache_hit_is_recorded_at_zero_cost(tmp_path):
    config = cost_config(tmp_path)
    config["plugins"].insert(0, {"use": "test_cost:HitCache"})
    async with run_gateway(config, tmp_path) as gw:
        hit = await gw.openai().chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, extra_headers={"x-test-hit": "1"}
        )
        miss = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
        rows = await ledger_rows(gw)
        _, usage = await admin_get(gw, "/usage")
    assert hit.headers["x-gateway-cost-usd"] == "0"
    assert Decimal(miss.headers["x-gateway-cost-usd"]) > 0
    assert [(row["cache_hit"], row["cost_picousd"] == 0, row["provider"]) for row in rows] == [(1, True, None), (0, False, "mock")]
    assert usage["totals"]["cache_hits"] == 1 and usage["totals"]["requests"] == 2


# -- budgets --------------------------------------------------------------------------------


async def test_a_caller_over_its_daily_budget_gets_402_in_its_apis_shape(tmp_path):
    # one call costs $0.0000093: the budget allows one, the second finds it spent
    async with run_gateway(cost_config(tmp_path, budget_usd_per_day=0.000009), tmp_path) as gw:
        await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        with pytest.raises(openai.APIStatusError) as refused:
            await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        with pytest.raises(anthropic.APIStatusError) as refused_anthropic:
            await gw.anthropic().messages.create(model="claude-haiku-4-5", max_tokens=10, messages=HELLO)
        # another caller has its own budget
        other = await gw.openai(default_headers={"x-gateway-user": "someone-else"}).chat.completions.create(
            model="gpt-4o-mini", messages=HELLO
        )
        rows = await ledger_rows(gw)
        stats = plugin(gw).stats()
    assert refused.value.status_code == 402
    assert refused.value.body["code"] == "budget_exceeded"
    assert "daily budget of $0.000009" in refused.value.body["message"]
    assert refused_anthropic.value.status_code == 402
    assert refused_anthropic.value.body["error"]["type"] == "budget_exceeded"
    assert other.choices
    assert [(row["client"], row["status"]) for row in rows] == [
        ("127.0.0.1", 200),
        ("127.0.0.1", 402),
        ("127.0.0.1", 402),
        ("someone-else", 200),
    ]
    assert stats["budget_rejections"] == 2


async def test_fifty_concurrent_calls_cannot_overspend_a_budget_of_three_calls(tmp_path):
    one_call = GPT_4O_MINI_HELLO
    # max_tokens makes each call reserve close to what it costs
    config = cost_config(tmp_path, budget_usd_per_day=float(one_call * 3))
    async with run_gateway(config, tmp_path) as gw:
        client = gw.openai()

        async def call() -> int:
            try:
                await client.chat.completions.create(
                    model="gpt-4o-mini", messages=HELLO, max_tokens=15, extra_headers={"x-mock-latency-ms": "50"}
                )
                return 200
            except openai.APIStatusError as exc:
                return exc.status_code

        statuses = await asyncio.gather(*(call() for _ in range(50)))
        rows = await ledger_rows(gw)
        _, quota = await admin_get(gw, "/usage/quota?client=127.0.0.1")
    served = statuses.count(200)
    assert set(statuses) <= {200, 402}
    assert 1 <= served <= 3
    spent = sum(Decimal(row["cost_picousd"]) for row in rows) / 10**12
    assert spent <= one_call * 3
    assert Decimal(str(quota["day"]["spent_usd"])) == spent
    assert quota["day"]["reserved_usd"] == 0


async def test_client_overrides_and_a_monthly_budget_apply_per_client(tmp_path):
    config = cost_config(
        tmp_path,
        budget_usd_per_day=1,
        budget_usd_per_month=0.000009,  # one call a month for everyone...
        budgets={"batch": {"usd_per_month": 10}},  # ...but batch jobs
    )
    config["clients"] = {"frontend": {"key": "key-frontend"}, "batch": {"key": "key-batch"}}
    async with run_gateway(config, tmp_path) as gw:
        frontend, batch = gw.openai(api_key="key-frontend"), gw.openai(api_key="key-batch")
        await frontend.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        with pytest.raises(openai.APIStatusError) as refused:
            await frontend.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        for _ in range(3):
            await batch.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        await ledger_rows(gw)  # every call charged
        _, frontend_quota = await admin_get(gw, "/usage/quota?client=frontend")
        _, batch_quota = await admin_get(gw, "/usage/quota?client=batch")
    assert refused.value.status_code == 402 and "monthly budget" in refused.value.body["message"]
    assert frontend_quota["month"]["limit_usd"] == 0.000009
    assert batch_quota["month"]["limit_usd"] == 10
    assert batch_quota["day"]["limit_usd"] == 1
    assert batch_quota["month"]["spent_usd"] == pytest.approx(3 * 0.0000093)


async def test_quota_shows_spent_limit_and_reset_time_and_survives_a_restart(tmp_path):
    config = cost_config(tmp_path, budget_usd_per_day=0.5)
    async with run_gateway(config, tmp_path) as gw:
        await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        await ledger_rows(gw)  # charged once complete has run
        status, quota = await admin_get(gw, "/usage/quota?client=127.0.0.1")
        missing, _ = await admin_get(gw, "/usage/quota")
    assert status == 200 and missing == 400
    assert quota["day"]["spent_usd"] == pytest.approx(0.0000093)
    assert quota["day"]["limit_usd"] == 0.5
    assert quota["day"]["remaining_usd"] == pytest.approx(0.5 - 0.0000093)
    assert quota["day"]["resets_at"].endswith("T00:00:00Z")
    assert quota["month"]["limit_usd"] is None
    async with run_gateway(config, tmp_path) as gw:  # the ledger gives the day's spend back
        _, again = await admin_get(gw, "/usage/quota?client=127.0.0.1")
    assert again["day"]["spent_usd"] == quota["day"]["spent_usd"]


# -- analytics ------------------------------------------------------------------------------


async def test_usage_answers_totals_and_per_day_rows_filtered_and_grouped_as_json_and_csv(tmp_path):
    async with run_gateway(cost_config(tmp_path), tmp_path) as gw:
        alice = gw.openai(default_headers={"x-gateway-user": "alice"})
        bob = gw.openai(default_headers={"x-gateway-user": "bob"})
        await alice.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        await alice.chat.completions.create(model="gpt-4o", messages=HELLO)
        await bob.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        with pytest.raises(openai.APIStatusError):
            await bob.chat.completions.create(model="gpt-4o-mini", messages=HELLO, extra_headers={"x-mock-error-rate": "1"})
        await ledger_rows(gw)
        _, everything = await admin_get(gw, "/usage?days=1")
        _, by_client = await admin_get(gw, "/usage?group_by=client")
        _, alice_models = await admin_get(gw, "/usage?client=alice&group_by=model")
        _, nothing = await admin_get(gw, "/usage?provider=nobody")
        bad, _ = await admin_get(gw, "/usage?group_by=prompt")
        status, text = await admin_get(gw, "/usage?group_by=client,model&format=csv")
    assert everything["totals"]["requests"] == 4 and everything["totals"]["errors"] == 1
    assert len(everything["rows"]) == 1 and everything["rows"][0]["day"] == everything["to"]
    assert everything["totals"]["cost_usd"] == pytest.approx(2 * 0.0000093 + 0.000155)
    assert {row["client"]: row["requests"] for row in by_client["rows"]} == {"alice": 2, "bob": 2}
    assert {row["model"]: row["output_tokens"] for row in alice_models["rows"]} == {"gpt-4o": 15, "gpt-4o-mini": 15}
    assert nothing["totals"]["requests"] == 0 and nothing["rows"] == []
    assert bad == 400
    assert status == 200
    table = list(csv.DictReader(io.StringIO(text)))
    assert {(row["client"], row["model"], row["cost_usd"]) for row in table} == {
        ("alice", "gpt-4o", "0.000155"),
        ("alice", "gpt-4o-mini", "0.0000093"),
        ("bob", "gpt-4o-mini", "0.0000093"),
    }


# -- a store that fails --------------------------------------------------------------------


async def test_a_locked_store_still_answers_counts_the_failure_and_catches_up(tmp_path):
    path = tmp_path / "usage.db"
    async with run_gateway(cost_config(tmp_path), tmp_path) as gw:
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        try:
            raw = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
            assert raw.headers["x-gateway-cost-usd"]
            for _ in range(100):
                stats = plugin(gw).stats()
                if stats["ledger_write_errors"]:
                    break
                await asyncio.sleep(0.05)
            _, admin_stats = await admin_get(gw, "/stats")
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        rows = await ledger_rows(gw)
        after = plugin(gw).stats()
    figures = admin_stats["plugins"]["cost"]
    assert figures["ledger_write_errors"] >= 1 and figures["ledger_pending"] == 1
    assert len(rows) == 1 and after["ledger_pending"] == 0 and after["ledger_lost"] == 0


# -- Redis budgets --------------------------------------------------------------------------


async def test_redis_budget_calls_get_spans_and_a_redis_outage_follows_failure_mode(tmp_path, redis_server):
    shared = {"store": redis_server.url, "ledger": str(tmp_path / "usage.db"), "budget_usd_per_day": 1, "redis_timeout_s": 0.2}
    async with run_gateway(cost_config(tmp_path, **shared), tmp_path) as gw:
        await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        await ledger_rows(gw, at_least=1)
        spans = gw.spans_named("cost reserve") + gw.spans_named("cost settle")
        redis_server.stop()
        served = await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # open: unmetered
        stats = plugin(gw).stats()
        rows = await ledger_rows(gw, at_least=2)
    assert [span.attributes["db.system"] for span in spans] == ["redis", "redis"]
    assert served.choices and stats["unmetered"] == 1 and stats["budget_backend_errors"] >= 1
    assert len(rows) == 2  # the ledger is local: both calls are on record

    redis_server.start()
    closed_dir = tmp_path / "closed"
    closed_dir.mkdir()
    closed = cost_config(closed_dir, **{**shared, "ledger": str(closed_dir / "usage.db")}, failure_mode="closed")
    async with run_gateway(closed, closed_dir) as gw:
        await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        redis_server.stop()
        with pytest.raises(openai.APIStatusError) as refused:
            await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        ready, _ = await admin_get(gw, "/readyz")
        quota_status, quota = await admin_get(gw, "/usage/quota?client=127.0.0.1")
    assert refused.value.status_code == 503 and refused.value.body["code"] == "backend_unavailable"
    assert refused.value.response.headers["Retry-After"] == "1"  # as on every 503 (before: none)
    assert ready == 503
    assert quota_status == 503 and quota["error"]["code"] == "backend_unavailable"  # the same code, on the admin port


async def test_a_reserve_that_timed_out_does_not_hold_the_budget_once_redis_answers(tmp_path, redis_server):
    # A reserve past redis_timeout_s fails (failure_mode decides) but still runs once Redis
    # wakes up: its reservation must be given back, not held for 15 minutes against the budget.
    import redis.asyncio as aioredis

    shared = {"store": redis_server.url, "ledger": str(tmp_path / "usage.db"), "budget_usd_per_day": 1, "redis_timeout_s": 0.2}
    async with run_gateway(cost_config(tmp_path, **shared), tmp_path) as gw:
        stall = aioredis.from_url(redis_server.url)
        try:
            sleeping = asyncio.create_task(stall.execute_command("DEBUG", "SLEEP", "0.6"))
            await asyncio.sleep(0.05)
            served = await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=HELLO)
            await sleeping
        finally:
            await stall.aclose()
        assert served.choices and plugin(gw).stats()["unmetered"] == 1
        await asyncio.sleep(0.2)  # the release leaves within RELEASE_WITHIN_S
        status, quota = await admin_get(gw, "/usage/quota?client=127.0.0.1")
    assert status == 200 and quota["day"]["reserved_usd"] == 0.0


async def test_counting_a_prompts_tokens_is_neither_budgeted_nor_recorded(tmp_path):
    # Providers do not bill count_tokens: it was estimated and charged as a call (and refused
    # once the budget was spent).
    async with run_gateway(cost_config(tmp_path, budgets={"127.0.0.1": {"usd_per_day": 0}}), tmp_path) as gw:
        raw = await gw.anthropic().messages.with_raw_response.count_tokens(model="claude-haiku-4-5", messages=HELLO)
        assert (await raw.parse()).input_tokens > 0
        assert "x-gateway-cost-usd" not in raw.headers
        with pytest.raises(openai.APIStatusError) as refused:  # the same caller's real call is budgeted
            await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        rows = await ledger_rows(gw, at_least=1)
        status, quota = await admin_get(gw, "/usage/quota?client=127.0.0.1")
    assert refused.value.status_code == 402
    assert [row["path"] for row in rows] == ["/v1/chat/completions"]
    assert status == 200 and quota["day"]["spent_usd"] == 0.0


async def test_listing_models_is_neither_budgeted_nor_recorded_and_a_non_json_body_is_metered(tmp_path):
    async with run_gateway(cost_config(tmp_path, budget_usd_per_day=0), tmp_path) as gw:
        models = await gw.openai().models.list()
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{gw.url}/v1/chat/completions", data=b"{not json", headers={"Content-Type": "application/json"}) as reply:
                status = reply.status
        rows = await ledger_rows(gw)
    assert models.data  # a zero budget does not stop a free call
    assert status == 402  # but it does stop one that may cost
    assert [(row["path"], row["status"]) for row in rows] == [("/v1/chat/completions", 402)]


class DraftFirst:
    """A stand-in cascade for the test: the draft model answers and says so."""

    @hookimpl
    async def send(self, exchange: Exchange, call_next: Any) -> Response:
        exchange.model = "gpt-4o-mini"
        exchange.served_model = "gpt-4o-mini"
        exchange.cascade_decision = "accepted"
        return await call_next(exchange)


async def test_the_model_that_answered_is_priced_and_the_cascade_decision_recorded(tmp_path):
    config = cost_config(tmp_path)
    config["plugins"].append({"use": "test_cost:DraftFirst"})
    async with run_gateway(config, tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
        rows = await ledger_rows(gw)
    assert raw.headers["x-gateway-model"] == "gpt-4o-mini"
    assert Decimal(raw.headers["x-gateway-cost-usd"]) == GPT_4O_MINI_HELLO
    assert [(row["model"], row["cascade"]) for row in rows] == [("gpt-4o-mini", "accepted")]


class Alias:
    """A plugin after cost that rewrites the body's model (and says nothing else)."""

    @hookimpl
    async def request(self, exchange: Exchange) -> None:
        exchange.model = "gpt-4o-mini"


async def test_a_model_a_later_plugin_wrote_into_the_body_is_the_one_priced(tmp_path):
    config = cost_config(tmp_path)
    config["plugins"].append({"use": "test_cost:Alias"})
    async with run_gateway(config, tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
        rows = await ledger_rows(gw)
    assert Decimal(raw.headers["x-gateway-cost-usd"]) == GPT_4O_MINI_HELLO
    assert [row["model"] for row in rows] == ["gpt-4o-mini"]


async def test_a_caller_that_leaves_mid_stream_is_recorded_with_the_tokens_streamed_so_far(tmp_path):
    body = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
    async with run_gateway(cost_config(tmp_path), tmp_path) as gw:
        async with aiohttp.ClientSession() as session:
            reply = await session.post(f"{gw.url}/v1/chat/completions", json=body, headers={"x-mock-inter-token-ms": "100"})
            seen = 0
            async for line in reply.content:
                seen += line.startswith(b"data:")
                if seen == 4:
                    break
            reply.close()  # the caller leaves
        rows = await ledger_rows(gw, at_least=1)
    (row,) = rows
    assert row["status"] == 499 and row["error"] == "client_closed_request"
    assert row["estimated"] == 1 and 3 <= row["output_tokens"] < 15
    assert row["cost_picousd"] > 0
