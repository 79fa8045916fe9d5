"""The breaker plugin end to end: the official SDKs -> the gateway -> mock providers made to fail."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import aiohttp
import anthropic
import openai
import pytest
from aiohttp import web

from gateway.app import Gateway
from gateway.config import ConfigError, load
from gateway.testing import run_gateway, serve_app, write_config

CHAT = [{"role": "user", "content": "Tell me about otters"}]
FAIL = {"x-mock-error-rate": "1", "x-mock-error-status": "503"}
FAST = {"backoff_base_s": 0.001, "backoff_max_s": 0.002}


def breaker_config(providers=None, **options):
    return {
        "providers": providers or {"mock": {"type": "mock"}},
        "plugins": [{"use": "breaker", "config": {**FAST, **options}}],
    }


async def chat(gw, headers=None, model="gpt-4o-mini", **kwargs):
    """One chat call; returns (status, headers, body or error)."""
    try:
        raw = await gw.openai().chat.completions.with_raw_response.create(
            model=model, messages=CHAT, extra_headers=headers or {}, **kwargs
        )
    except openai.APIStatusError as exc:
        return exc.status_code, exc.response.headers, exc.body
    return raw.status_code, raw.headers, raw.parse()


async def admin(gw, method, path, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.request(method, gw.admin_url + path, headers=headers) as answer:
            return answer.status, await answer.json(content_type=None)


def upstream_calls(gw):
    return [span for span in gw.spans() if span.kind.name == "CLIENT" and "gen_ai.operation.name" in span.attributes]


def breaker_of(document, key):
    (found,) = [b for b in document["breakers"] if b["key"] == key]
    return found


# -- 1. the state machine ---------------------------------------------------------


async def test_consecutive_failures_open_the_breaker_and_the_next_call_gets_503_circuit_open_with_retry_after(tmp_path):
    async with run_gateway(breaker_config(failure_threshold=3, retries=0, recovery_s=30), tmp_path) as gw:
        for _ in range(3):
            status, _, _ = await chat(gw, FAIL)
            assert status == 503  # the provider's own 503, passed through
        calls_before = len(upstream_calls(gw))
        status, headers, body = await chat(gw)
        assert status == 503
        assert body["code"] == "circuit_open"
        assert 15 <= int(headers["Retry-After"]) <= 30
        assert "x-gateway-provider" not in headers  # nobody was called
        assert len(upstream_calls(gw)) == calls_before
        events = [e for s in gw.spans_named("breaker send") for e in s.events if e.name == "breaker.state_change"]
        assert [(e.attributes["from"], e.attributes["to"]) for e in events] == [("closed", "open")]
        _, stats = await admin(gw, "GET", "/stats")
    figures = stats["plugins"]["breaker"]
    assert figures["state_by_provider"] == {"mock": 2}
    assert figures["opened_by_provider"] == {"mock": 1}
    assert figures["short_circuited"] == 1


async def test_a_success_resets_the_consecutive_failure_count(tmp_path):
    async with run_gateway(breaker_config(failure_threshold=2, retries=0), tmp_path) as gw:
        for _ in range(3):
            assert (await chat(gw, FAIL))[0] == 503
            assert (await chat(gw))[0] == 200
        _, document = await admin(gw, "GET", "/breakers")
    assert breaker_of(document, "mock")["state"] == "closed"
    assert breaker_of(document, "mock")["failures"] == 3


async def test_open_breaker_half_opens_after_recovery_and_a_successful_probe_closes_it(tmp_path):
    async with run_gateway(breaker_config(failure_threshold=1, retries=0, recovery_s=1), tmp_path) as gw:
        assert (await chat(gw, FAIL))[0] == 503
        assert (await chat(gw))[2]["code"] == "circuit_open"
        await asyncio.sleep(1.05)
        _, document = await admin(gw, "GET", "/breakers")
        assert breaker_of(document, "mock")["state"] == "open"
        assert breaker_of(document, "mock")["next_probe_in_s"] == 0
        status, headers, _ = await chat(gw)
        assert status == 200 and headers["x-gateway-provider"] == "mock"
        _, document = await admin(gw, "GET", "/breakers")
    assert breaker_of(document, "mock")["state"] == "closed"
    changes = [
        (e.attributes["from"], e.attributes["to"])
        for s in gw.spans_named("breaker send")
        for e in s.events
        if e.name == "breaker.state_change"
    ]
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


async def test_a_failed_probe_opens_the_breaker_again_for_another_recovery_period(tmp_path):
    async with run_gateway(breaker_config(failure_threshold=1, retries=0, recovery_s=1), tmp_path) as gw:
        assert (await chat(gw, FAIL))[0] == 503
        await asyncio.sleep(1.05)
        assert (await chat(gw, FAIL))[0] == 503  # the probe, failing
        status, headers, body = await chat(gw)
        assert body["code"] == "circuit_open"
        _, document = await admin(gw, "GET", "/breakers")
    assert breaker_of(document, "mock")["opened"] == 2


async def test_half_open_lets_a_bounded_number_of_probes_through(tmp_path):
    config = breaker_config(failure_threshold=1, retries=0, recovery_s=0.1, half_open_probes=2)
    async with run_gateway(config, tmp_path) as gw:
        assert (await chat(gw, FAIL))[0] == 503
        await asyncio.sleep(0.15)
        slow = {"x-mock-latency-ms": "1000"}  # the probes are still out when the others arrive
        results = await asyncio.gather(*(chat(gw, slow) for _ in range(5)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200, 200, 503, 503, 503]
    assert all(body["code"] == "circuit_open" for status, _, body in results if status == 503)


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_a_callers_4xx_never_trips_the_breaker(tmp_path, status):
    async with run_gateway(breaker_config(failure_threshold=1, retries=1), tmp_path) as gw:
        for _ in range(3):
            answered, _, _ = await chat(gw, {"x-mock-error-rate": "1", "x-mock-error-status": str(status)})
            assert answered == status
        assert len(upstream_calls(gw)) == 3  # and never retried
        _, document = await admin(gw, "GET", "/breakers")
    assert breaker_of(document, "mock")["state"] == "closed"


async def test_429_and_500_count_as_failures(tmp_path):
    async with run_gateway(breaker_config(failure_threshold=2, retries=0), tmp_path) as gw:
        assert (await chat(gw, {"x-mock-error-rate": "1", "x-mock-error-status": "429"}))[0] == 429
        assert (await chat(gw, {"x-mock-error-rate": "1", "x-mock-error-status": "500"}))[0] == 500
        assert (await chat(gw))[2]["code"] == "circuit_open"


async def test_a_timeout_counts_as_a_failure(tmp_path):
    providers = {"mock": {"type": "mock", "timeout_s": 0.1}}
    async with run_gateway(breaker_config(providers, failure_threshold=1, retries=0), tmp_path) as gw:
        status, _, body = await chat(gw, {"x-mock-hang": "1"})
        assert status == 504 and body["code"] == "upstream_timeout"
        assert (await chat(gw))[2]["code"] == "circuit_open"


async def test_a_refused_connection_counts_as_a_failure_and_is_retried(tmp_path):
    from redis_server import free_port

    providers = {"dead": {"type": "openai", "base_url": f"http://127.0.0.1:{free_port()}", "api_key": "k"}}
    async with run_gateway(breaker_config(providers, failure_threshold=2, retries=1), tmp_path) as gw:
        status, _, body = await chat(gw)
        assert status == 502 and body["code"] == "upstream_error"
        assert len(upstream_calls(gw)) == 2  # one retry
        assert (await chat(gw))[2]["code"] == "circuit_open"  # both attempts counted


async def test_a_caller_who_leaves_is_not_a_provider_failure(tmp_path):
    async with run_gateway(breaker_config(failure_threshold=1, retries=0), tmp_path) as gw:
        client = gw.openai(timeout=0.2)
        for _ in range(2):
            with pytest.raises(openai.APITimeoutError):
                await client.chat.completions.create(
                    model="gpt-4o-mini", messages=CHAT, extra_headers={"x-mock-latency-ms": "2000"}
                )
        await asyncio.sleep(0.1)
        _, document = await admin(gw, "GET", "/breakers")
        assert breaker_of(document, "mock")["state"] == "closed"
        assert breaker_of(document, "mock")["failures"] == 0
        assert (await chat(gw))[0] == 200


async def test_failure_rate_opens_over_a_window_of_calls(tmp_path):
    config = breaker_config(failure_threshold=100, failure_rate=0.5, window=4, retries=0)
    async with run_gateway(config, tmp_path) as gw:
        for headers in (FAIL, None, FAIL):  # 2 of 3: not judged before 4 calls
            await chat(gw, headers)
        assert (await chat(gw))[0] == 200  # 2 of 4 failed: 50 % -> open
        assert (await chat(gw))[2]["code"] == "circuit_open"


async def test_per_model_breakers_keep_other_models_served(tmp_path):
    async with run_gateway(breaker_config(failure_threshold=1, retries=0, per_model=True), tmp_path) as gw:
        assert (await chat(gw, FAIL, model="gpt-4o"))[0] == 503
        assert (await chat(gw, model="gpt-4o"))[2]["code"] == "circuit_open"
        assert (await chat(gw, model="gpt-4o-mini"))[0] == 200
        _, document = await admin(gw, "GET", "/breakers")
        _, stats = await admin(gw, "GET", "/stats")
    assert breaker_of(document, "mock/gpt-4o")["state"] == "open"
    assert breaker_of(document, "mock/gpt-4o-mini")["state"] == "closed"
    assert stats["plugins"]["breaker"]["state_by_provider"] == {"mock": 2}


async def test_state_changes_are_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gateway.breaker")
    async with run_gateway(breaker_config(failure_threshold=1, retries=0), tmp_path) as gw:
        await chat(gw, FAIL)
    (record,) = [r for r in caplog.records if r.name == "gateway.breaker"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "breaker mock closed -> open: 1 consecutive failures"
    assert record.state == "open"


# -- 2. an open breaker is answered in the route's API shape ---------------------------


async def test_open_breaker_answers_anthropic_callers_in_their_shape(tmp_path):
    async with run_gateway(breaker_config(failure_threshold=1, retries=0), tmp_path) as gw:
        client = gw.anthropic()
        with pytest.raises(anthropic.APIStatusError):
            await client.messages.create(
                model="claude-haiku-4-5", max_tokens=20, messages=CHAT, extra_headers=FAIL
            )
        with pytest.raises(anthropic.APIStatusError) as caught:
            await client.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=CHAT)
    assert caught.value.status_code == 503
    assert caught.value.body["error"]["type"] == "circuit_open"
    assert caught.value.response.headers["Retry-After"]


# -- 3. retries ----------------------------------------------------------------------


def flaky_upstream(statuses, headers=None, stream=False):
    """A fake OpenAI upstream answering the given statuses in turn, then 200; counts calls."""
    calls = []

    async def handle(request):
        calls.append(await request.json())
        status = statuses[len(calls) - 1] if len(calls) <= len(statuses) else 200
        if status != 200:
            return web.json_response(
                {"error": {"message": "flaky", "type": "server_error", "param": None, "code": None}},
                status=status,
                headers=headers or {},
            )
        document = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": calls[-1]["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        if not calls[-1].get("stream"):
            return web.json_response(document)
        answer = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await answer.prepare(request)
        chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": document["model"]}
        delta = {"index": 0, "delta": {"role": "assistant", "content": "ok"}, "finish_reason": None}
        await answer.write(b"data: " + json.dumps({**chunk, "choices": [delta]}).encode() + b"\n\n")
        await answer.write(b"data: [DONE]\n\n")
        await answer.write_eof()
        return answer

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    return app, calls


@pytest.mark.parametrize("status", [502, 503, 504, 429])
async def test_a_retryable_failure_is_retried_and_the_caller_gets_the_answer(tmp_path, status):
    app, calls = flaky_upstream([status])
    async with serve_app(app) as url:
        providers = {"flaky": {"type": "openai", "base_url": url, "api_key": "k"}}
        async with run_gateway(breaker_config(providers, retries=1), tmp_path) as gw:
            answered, headers, body = await chat(gw)
            spans = upstream_calls(gw)
            _, stats = await admin(gw, "GET", "/stats")
    assert answered == 200 and body.choices[0].message.content == "ok"
    assert len(calls) == 2
    assert [span.attributes["gateway.attempt"] for span in spans] == [1, 2]  # a CLIENT span per attempt
    assert stats["plugins"]["breaker"]["retries"] == 1
    (retry,) = [e for s in gw.spans_named("breaker send") for e in s.events if e.name == "breaker.retry"]
    assert retry.attributes["reason"] == str(status)


async def test_a_500_is_not_retried(tmp_path):
    app, calls = flaky_upstream([500])
    async with serve_app(app) as url:
        providers = {"flaky": {"type": "openai", "base_url": url, "api_key": "k"}}
        async with run_gateway(breaker_config(providers, retries=3), tmp_path) as gw:
            assert (await chat(gw))[0] == 500
    assert len(calls) == 1


async def test_retries_stop_at_the_configured_count_and_pass_the_providers_answer(tmp_path):
    app, calls = flaky_upstream([503, 503, 503, 503])
    async with serve_app(app) as url:
        providers = {"flaky": {"type": "openai", "base_url": url, "api_key": "k"}}
        async with run_gateway(breaker_config(providers, retries=2, failure_threshold=10), tmp_path) as gw:
            status, _, body = await chat(gw)
    assert status == 503 and body["message"] == "flaky"
    assert len(calls) == 3


async def test_retry_waits_for_the_providers_retry_after(tmp_path):
    app, calls = flaky_upstream([429], headers={"retry-after-ms": "300"})
    async with serve_app(app) as url:
        providers = {"flaky": {"type": "openai", "base_url": url, "api_key": "k"}}
        async with run_gateway(breaker_config(providers, retries=1), tmp_path) as gw:
            assert (await chat(gw))[0] == 200
    assert len(calls) == 2
    (retry,) = [e for s in gw.spans_named("breaker send") for e in s.events if e.name == "breaker.retry"]
    assert retry.attributes["delay_s"] >= 0.3


async def test_a_retry_after_longer_than_the_cap_is_not_waited_for(tmp_path):
    app, calls = flaky_upstream([429], headers={"retry-after": "20"})
    async with serve_app(app) as url:
        providers = {"flaky": {"type": "openai", "base_url": url, "api_key": "k"}}
        async with run_gateway(breaker_config(providers, retries=1, retry_after_max_s=1), tmp_path) as gw:
            status, headers, _ = await chat(gw)
    assert status == 429 and headers["retry-after"] == "20"  # the provider's answer, unchanged
    assert len(calls) == 1


async def test_the_deadline_bounds_retries_and_answers_504(tmp_path):
    providers = {"mock": {"type": "mock", "timeout_s": 5}}
    config = breaker_config(providers, retries=5, deadline_s=0.4, failure_threshold=100)
    async with run_gateway(config, tmp_path) as gw:
        status, _, body = await chat(gw, {"x-mock-latency-ms": "300", **FAIL})
        _, document = await admin(gw, "GET", "/breakers")
        attempts = len(upstream_calls(gw))
    assert status == 504 and body["code"] == "upstream_timeout"
    assert "deadline of 0.4 s" in body["message"]
    assert attempts <= 2  # each takes 0.3 s at least: without the deadline there would be 6
    assert breaker_of(document, "mock")["failures"] == attempts - 1  # the attempt cut by the deadline is no verdict


async def test_a_stream_is_never_retried_once_it_started(tmp_path):
    async with run_gateway(breaker_config(retries=3, failure_threshold=1), tmp_path) as gw:
        stream = await gw.openai().chat.completions.create(
            model="gpt-4o-mini", messages=CHAT, stream=True, extra_headers={"x-mock-stream-cut-after": "2"}
        )
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
        assert len(upstream_calls(gw)) == 1
        await asyncio.sleep(0.05)
        _, document = await admin(gw, "GET", "/breakers")
    # the break mid-stream counts against the provider
    assert breaker_of(document, "mock")["state"] == "open"


async def test_a_stream_whose_first_answer_is_a_503_is_retried_before_any_byte_is_sent(tmp_path):
    app, calls = flaky_upstream([503])
    async with serve_app(app) as url:
        providers = {"flaky": {"type": "openai", "base_url": url, "api_key": "k"}}
        async with run_gateway(breaker_config(providers, retries=1), tmp_path) as gw:
            stream = await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)
            text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert text == "ok"
    assert len(calls) == 2


# -- 4. fallback ---------------------------------------------------------------------

TWO_MOCKS = {"mock": {"type": "mock"}, "backup": {"type": "mock"}}
PRIMARY_FAILS = {"x-mock-target": "mock", **FAIL}


async def test_fallback_serves_when_the_primary_fails_and_names_who_served(tmp_path):
    config = breaker_config(TWO_MOCKS, retries=1, fallbacks={"mock": ["backup"]})
    async with run_gateway(config, tmp_path) as gw:
        status, headers, body = await chat(gw, PRIMARY_FAILS)
        attempts = [span.attributes["gateway.provider"] for span in upstream_calls(gw)]
        _, stats = await admin(gw, "GET", "/stats")
    assert status == 200 and headers["x-gateway-provider"] == "backup"
    assert "x-gateway-model" not in headers
    assert attempts == ["mock", "mock", "backup"]
    assert stats["plugins"]["breaker"]["fallbacks"] == 1
    assert stats["plugins"]["breaker"]["fallbacks_served_by_provider"] == {"mock": 0, "backup": 1}


async def test_fallback_serves_without_calling_an_open_primary(tmp_path):
    config = breaker_config(TWO_MOCKS, retries=0, failure_threshold=1, fallbacks={"mock": ["backup"]})
    async with run_gateway(config, tmp_path) as gw:
        await chat(gw, PRIMARY_FAILS)
        gw.exporter.clear()
        status, headers, _ = await chat(gw)
        attempts = [span.attributes["gateway.provider"] for span in upstream_calls(gw)]
    assert status == 200 and headers["x-gateway-provider"] == "backup"
    assert attempts == ["backup"]


async def test_a_fallback_model_map_rewrites_the_model_and_says_so(tmp_path):
    config = breaker_config(
        TWO_MOCKS, retries=0, fallbacks={"mock": ["backup"]}, fallback_models={"backup": {"gpt-4o": "gpt-4o-mini"}}
    )
    async with run_gateway(config, tmp_path) as gw:
        status, headers, body = await chat(gw, PRIMARY_FAILS, model="gpt-4o")
    assert status == 200
    assert headers["x-gateway-provider"] == "backup"
    assert headers["x-gateway-model"] == "gpt-4o-mini"
    assert body.model == "gpt-4o-mini"


async def test_an_anthropic_stream_fails_over_before_its_first_event(tmp_path):
    config = breaker_config(TWO_MOCKS, retries=0, fallbacks={"mock": ["backup"]})
    async with run_gateway(config, tmp_path) as gw:
        async with gw.anthropic().messages.stream(
            model="claude-haiku-4-5", max_tokens=50, messages=CHAT, extra_headers=PRIMARY_FAILS
        ) as stream:
            text = "".join([chunk async for chunk in stream.text_stream])
            headers = stream.response.headers
        (fallback,) = [e for s in gw.spans_named("breaker send") for e in s.events if e.name == "breaker.fallback"]
    assert text.startswith("Mock reply to: Tell me about otters")
    assert headers["x-gateway-provider"] == "backup"
    assert dict(fallback.attributes) == {"from": "mock", "to": "backup"}


async def test_fallbacks_are_tried_in_order(tmp_path):
    providers = {**TWO_MOCKS, "third": {"type": "mock"}}
    config = breaker_config(providers, retries=0, fallbacks={"mock": ["backup", "third"]})
    async with run_gateway(config, tmp_path) as gw:
        status, headers, _ = await chat(gw, {"x-mock-target": "mock,backup", **FAIL})
    assert status == 200 and headers["x-gateway-provider"] == "third"


async def test_when_every_candidate_fails_the_last_answer_is_passed(tmp_path):
    config = breaker_config(TWO_MOCKS, retries=0, fallbacks={"mock": ["backup"]})
    async with run_gateway(config, tmp_path) as gw:
        status, headers, body = await chat(gw, FAIL)
    assert status == 503 and headers["x-gateway-provider"] == "backup"
    assert body["message"] == "mock upstream: injected failure"


async def test_a_core_502_as_the_last_answer_names_the_provider_that_gave_it(tmp_path):
    # docs/breaker.md: the last real answer, "the provider's own 5xx or 429, unchanged, or the
    # core's 502/504", comes "with x-gateway-provider naming the provider that gave it".
    from redis_server import free_port

    providers = {
        **TWO_MOCKS,
        "dead": {"type": "openai", "base_url": f"http://127.0.0.1:{free_port()}", "api_key": "k"},
    }
    config = breaker_config(
        providers,
        retries=0,
        fallbacks={"mock": ["dead"]},
        fallback_models={"dead": {"*": "gpt-4o"}},
    )
    config["routes"] = [{"prefix": "/v1/", "provider": "mock"}]
    async with run_gateway(config, tmp_path) as gw:
        status, headers, body = await chat(gw, PRIMARY_FAILS)
        assert status == 502 and body["code"] == "upstream_error"
        assert headers["x-gateway-provider"] == "dead"
        assert headers["x-gateway-model"] == "gpt-4o"
    config["routes"] = [{"prefix": "/v1/", "provider": "dead"}]
    async with run_gateway(config, tmp_path) as gw:  # the primary's own 502, no fallback
        status, headers, body = await chat(gw)
    assert status == 502 and headers["x-gateway-provider"] == "dead" and "x-gateway-model" not in headers


async def test_when_every_candidate_is_open_the_answer_is_circuit_open(tmp_path):
    config = breaker_config(TWO_MOCKS, retries=0, failure_threshold=1, fallbacks={"mock": ["backup"]})
    async with run_gateway(config, tmp_path) as gw:
        await chat(gw, FAIL)  # opens both
        gw.exporter.clear()
        status, headers, body = await chat(gw)
        assert not upstream_calls(gw)
    assert status == 503 and body["code"] == "circuit_open"
    assert "mock and backup" in body["message"]
    assert int(headers["Retry-After"]) >= 1


async def test_a_fallback_of_the_other_api_type_serves_a_chat_through_the_cores_translation(
    tmp_path, mock_http_upstream
):
    app, calls = flaky_upstream([503] * 10)
    async with serve_app(app) as url:
        providers = {
            "openai": {"type": "openai", "base_url": url, "api_key": "k"},
            "claude": {"type": "anthropic", "base_url": mock_http_upstream, "api_key": "k"},
        }
        config = breaker_config(
            providers, retries=0, fallbacks={"openai": ["claude"]}, fallback_models={"claude": {"*": "claude-haiku-4-5"}}
        )
        async with run_gateway(config, tmp_path) as gw:
            status, headers, completion = await chat(gw, model="gpt-4o")
            stream = await gw.openai().chat.completions.create(model="gpt-4o", messages=CHAT, stream=True)
            text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert status == 200
    assert headers["x-gateway-provider"] == "claude"
    assert headers["x-gateway-model"] == "claude-haiku-4-5"
    assert completion.model == "claude-haiku-4-5"
    assert completion.choices[0].message.content.startswith("Mock reply to: Tell me about otters")
    assert text.startswith("Mock reply to: Tell me about otters")
    assert len(calls) == 2 and calls[0]["model"] == "gpt-4o"  # the primary got the caller's request


async def test_an_anthropic_caller_is_served_by_an_openai_type_fallback_in_its_own_shape(tmp_path, mock_http_upstream):
    providers = {"primary": {"type": "mock"}, "gpt": {"type": "openai", "base_url": mock_http_upstream, "api_key": "k"}}
    config = breaker_config(
        providers, retries=0, fallbacks={"primary": ["gpt"]}, fallback_models={"gpt": {"*": "gpt-4o-mini"}}
    )
    async with run_gateway(config, tmp_path) as gw:
        raw = await gw.anthropic().messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=50, messages=CHAT, extra_headers={"x-mock-target": "primary", **FAIL}
        )
        message = await raw.parse()
    assert raw.headers["x-gateway-provider"] == "gpt"
    assert raw.headers["x-gateway-model"] == "gpt-4o-mini"
    assert message.type == "message" and message.model == "gpt-4o-mini"
    assert message.content[0].text.startswith("Mock reply to: Tell me about otters")


async def test_a_fallback_of_the_other_api_type_is_skipped_for_a_path_the_core_does_not_translate(tmp_path):
    providers = {"mock": {"type": "mock"}, "claude": {"type": "anthropic", "api_key": "k", "base_url": "http://127.0.0.1:9"}}
    config = breaker_config(providers, retries=0, failure_threshold=1, fallbacks={"mock": ["claude"]})
    async with run_gateway(config, tmp_path) as gw:
        with pytest.raises(openai.InternalServerError) as caught:
            await gw.openai().embeddings.create(model="text-embedding-3-small", input="hi", extra_headers=FAIL)
        assert caught.value.response.headers["x-gateway-provider"] == "mock"
        assert [span.attributes["gateway.provider"] for span in upstream_calls(gw)] == ["mock"]


def check(config, tmp_path):
    return Gateway(load(str(write_config(config, tmp_path))))


@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({"fallbacks": {"nope": ["mock"]}}, "fallbacks.nope", "no provider named 'nope'"),
        ({"fallbacks": {"mock": ["backup", "gone"]}}, "fallbacks.mock[1]", "no provider named 'gone'"),
        ({"fallbacks": {"mock": ["mock"]}}, "fallbacks.mock[0]", "named twice"),
        ({"fallback_models": {"gone": {"a": "b"}}}, "fallback_models.gone", "no provider named 'gone'"),
        ({"backend": "memcached://x"}, "backend", "redis://"),
        ({"failure_threshold": 0}, "failure_threshold", ">= 1"),
    ],
)
def test_bad_options_are_refused_at_startup_naming_the_key(tmp_path, options, key, problem):
    with pytest.raises(ConfigError) as caught:
        check(breaker_config(TWO_MOCKS, **options), tmp_path)
    message = str(caught.value)
    assert f"plugins[0].config.{key}" in message and problem in message


def test_a_fallback_across_api_types_needs_a_model_map(tmp_path):
    providers = {
        "openai": {"type": "openai", "api_key": "k"},
        "claude": {"type": "anthropic", "api_key": "k"},
    }
    with pytest.raises(ConfigError) as caught:
        check(breaker_config(providers, fallbacks={"openai": ["claude"]}), tmp_path)
    message = str(caught.value)
    assert "plugins[0].config.fallbacks.openai[0]" in message
    assert "translation" in message and "fallback_models" in message
    mapped = breaker_config(
        providers, fallbacks={"openai": ["claude"]}, fallback_models={"claude": {"gpt-4o": "claude-sonnet-4-5"}}
    )
    assert check(mapped, tmp_path).chain.plugins[0].label == "breaker"


# -- 5. admin ------------------------------------------------------------------------


async def test_get_breakers_shows_state_counts_opened_at_and_next_probe(tmp_path):
    config = breaker_config(TWO_MOCKS, retries=0, failure_threshold=1, recovery_s=30)
    async with run_gateway(config, tmp_path) as gw:
        await chat(gw, PRIMARY_FAILS)
        status, document = await admin(gw, "GET", "/breakers")
    assert status == 200
    assert document["backend"] == "memory"
    mock, backup = breaker_of(document, "mock"), breaker_of(document, "backup")
    assert mock["state"] == "open" and mock["failures"] == 1 and mock["consecutive_failures"] == 1
    assert mock["opened_at"].endswith("Z") and mock["next_probe_at"].endswith("Z")
    assert 15 < mock["next_probe_in_s"] <= 30
    assert backup["state"] == "closed" and backup["opened_at"] is None and backup["next_probe_at"] is None


async def test_reset_closes_a_providers_breaker_behind_the_admin_token(tmp_path):
    config = breaker_config(retries=0, failure_threshold=1)
    config["admin"] = {"token": "secret"}
    async with run_gateway(config, tmp_path) as gw:
        await chat(gw, FAIL)
        assert (await admin(gw, "POST", "/breakers/mock/reset"))[0] == 401
        assert (await admin(gw, "GET", "/breakers"))[0] == 401
        status, document = await admin(gw, "POST", "/breakers/mock/reset", token="secret")
        assert status == 200 and document["reset"] == ["mock"]
        assert breaker_of(document, "mock")["state"] == "closed"
        assert (await chat(gw))[0] == 200
        status, document = await admin(gw, "POST", "/breakers/nope/reset", token="secret")
    assert status == 404 and "nope" in document["error"]["message"]


async def test_breaker_state_is_a_gauge_in_stats_and_metrics(tmp_path):
    config = breaker_config(TWO_MOCKS, retries=0, failure_threshold=1)
    async with run_gateway(config, tmp_path) as gw:
        await chat(gw, PRIMARY_FAILS)
        _, stats = await admin(gw, "GET", "/stats")
        async with aiohttp.ClientSession() as session:
            async with session.get(gw.admin_url + "/metrics") as answer:
                metrics = await answer.text()
    figures = stats["plugins"]["breaker"]
    assert figures["state_by_provider"] == {"mock": 2, "backup": 0}
    assert figures["transitions_by_state"] == {"closed": 0, "half_open": 0, "open": 1}
    if "gateway_breaker_" in metrics:  # the exporter that maps <figure>_by_<label> to labels
        assert re.search(r'^gateway_breaker_state\{provider="mock"\} 2(\.0)?$', metrics, re.M)
        assert re.search(r'^gateway_breaker_state\{provider="backup"\} 0(\.0)?$', metrics, re.M)
    else:  # numeric leaves only
        assert 'gateway_plugin_stat{plugin="breaker",stat="short_circuited"}' in metrics


# -- 7. the demo ---------------------------------------------------------------------


async def test_the_demo_config_fails_over_to_backup_when_the_first_mock_fails(tmp_path):
    from pathlib import Path

    demo = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"
    async with run_gateway(demo, environ={"GATEWAY_USAGE_DB": str(tmp_path / "usage.db")}) as gw:
        headers = {"x-mock-target": "mock", "cache-control": "no-cache", **FAIL}
        status, answer_headers, body = await chat(gw, headers, model="gpt-4o")
        _, document = await admin(gw, "GET", "/breakers")
    assert status == 200
    assert answer_headers["x-gateway-provider"] == "backup"
    assert answer_headers["x-gateway-model"] == "gpt-4o-mini"
    assert body.model == "gpt-4o-mini"
    assert breaker_of(document, "mock")["failures"] == 2  # the call and its retry
