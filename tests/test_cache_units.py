"""The cache's key rules and its stream <-> JSON conversions, without a gateway."""

from __future__ import annotations

import json
import time

import msgspec
import openai
from openai.lib.streaming.chat import ChatCompletionStreamState

from gateway import Exchange, Response
from gateway_plugins.cache import Cache, Config, formats
from gateway_plugins.cache.backends import Entry, MsgpackSerializer
from gateway_plugins.cache.keys import MAX_HEADS, KeyRules, escape, request_key
from gateway_plugins.cache.plugin import CALL, MAX_DECISION_BODY, MAX_DECISION_BYTES, MAX_DECISIONS

TOOL_CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "system_fingerprint": "fp",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                    },
                    {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
}

TOOL_MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [
        {"type": "thinking", "thinking": "Let me look.", "signature": "sig"},
        {"type": "text", "text": "Checking the weather."},
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo", "days": [1, 2]}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 9, "output_tokens": 21},
}


def key(document, **overrides):
    arguments = {
        "path": "/v1/chat/completions",
        "provider": "openai",
        "api": "openai",
        "model": "gpt-4o-mini",
        "document": document,
        "caller": "alice",
        "headers": {},
    }
    arguments.update(overrides)
    return request_key("ns", **arguments)


def test_key_is_independent_of_key_order_at_every_depth_and_of_ignored_fields():
    one = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [{"a": 1, "b": {"x": 1, "y": 2}}]}
    two = {"tools": [{"b": {"y": 2, "x": 1}, "a": 1}], "messages": [{"content": "hi", "role": "user"}], "model": "m"}
    noisy = {**two, "user": "u", "stream": True, "stream_options": {"include_usage": True}, "metadata": {"k": "v"}}
    assert key(one) == key(two) == key(noisy)


def test_key_changes_with_every_part_that_decides_the_answer():
    document = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    base = key(document)
    assert key({**document, "temperature": 0}) != base
    assert key({**document, "messages": [{"role": "user", "content": "hi!"}]}) != base
    assert key(document, caller="bob") != base
    assert key(document, caller=None) != base
    assert key(document, provider="backup") != base
    assert key(document, path="/v1/completions") != base
    assert key(document, headers={"anthropic-beta": "x"}) != base
    assert key(document, with_stream=True) != key({**document, "stream": True}, with_stream=True)


def test_key_names_provider_and_model_escaped_so_prefixes_find_them():
    found = key({"model": "a:b*"}, provider="p:1", model="a:b*")
    assert found.startswith("ns:p%3A1:a%3Ab%2A:")
    assert escape("gpt-4o-mini") == "gpt-4o-mini"


def test_key_heads_stay_bounded_whatever_models_callers_name():
    rules = KeyRules("ns")
    document = {"messages": [{"role": "user", "content": "hi"}]}
    for index in range(MAX_HEADS + 10):
        found = rules.key("/v1/chat/completions", "openai", "openai", f"m{index}", document, None, {})
        assert found == key(document, model=f"m{index}", caller=None)
    assert len(rules._heads) <= MAX_HEADS


