"""The hook-chain engine: order, short-circuit, the send onion, on_error, loading."""

from __future__ import annotations

import contextlib

import aiohttp
import openai
import pytest
from opentelemetry.trace import StatusCode

from gateway.app import Gateway
from gateway.config import ConfigError, load
from gateway.testing import run_gateway, write_config

import probe_plugin

CHAT = [{"role": "user", "content": "hello"}]


@pytest.fixture(autouse=True)
def clean_probes():
    probe_plugin.CALLS.clear()
    probe_plugin.SEEN.clear()
    yield


def probes(*configs, provider=None):
    return {
        "providers": provider or {"mock": {"type": "mock"}},
        "plugins": [{"use": "probe_plugin:Probe", "name": c["tag"], "config": c} for c in configs],
    }


def hooks_of(hook):
    return [tag for tag, name in probe_plugin.CALLS if name == hook]


async def test_hooks_run_in_config_order_forward_and_backward(tmp_path):
    async with run_gateway(probes({"tag": "c"}, {"tag": "a"}, {"tag": "b"}), tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(model="m", messages=CHAT)
    assert hooks_of("request") == ["c", "a", "b"]
    assert hooks_of("send") == ["c", "a", "b"]
    assert hooks_of("send-done") == ["b", "a", "c"]  # an onion: the first plugin is outermost
    assert hooks_of("response") == ["b", "a", "c"]
    assert hooks_of("complete") == ["b", "a", "c"]
    assert raw.headers["x-probe-a"] == "seen"


async def test_a_plugin_answering_ends_the_chain_early(tmp_path):
    config = probes({"tag": "first"}, {"tag": "answers", "answer": True}, {"tag": "never"})
    async with run_gateway(config, tmp_path) as gw:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{gw.url}/v1/chat/completions", json={"model": "m", "messages": CHAT}) as reply:
                body = await reply.json()
                headers = reply.headers
    assert body == {"answered_by": "answers"}
    assert headers["x-answered-by"] == "answers"
    assert "x-gateway-provider" not in headers  # no upstream answered
    assert hooks_of("request") == ["first", "answers"]
    assert hooks_of("send") == []
    # backward hooks only for the plugins whose request ran
    assert hooks_of("response") == ["answers", "first"]
    assert hooks_of("complete") == ["answers", "first"]


async def test_gateway_error_from_a_plugin_is_the_answer_in_api_shape(tmp_path):
    config = probes({"tag": "guard", "raise_status": 429, "raise_code": "rate_limit_exceeded"}, {"tag": "after"})
    async with run_gateway(config, tmp_path) as gw:
        with pytest.raises(openai.RateLimitError) as caught:
            await gw.openai().chat.completions.create(model="m", messages=CHAT)
    assert caught.value.response.headers["Retry-After"] == "7"
    assert caught.value.body["code"] == "rate_limit_exceeded"
    assert hooks_of("request") == ["guard"]
    assert hooks_of("complete") == ["guard"]
    assert probe_plugin.SEEN["guard"]["error"] == "rate_limit_exceeded"


async def test_a_deferred_refusal_comes_before_what_later_hooks_raised_and_their_complete_hooks_run(tmp_path):
    config = probes(
        {"tag": "limits", "defer": True, "raise_status": 429, "raise_code": "rate_limit_exceeded"},
        {"tag": "budget", "raise_status": 402, "raise_code": "budget_exceeded"},
    )
    async with run_gateway(config, tmp_path) as gw:
        with pytest.raises(openai.RateLimitError) as caught:
            await gw.openai().chat.completions.create(model="m", messages=CHAT)
    assert caught.value.body["code"] == "rate_limit_exceeded"
    assert [hook for _, hook in probe_plugin.CALLS] == ["request", "request", "decide", "complete", "complete"]
    assert probe_plugin.SEEN["budget"]["error"] == "rate_limit_exceeded"  # it ran: it may release what it holds


async def test_deferred_decisions_are_awaited_after_an_early_answer_and_come_before_it(tmp_path):
    config = probes({"tag": "limits", "defer": True}, {"tag": "answers", "answer": True}, {"tag": "never"})
    async with run_gateway(config, tmp_path) as gw:
        reply = await gw.openai().chat.completions.with_raw_response.create(model="m", messages=CHAT)
    assert reply.headers["x-answered-by"] == "answers"
    assert probe_plugin.CALLS == [
        ("limits", "request"), ("answers", "request"), ("limits", "decide"), ("answers", "response"),
        ("limits", "response"), ("answers", "complete"), ("limits", "complete"),
    ]
    probe_plugin.CALLS.clear()
    refusing = probes({"tag": "limits", "defer": True, "raise_status": 429}, {"tag": "answers", "answer": True})
    async with run_gateway(refusing, tmp_path) as gw:
        with pytest.raises(openai.RateLimitError):
            await gw.openai().chat.completions.create(model="m", messages=CHAT)
    assert ("answers", "complete") in probe_plugin.CALLS


@pytest.mark.parametrize("on_error", ["closed", "open"])
async def test_a_deferred_decision_that_breaks_follows_its_plugins_on_error(tmp_path, on_error):
    config = probes({"tag": "flaky", "defer": True, "fail_in": ["decide"]}, {"tag": "after"})
    config["plugins"][0]["on_error"] = on_error
    async with run_gateway(config, tmp_path) as gw:
        if on_error == "closed":
            with pytest.raises(openai.InternalServerError) as caught:
                await gw.openai().chat.completions.create(model="m", messages=CHAT)
            assert caught.value.body["code"] == "plugin_error"
        else:
            await gw.openai().chat.completions.create(model="m", messages=CHAT)
        assert gw.gateway.chain.failures["flaky"] == 1
    assert ("after", "complete") in probe_plugin.CALLS


async def test_on_error_closed_answers_500_plugin_error_without_leaking_the_exception(tmp_path):
    config = probes({"tag": "broken", "fail_in": ["request"]})
    async with run_gateway(config, tmp_path) as gw:
        with pytest.raises(openai.InternalServerError) as caught:
            await gw.openai().chat.completions.create(model="m", messages=CHAT)
        stats = await _admin_json(gw, "/stats")
    assert caught.value.status_code == 500
    assert caught.value.body["code"] == "plugin_error"
    assert "sk-secret" not in caught.value.response.text
    assert stats["plugins"]["broken"]["failures"] == 1


async def test_on_error_open_skips_the_plugin_and_counts_the_failure(tmp_path):
    """Once a hook of a plugin failing open has failed, the plugin's later hooks skip the
    exchange, as if the plugin were not in the chain: one failure a request."""
    config = probes({"tag": "flaky", "fail_in": ["request", "send", "response", "complete"]}, {"tag": "after"})
    config["plugins"][0]["on_error"] = "open"
    async with run_gateway(config, tmp_path) as gw:
        for _ in range(2):
            raw = await gw.openai().chat.completions.with_raw_response.create(model="m", messages=CHAT)
            assert raw.parse().choices[0].message.content
        stats = await _admin_json(gw, "/stats")
    assert stats["plugins"]["flaky"]["failures"] == 2
    assert [hook for tag, hook in probe_plugin.CALLS if tag == "flaky"] == ["request", "request"]
    assert hooks_of("complete") == ["after", "after"]  # the others' hooks all run
    assert "x-probe-flaky" not in raw.headers and raw.headers["x-probe-after"] == "seen"


@pytest.mark.parametrize("failing", ["send", "chunk"])
async def test_a_plugin_failing_open_later_in_the_exchange_skips_its_remaining_hooks(tmp_path, failing):
    config = probes({"tag": "flaky", "fail_in": [failing]})
    config["plugins"][0]["on_error"] = "open"
    async with run_gateway(config, tmp_path) as gw:
        stream = await gw.openai().chat.completions.create(model="m", messages=CHAT, stream=True)
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
        stats = await _admin_json(gw, "/stats")
    assert text
    assert stats["plugins"]["flaky"]["failures"] == 1
    ran = [hook for tag, hook in probe_plugin.CALLS if tag == "flaky"]
    assert ran.count(failing) == 1  # a failed chunk hook does not see the stream's later events
    assert "complete" not in ran
    assert ("response" in ran) is (failing == "chunk")  # the answer's headers went out before its events


@pytest.mark.parametrize("on_error", ["open", "closed"])
async def test_a_chunk_hook_that_raises_leaves_an_error_span_with_the_exception(tmp_path, on_error):
    config = probes({"tag": "flaky", "fail_in": ["chunk"]})
    config["plugins"][0]["on_error"] = on_error
    async with run_gateway(config, tmp_path) as gw:
        stream = await gw.openai().chat.completions.create(model="m", messages=CHAT, stream=True)
        with contextlib.suppress(openai.APIError):  # closed: the stream ends with the error event
            [chunk async for chunk in stream]
        (span,) = [s for s in gw.spans() if s.name == "flaky chunk"]
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description.startswith("RuntimeError")
    assert [event.name for event in span.events] == ["exception"]


@pytest.mark.parametrize("fail_with", ["CancelledError", "SystemExit"])
@pytest.mark.parametrize("hook", ["request", "send", "response", "chunk", "complete"])
async def test_a_hook_raising_cancelled_error_or_system_exit_is_a_plugin_failure_like_any_other(
    tmp_path, hook, fail_with
):
    # Before: a stray CancelledError (a future the plugin awaited was cancelled) was taken
    # for the caller leaving, whose connection was dropped without an answer; a
    # SystemExit left the event loop and stopped the whole gateway without a log line.
    config = probes(
        {"tag": "closed", "fail_in": [hook], "fail_with": fail_with},
        {"tag": "open", "fail_in": [hook], "fail_with": fail_with},
    )
    config["plugins"][1]["on_error"] = "open"
    async with run_gateway(config, tmp_path) as gw:
        client = gw.openai()
        for _ in range(2):  # the same answer again: the gateway still serves
            if hook in ("request", "send", "response"):
                with pytest.raises(openai.InternalServerError) as caught:
                    await client.chat.completions.create(model="m", messages=CHAT)
                assert caught.value.status_code == 500 and caught.value.body["code"] == "plugin_error"
            elif hook == "chunk":
                stream = await client.chat.completions.create(model="m", messages=CHAT, stream=True)
                with pytest.raises(openai.APIError, match="Plugin 'closed' failed"):
                    [chunk async for chunk in stream]
            else:
                assert (await client.chat.completions.create(model="m", messages=CHAT)).choices[0].message.content
        stats = await _admin_json(gw, "/stats")
    assert stats["plugins"]["closed"]["failures"] == 2
    # forward, the closed plugin answers first; backward (response, chunk, complete), the open one fails first
    assert stats["plugins"]["open"]["failures"] == (0 if hook in ("request", "send") else 2)
    (span, *_) = [s for s in gw.spans() if s.name == f"closed {hook}"]
    assert span.status.status_code == StatusCode.ERROR


@pytest.mark.parametrize("hook", ["request", "send", "response"])
async def test_a_hook_returning_something_other_than_a_response_is_a_plugin_failure(tmp_path, hook):
    # Before: the core tripped on it later, a 500 internal_error whatever the plugin's on_error.
    closed = probes({"tag": "sloppy", "wrong_return": [hook]})
    opened = probes({"tag": "sloppy", "wrong_return": [hook]})
    opened["plugins"][0]["on_error"] = "open"
    for directory in ("closed", "open"):
        (tmp_path / directory).mkdir()
    async with run_gateway(closed, tmp_path / "closed") as gw:
        with pytest.raises(openai.InternalServerError) as caught:
            await gw.openai().chat.completions.create(model="m", messages=CHAT)
    assert caught.value.body["code"] == "plugin_error" and "sloppy" in caught.value.body["message"]
    async with run_gateway(opened, tmp_path / "open") as gw:
        completion = await gw.openai().chat.completions.create(model="m", messages=CHAT)
        stats = await _admin_json(gw, "/stats")
    assert completion.choices[0].message.content.startswith("Mock reply to: hello")
    assert stats["plugins"]["sloppy"]["failures"] == 1
    assert [s.attributes["gateway.attempt"] for s in gw.spans() if s.kind.name == "CLIENT"] == [1]


async def test_fail_open_send_hook_that_breaks_after_the_upstream_answered_does_not_call_it_twice(tmp_path):
    config = probes({"tag": "late", "fail_in": ["send-done"]})
    config["plugins"][0]["on_error"] = "open"
    async with run_gateway(config, tmp_path) as gw:
        completion = await gw.openai().chat.completions.create(model="m", messages=CHAT)
    assert completion.choices[0].message.content
    assert [s.attributes["gateway.attempt"] for s in gw.spans() if s.kind.name == "CLIENT"] == [1]


async def test_send_hook_retries_with_call_next(tmp_path, mock_http_upstream):
    provider = {"oa": {"type": "openai", "base_url": mock_http_upstream, "api_key": "k"}}
    async with run_gateway(probes({"tag": "retry", "retries": 2}, provider=provider), tmp_path) as gw:
        with pytest.raises(openai.InternalServerError):
            await gw.openai().chat.completions.create(
                model="m", messages=CHAT, extra_headers={"x-mock-error-rate": "1", "x-mock-error-status": "503"}
            )
    assert hooks_of("send") == ["retry"]
    client_spans = [s for s in gw.spans() if s.kind.name == "CLIENT"]
    assert [s.attributes["gateway.attempt"] for s in client_spans] == [1, 2, 3]


async def test_chunk_hooks_see_and_rewrite_every_streamed_event(tmp_path):
    async with run_gateway(probes({"tag": "loud", "upper_chunks": True}), tmp_path) as gw:
        stream = await gw.openai().chat.completions.create(
            model="m", messages=CHAT, stream=True, stream_options={"include_usage": True}
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == text.upper() and "MOCK REPLY" in text
    assert len(hooks_of("chunk")) > 5
    assert probe_plugin.SEEN["loud"]["usage"][1] > 0


async def test_request_body_is_decoded_once_and_shared(tmp_path):
    async with run_gateway(probes({"tag": "one"}, {"tag": "two"}), tmp_path) as gw:
        await gw.openai().chat.completions.create(model="m", messages=CHAT)
    assert probe_plugin.SEEN["one"]["json"] is probe_plugin.SEEN["two"]["json"]
    assert probe_plugin.SEEN["one"]["json"]["model"] == "m"


async def test_example_plugin_by_module_attr(tmp_path):
    config = {
        "providers": {"mock": {"type": "mock"}},
        "plugins": [{"use": "model_aliases:ModelAliases", "config": {"aliases": {"fast": "gpt-4o-mini"}}}],
    }
    async with run_gateway(config, tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(model="fast", messages=CHAT)
        stats = await _admin_json(gw, "/stats")
    assert raw.parse().model == "gpt-4o-mini"
    assert raw.headers["x-model-alias"] == "fast=gpt-4o-mini"
    assert stats["plugins"]["model_aliases:ModelAliases"]["rewrites"] == 1


async def test_a_model_a_plugin_changes_goes_where_the_model_routes_send_it(tmp_path, mock_http_upstream):
    """An alias for a model of the other provider: the model routes, not the alias's name, pick it."""
    config = {
        "providers": {
            "openai": {"type": "openai", "base_url": mock_http_upstream},
            "claude": {"type": "anthropic", "base_url": mock_http_upstream},
        },
        "routes": [{"model": "claude-*", "provider": "claude"}, {"prefix": "/v1/", "provider": "openai"}],
        "plugins": [{"use": "model_aliases:ModelAliases", "config": {"aliases": {"fast": "claude-haiku-4-5"}}}],
    }
    async with run_gateway(config, tmp_path) as gw:
        aliased = await gw.openai().chat.completions.with_raw_response.create(model="fast", messages=CHAT)
        plain = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=CHAT)
    reply = aliased.parse()
    assert (aliased.headers["x-gateway-provider"], aliased.headers["x-gateway-model"]) == ("claude", "claude-haiku-4-5")
    assert reply.model == "claude-haiku-4-5" and reply.id.startswith("msg_")  # Anthropic's answer, translated
    assert plain.headers["x-gateway-provider"] == "openai" and "x-gateway-model" not in plain.headers


async def test_a_plugin_that_changes_the_model_gets_x_gateway_model_in_both_sdks(tmp_path):
    """SPEC: x-gateway-model names the model that answered when the gateway changed it
    (fallback, cascade, alias); a plugin that sets ``exchange.model`` changed it."""
    aliases = {"fast": "gpt-4o-mini", "same": "same"}
    config = {
        "providers": {"mock": {"type": "mock"}},
        "plugins": [{"use": "model_aliases:ModelAliases", "config": {"aliases": aliases}}, {"use": "cache"}],
    }
    async with run_gateway(config, tmp_path) as gw:
        aliased = await gw.openai().chat.completions.with_raw_response.create(model="fast", messages=CHAT)
        cached = await gw.openai().chat.completions.with_raw_response.create(model="fast", messages=CHAT)
        unchanged = await gw.openai().chat.completions.with_raw_response.create(model="same", messages=CHAT)
        plain = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=CHAT)
        message = await gw.anthropic().messages.with_raw_response.create(model="fast", max_tokens=50, messages=CHAT)
    assert aliased.headers["x-gateway-model"] == "gpt-4o-mini"
    assert (cached.headers["x-gateway-cache"], cached.headers["x-gateway-model"]) == ("hit", "gpt-4o-mini")
    assert "x-gateway-model" not in unchanged.headers
    assert "x-gateway-model" not in plain.headers
    assert message.headers["x-gateway-model"] == "gpt-4o-mini"
    assert (await message.parse()).model == "gpt-4o-mini"


async def test_example_plugin_by_entry_point(tmp_path, entry_point):
    entry_point("model-aliases", "model_aliases:ModelAliases")
    config = {
        "providers": {"mock": {"type": "mock"}},
        "plugins": [{"use": "model-aliases", "config": {"aliases": {"smart": "gpt-4o"}}}],
    }
    async with run_gateway(config, tmp_path) as gw:
        completion = await gw.openai().chat.completions.create(model="smart", messages=CHAT)
        plugins = await _admin_json(gw, "/plugins")
    assert completion.model == "gpt-4o"
    assert plugins["plugins"][0]["class"] == "model_aliases.ModelAliases"


def _build(tmp_path, plugins):
    path = write_config({"providers": {"mock": {"type": "mock"}}, "plugins": plugins}, tmp_path)
    return Gateway(load(str(path)))


def test_plugin_options_are_checked_by_its_own_struct(tmp_path):
    with pytest.raises(ConfigError) as caught:
        _build(tmp_path, [{"use": "model_aliases:ModelAliases", "config": {"aliases": {"a": 1}}}])
    assert str(caught.value).endswith(
        "gateway.yaml: plugins[0].config.aliases.a: (model_aliases:ModelAliases) Expected `str`, got `int`"
    )
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.config\.alias: .* unknown key"):
        _build(tmp_path, [{"use": "model_aliases:ModelAliases", "config": {"alias": {}}}])
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.config\.aliases: .*name at least one alias"):
        _build(tmp_path, [{"use": "model_aliases:ModelAliases", "config": {"aliases": {}}}])


def test_unknown_plugin_names_what_is_installed(tmp_path):
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.use: unknown plugin 'nope' \(installed: .*accesslog"):
        _build(tmp_path, [{"use": "nope"}])
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.use: cannot load 'no_such_module:X'"):
        _build(tmp_path, [{"use": "no_such_module:X"}])


class Misspelt:
    from gateway import hookimpl

    @hookimpl
    async def requets(self, exchange):
        return None


class SyncRequest:
    from gateway import hookimpl

    @hookimpl
    def request(self, exchange):
        return None


def test_misspelt_or_sync_hooks_are_rejected_at_startup(tmp_path):
    with pytest.raises(ConfigError, match="requets"):
        _build(tmp_path, [{"use": "test_chain:Misspelt"}])
    with pytest.raises(ConfigError, match=r"plugins\[0\]: \(test_chain:SyncRequest\) hook 'request' must be 'async def'"):
        _build(tmp_path, [{"use": "test_chain:SyncRequest"}])


def test_the_same_plugin_twice_needs_distinct_names(tmp_path):
    with pytest.raises(ConfigError, match=r"plugins\[1\]: plugin 'accesslog' is already in the chain"):
        _build(tmp_path, [{"use": "accesslog"}, {"use": "accesslog"}])
    gateway = _build(tmp_path, [{"use": "accesslog"}, {"use": "accesslog", "name": "audit"}])
    assert [p.label for p in gateway.chain.plugins] == ["accesslog", "audit"]


def test_a_plugin_without_options_rejects_some(tmp_path):
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.config: \(test_chain:Misspelt\) this plugin takes no options"):
        _build(tmp_path, [{"use": "test_chain:Misspelt", "config": {"x": 1}}])


async def _admin_json(gw, path):
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.admin_url + path) as reply:
            assert reply.status == 200
            return await reply.json()