def test_remembered_decisions_stay_bounded_and_match_the_key_made_afresh():
    class Provider:
        name = "openai"

    def decide(plugin: Cache, body: bytes) -> str | None:
        exchange = Exchange(None, method="POST", path="/v1/chat/completions", headers={}, body=body, caller="alice")
        exchange.provider = Provider()  # type: ignore[assignment]
        call = plugin._decide(exchange)
        return call.key if call is not None else None

    plugin = Cache(Config())
    once = json.dumps({"model": "m", "messages": [{"role": "user", "content": "once"}]}).encode()
    key = decide(plugin, once)
    assert not plugin.decisions  # a body seen once is not kept: most never come again
    assert decide(plugin, bytes(once)) == key and len(plugin.decisions) == 1  # the second time it is
    bodies = [
        json.dumps({"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}).encode()
        for i in range(MAX_DECISIONS + 10)
    ]
    keys = [decide(plugin, body) for body in bodies]
    assert [decide(plugin, body) for body in bodies] == keys  # kept now (the second time)...
    assert [decide(plugin, body) for body in bodies] == keys  # ...and read from the table
    assert 0 < len(plugin.decisions) <= MAX_DECISIONS and len(plugin._seen) <= MAX_DECISIONS
    fresh = Cache(Config())
    assert keys == [decide(fresh, bytes(body)) for body in bodies] and len(set(keys)) == len(bodies)
    big = [
        json.dumps(
            {"model": "m", "messages": [{"role": "user", "content": f"{i} " + "y" * (MAX_DECISION_BODY // 2)}]}
        ).encode()
        for i in range(MAX_DECISION_BYTES // (MAX_DECISION_BODY // 2) + 10)
    ]
    for body in big * 2:  # each kept the second time: the bytes bound, not the count, empties the table
        decide(plugin, body)
    assert plugin._decision_bytes == sum(map(len, plugin.decisions)) <= MAX_DECISION_BYTES
    huge = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * MAX_DECISION_BODY}]}).encode()
    plugin.decisions.clear()
    assert decide(plugin, huge) == decide(plugin, huge) is not None and not plugin.decisions  # never kept
    hot = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 1.5}).encode()
    assert [decide(plugin, hot) for _ in range(3)] == [None, None, None]  # a bypass, kept as one


async def test_a_hit_carries_the_stored_content_type_and_its_age_in_whole_seconds():
    class Provider:
        name = "openai"

    async def upstream(exchange: Exchange) -> Response:
        raise AssertionError("a hit never calls the upstream")

    plugin = Cache(Config())
    exchange = Exchange(
        None,
        method="POST",
        path="/v1/chat/completions",
        headers={"Content-Type": "application/json"},
        body=json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode(),
        caller="alice",
    )
    exchange.provider = Provider()  # type: ignore[assignment]
    await plugin.request(exchange)
    stored = Entry("json", 200, "application/json; charset=utf-8", b'{"id":"x"}', time.time() - 42.7)
    plugin.memory.put(exchange.state[CALL].key, stored, 600)
    answer = await plugin.send(exchange, upstream)
    assert (answer.status, answer.body) == (200, b'{"id":"x"}')
    assert dict(answer.headers) == {"Content-Type": "application/json; charset=utf-8", "Age": "42"}
    assert exchange.response_headers["x-gateway-cache"] == "hit"
    answer.headers["x-request-id"] = "first"  # the core adds its headers to each answer's own
    again = await plugin.send(exchange, upstream)
    assert "x-request-id" not in again.headers


def test_openai_json_with_tool_calls_round_trips_through_a_stream_the_sdk_accumulates():
    stream = formats.json_to_stream(formats.CHAT, json.dumps(TOOL_CHAT).encode(), include_usage=True)
    assert stream is not None and stream.endswith(b"data: [DONE]\n\n")
    state = ChatCompletionStreamState()
    for _, data in formats.events(stream):
        if data != b"[DONE]":
            state.handle_chunk(openai.types.chat.ChatCompletionChunk.model_validate_json(data))
    final = state.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_1", "weather", '{"city":"Oslo"}'),
        ("call_2", "time", "{}"),
    ]
    assert final.choices[0].finish_reason == "tool_calls" and final.usage.total_tokens == 12
    back = json.loads(formats.stream_to_json(formats.CHAT, stream))
    assert back["choices"][0]["message"]["tool_calls"] == TOOL_CHAT["choices"][0]["message"]["tool_calls"]
    assert back["usage"] == TOOL_CHAT["usage"]


def test_anthropic_json_with_thinking_and_tool_use_round_trips_through_a_stream():
    stream = formats.json_to_stream(formats.MESSAGES, json.dumps(TOOL_MESSAGE).encode(), include_usage=False)
    assert stream is not None
    names = [name for name, _ in formats.events(stream)]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    back = json.loads(formats.stream_to_json(formats.MESSAGES, stream))
    assert back["content"] == TOOL_MESSAGE["content"] and back["usage"] == TOOL_MESSAGE["usage"]
    assert back["stop_reason"] == "tool_use"


def test_only_a_stream_that_reached_its_closing_event_counts_as_whole():
    whole = formats.json_to_stream(formats.CHAT, json.dumps(TOOL_CHAT).encode(), include_usage=False)
    assert formats.stream_is_whole("/v1/chat/completions", whole)
    assert not formats.stream_is_whole("/v1/chat/completions", whole[: whole.index(b"data: [DONE]")])
    assert not formats.stream_is_whole("/v1/chat/completions", whole + b'data: {"error": {"message": "x"}}\n\n')
    message = formats.json_to_stream(formats.MESSAGES, json.dumps(TOOL_MESSAGE).encode(), include_usage=False)
    assert formats.stream_is_whole("/v1/messages", message)
    assert not formats.stream_is_whole("/v1/messages", message + b"event: error\ndata: {}\n\n")


def test_a_stream_with_an_unknown_event_is_not_converted():
    stream = b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","content":[],"usage":{}}}\n\n'
    stream += b'event: surprise\ndata: {"type":"surprise"}\n\n'
    assert formats.stream_to_json(formats.MESSAGES, stream) is None
    assert formats.stream_to_json(formats.CHAT, b"data: not json\n\n") is None


def test_the_usage_chunk_is_dropped_for_callers_that_did_not_ask():
    stream = formats.json_to_stream(formats.CHAT, json.dumps(TOOL_CHAT).encode(), include_usage=True)
    kept = formats.drop_usage_chunk(stream)
    assert b'"choices":[]' not in kept and kept.endswith(b"data: [DONE]\n\n")
    assert len(formats.events(kept)) == len(formats.events(stream)) - 1


def test_entries_keep_the_served_model_and_read_those_stored_without_it():
    """Redis holds entries of the previous format (no served_model) and replicas of either
    version read each other's: the field is last and optional."""
    serializer = MsgpackSerializer()
    entry = Entry("json", 200, "application/json", b"{}", 1.0, False, "gpt-4o-mini")
    assert serializer.loads(serializer.dumps(entry)).served_model == "gpt-4o-mini"
    previous = msgspec.msgpack.encode(["json", 200, "application/json", b"{}", 1.0, False])
    assert serializer.loads(previous).served_model is None
