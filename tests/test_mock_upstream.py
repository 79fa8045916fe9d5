"""The mock upstream, driven by the official SDKs over loopback and in-process."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import httpx2
import msgspec
import openai
import pytest
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from gateway.mock_upstream import MockSettings, MockUpstream, add_arguments

REPO = Path(__file__).resolve().parent.parent
QUESTION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture
async def server(aiohttp_server) -> TestServer:
    return await aiohttp_server(MockUpstream().web_app())


@pytest.fixture
def oai(server: TestServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="x", max_retries=0)


@pytest.fixture
def claude(server: TestServer) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=str(server.make_url("")), api_key="x", max_retries=0)


async def test_chat_completion_echoes_the_question_and_counts_words_as_tokens(oai):
    completion = await oai.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)

    text = completion.choices[0].message.content
    assert text.startswith("Mock reply to: What is the capital of France?")
    assert completion.model == "gpt-4o-mini"
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 3 + 6
    assert completion.usage.completion_tokens == len(text.split())
    assert completion.usage.total_tokens == 9 + len(text.split())


async def test_chat_stream_deltas_join_to_the_non_stream_text_and_end_with_usage(oai):
    plain = await oai.chat.completions.create(model="gpt-4o", messages=QUESTION)
    stream = await oai.chat.completions.create(
        model="gpt-4o", messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    deltas = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert all(len(d.split()) == 1 for d in deltas) and all(d.startswith(" ") for d in deltas[1:])
    assert len(deltas) == plain.usage.completion_tokens
    assert "".join(deltas) == plain.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.model_dump() == plain.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    assert {c.object for c in chunks} == {"chat.completion.chunk"}


async def test_raw_chat_stream_is_sse_ending_with_done(server):
    body = {"model": "mock-stream", "messages": QUESTION, "stream": True}
    async with httpx2.AsyncClient() as client:
        response = await client.post(str(server.make_url("/v1/chat/completions")), json=body)

    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    events = response.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(event.startswith("data: {") for event in events[:-2])


async def test_same_request_same_reply_and_different_question_different_reply(oai):
    first = await oai.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
    again = await oai.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
    other = await oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])

    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.id == again.id
    assert other.choices[0].message.content != first.choices[0].message.content


async def test_max_tokens_caps_the_reply_and_reports_length(oai):
    capped = await oai.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_completion_tokens=3)
    stream = await oai.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=3, stream=True)
    chunks = [chunk async for chunk in stream]

    assert capped.choices[0].message.content == "Mock reply to:"
    assert capped.usage.completion_tokens == 3
    assert capped.choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Mock reply to:"


async def test_content_parts_are_counted_and_echoed(oai):
    messages = [{"role": "user", "content": [{"type": "text", "text": "one two"}, {"type": "text", "text": "three"}]}]
    completion = await oai.chat.completions.create(model="gpt-4o-mini", messages=messages)

    assert completion.usage.prompt_tokens == 3
    assert completion.choices[0].message.content.startswith("Mock reply to: one two three ")


async def test_completions_stream_and_not(oai):
    plain = await oai.completions.create(model="gpt-4o-mini", prompt="Say hello")
    stream = await oai.completions.create(
        model="gpt-4o-mini", prompt="Say hello", stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    assert plain.choices[0].text.startswith("Mock reply to: Say hello")
    assert plain.usage.prompt_tokens == 2
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


async def test_embeddings_are_deterministic_unit_vectors_of_the_asked_size(oai):
    default = await oai.embeddings.create(model="text-embedding-3-small", input="hello world")
    sized = await oai.embeddings.create(model="text-embedding-3-small", input=["hello world", "bye"], dimensions=16)
    as_floats = await oai.embeddings.create(
        model="text-embedding-3-small", input="hello world", encoding_format="float"
    )

    assert len(default.data[0].embedding) == 8
    assert [len(d.embedding) for d in sized.data] == [16, 16]
    assert sized.data[0].embedding != sized.data[1].embedding
    assert as_floats.data[0].embedding == pytest.approx(default.data[0].embedding, rel=1e-6)
    assert sum(v * v for v in as_floats.data[0].embedding) == pytest.approx(1.0)
    assert sized.usage.prompt_tokens == 3
    assert default.model == "text-embedding-3-small"


async def test_models_list_and_retrieve(oai, claude):
    listed = [model.id async for model in oai.models.list()]
    one = await oai.models.retrieve("gpt-4o")
    from_anthropic = [model.id async for model in claude.models.list()]

    assert {"gpt-4o-mini", "gpt-4o", "claude-3-5-haiku-latest", "claude-haiku-4-5", "mock-stream"} <= set(listed)
    assert one.id == "gpt-4o" and one.object == "model"
    assert from_anthropic == listed


async def test_responses_api_stream_and_not(oai):
    response = await oai.responses.create(model="gpt-4o-mini", input="Tell me a joke", instructions="Be funny")
    async with oai.responses.stream(model="gpt-4o-mini", input="Tell me a joke", instructions="Be funny") as stream:
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        final = await stream.get_final_response()

    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text.startswith("Mock reply to: Tell me a joke")
    assert response.usage.input_tokens == 6
    assert response.usage.output_tokens == len(response.output_text.split())
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert "".join(deltas) == final.output_text == response.output_text
    assert final.usage.output_tokens == response.usage.output_tokens


async def test_anthropic_message(claude):
    message = await claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        system=[{"type": "text", "text": "You are terse."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Name a colour"}]}],
    )

    assert message.type == "message" and message.role == "assistant"
    assert message.model == "claude-haiku-4-5"
    assert message.content[0].text.startswith("Mock reply to: Name a colour")
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens == 6
    assert message.usage.output_tokens == len(message.content[0].text.split())


async def test_anthropic_stream_gives_the_same_message_and_usage(claude):
    request = {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "Name a colour"}],
    }
    plain = await claude.messages.create(**request)
    async with claude.messages.stream(**request) as stream:
        text = "".join([delta async for delta in stream.text_stream])
        final = await stream.get_final_message()
    raw = await claude.messages.create(**request, stream=True)
    kinds = [event.type async for event in raw]

    assert text == final.content[0].text == plain.content[0].text
    assert final.usage.input_tokens == plain.usage.input_tokens == 6
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.stop_reason == "end_turn"
    tokens = plain.usage.output_tokens
    assert kinds == ["message_start", "content_block_start"] + ["content_block_delta"] * tokens + [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


async def test_anthropic_max_tokens_stops_early(claude):
    message = await claude.messages.create(
        model="claude-haiku-4-5", max_tokens=2, messages=[{"role": "user", "content": "Hi"}]
    )

    assert message.content[0].text == "Mock reply"
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 2


async def test_reply_header_sets_the_exact_text(oai, claude):
    reply = {"x-mock-reply": "Paris is the capital."}
    completion = await oai.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, extra_headers=reply)
    async with claude.messages.stream(
        model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "?"}], extra_headers=reply
    ) as stream:
        final = await stream.get_final_message()

    assert completion.choices[0].message.content == "Paris is the capital."
    assert completion.usage.completion_tokens == 4
    assert final.content[0].text == "Paris is the capital."


async def test_error_header_fails_with_that_status_in_each_api_shape(oai, claude):
    with pytest.raises(openai.InternalServerError) as server_error:
        await oai.chat.completions.create(
            model="gpt-4o-mini", messages=QUESTION, extra_headers={"x-mock-error-rate": "1"}
        )
    with pytest.raises(openai.RateLimitError) as rate_limited:
        await oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=QUESTION,
            stream=True,
            extra_headers={"x-mock-error-rate": "1", "x-mock-error-status": "429"},
        )
    with pytest.raises(anthropic.RateLimitError) as anthropic_limited:
        await claude.messages.create(
            model="claude-haiku-4-5",
            max_tokens=10,
            messages=[{"role": "user", "content": "Hi"}],
            extra_headers={"x-mock-error-rate": "1", "x-mock-error-status": "429"},
        )

    assert server_error.value.status_code == 500
    assert server_error.value.body["type"] == "server_error"
    assert rate_limited.value.response.headers["retry-after"] == "1"
    assert anthropic_limited.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "mock upstream: injected failure"},
    }


async def test_malformed_knob_headers_are_ignored(oai):
    headers = {
        "x-mock-error-rate": "lots",
        "x-mock-error-status": "200",
        "x-mock-latency-ms": "-5",
        "x-mock-hang": "perhaps",
        "x-mock-stream-cut-after": "soon",
    }
    completion = await oai.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, extra_headers=headers)

    assert completion.choices[0].finish_reason == "stop"


async def test_latency_header_delays_the_answer(oai):
    started = time.perf_counter()
    await oai.chat.completions.create(
        model="gpt-4o-mini", messages=QUESTION, extra_headers={"x-mock-latency-ms": "100"}
    )

    assert time.perf_counter() - started >= 0.1


async def test_stream_timing_knobs_space_the_events(oai):
    started = time.perf_counter()
    stream = await oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        stream=True,
        extra_headers={"x-mock-ttft-ms": "50", "x-mock-inter-token-ms": "20"},
    )
    async for _ in stream:
        pass

    assert time.perf_counter() - started >= 0.05 + 3 * 0.02


async def test_hang_header_never_answers(oai, claude):
    with pytest.raises(openai.APITimeoutError):
        await oai.chat.completions.create(
            model="gpt-4o-mini", messages=QUESTION, timeout=0.2, extra_headers={"x-mock-hang": "1"}
        )
    with pytest.raises(anthropic.APITimeoutError):
        await claude.messages.create(
            model="claude-haiku-4-5",
            max_tokens=10,
            messages=[{"role": "user", "content": "Hi"}],
            timeout=0.2,
            extra_headers={"x-mock-hang": "true"},
        )


async def test_cut_stream_resets_the_connection(oai):
    stream = await oai.chat.completions.create(
        model="gpt-4o-mini", messages=QUESTION, stream=True, extra_headers={"x-mock-stream-cut-after": "2"}
    )
    contents = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            contents.append(chunk.choices[0].delta.content)

    assert contents == ["", "Mock", " reply"]


async def test_invalid_json_gets_400_in_the_api_shape(server):
    async with httpx2.AsyncClient() as client:
        chat = await client.post(str(server.make_url("/v1/chat/completions")), content=b"{not json")
        messages = await client.post(str(server.make_url("/v1/messages")), content=b"[1, 2]")
        unknown = await client.get(str(server.make_url("/v1/nowhere")))
        not_utf8 = await client.post(str(server.make_url("/v1/chat/completions")), content=b'{"model": "\xff"}')

    assert chat.status_code == 400
    assert chat.json()["error"]["type"] == "invalid_request_error"
    assert set(chat.json()["error"]) == {"message", "type", "code", "param"}
    assert messages.status_code == 400
    assert messages.json()["type"] == "error"
    assert messages.json()["error"]["type"] == "invalid_request_error"
    assert not_utf8.status_code == 400
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_url"


async def test_handle_in_process_streams_raw_sse_events():
    upstream = MockUpstream()
    body = msgspec.json.encode({"model": "claude-haiku-4-5", "max_tokens": 3, "messages": QUESTION[1:], "stream": True})

    reply = await upstream.handle("POST", "/v1/messages", "", CIMultiDict({"X-Mock-Reply": "a b c d"}), body)
    events = [event async for event in reply.chunks]

    assert reply.status == 200 and reply.body is None
    assert reply.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert events[0].startswith(b"event: message_start\ndata: {")
    assert events[3] == (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"a"}}\n\n'
    )
    assert events[-2] == (
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"max_tokens",'
        b'"stop_sequence":null},"usage":{"output_tokens":3}}\n\n'
    )
    assert len(events) == 3 + 3 + 3


async def test_handle_in_process_answers_whole_bodies_and_errors():
    upstream = MockUpstream(MockSettings(error_status=503))
    body = msgspec.json.encode({"model": "gpt-4o", "messages": QUESTION})

    reply = await upstream.handle("POST", "/v1/chat/completions", "", {}, body)
    failed = await upstream.handle("POST", "/v1/chat/completions", "", {"x-mock-error-rate": "1"}, body)

    assert reply.status == 200 and reply.chunks is None
    assert msgspec.json.decode(reply.body)["choices"][0]["message"]["role"] == "assistant"
    assert failed.status == 503
    assert msgspec.json.decode(failed.body)["error"]["type"] == "server_error"


async def test_reply_header_that_is_not_utf8_is_ignored():
    body = msgspec.json.encode({"model": "gpt-4o", "messages": QUESTION})

    # aiohttp hands undecodable header bytes over as lone surrogates.
    reply = await MockUpstream().handle("POST", "/v1/chat/completions", "", {"x-mock-reply": "caf\udce9"}, body)

    assert msgspec.json.decode(reply.body)["choices"][0]["message"]["content"].startswith("Mock reply to: What")


async def test_error_draws_are_reproducible_from_the_seed():
    body = msgspec.json.encode({"model": "gpt-4o", "messages": QUESTION})

    async def statuses(seed: int) -> list[int]:
        upstream = MockUpstream(MockSettings(error_rate=0.5, seed=seed))
        return [(await upstream.handle("POST", "/v1/chat/completions", "", {}, body)).status for _ in range(40)]

    first = await statuses(7)

    assert first == await statuses(7)
    assert {200, 500} == set(first)


async def test_hang_in_process_is_cancellable():
    upstream = MockUpstream(MockSettings(hang=True))

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(upstream.handle("GET", "/v1/models", "", {}, b""), 0.05)


def test_arguments_reject_out_of_range_knobs():
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    args = parser.parse_args(["--port", "0", "--latency-ms", "5", "--error-rate", "0.25", "--hang"])
    assert (args.host, args.latency_ms, args.error_rate, args.error_status, args.hang) == (
        "127.0.0.1", 5.0, 0.25, 500, True
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--port", "0", "--error-rate", "2"])


def test_main_prints_one_ready_line_and_exits_0_on_sigterm():
    code = (
        "import argparse, sys; from gateway.mock_upstream import add_arguments, main; "
        "p = argparse.ArgumentParser(); add_arguments(p); sys.exit(main(p.parse_args(sys.argv[1:])))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("mock upstream listening on http://127.0.0.1:")
        models = httpx2.get(line.split()[-1] + "/v1/models")
        assert models.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert process.stdout.read() == ""
    finally:
        process.kill()
        process.stdout.close()


# -- tool calls -------------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "hourly": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
        },
    },
}
WEATHER_ARGUMENTS = {"city": "mock", "days": 1, "unit": "celsius", "hourly": True, "tags": ["mock"]}
CLAUDE_WEATHER_TOOL = {"name": "get_weather", "input_schema": WEATHER_TOOL["function"]["parameters"]}


async def test_tool_call_header_answers_a_tool_call_with_arguments_fitting_the_schema(oai):
    completion = await oai.chat.completions.create(
        model="gpt-4o", messages=QUESTION, tools=[WEATHER_TOOL], extra_headers={"x-mock-tool-call": "get_weather"}
    )
    [call] = completion.choices[0].message.tool_calls
    assert completion.choices[0].finish_reason == "tool_calls" and completion.choices[0].message.content is None
    assert call.function.name == "get_weather"
    assert msgspec.json.decode(call.function.arguments) == WEATHER_ARGUMENTS
    async with oai.chat.completions.stream(
        model="gpt-4o", messages=QUESTION, tools=[WEATHER_TOOL], extra_headers={"x-mock-tool-call": "get_weather"}
    ) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.arguments == call.function.arguments
    assert final.choices[0].finish_reason == "tool_calls"


async def test_forced_tool_choice_answers_a_tool_call_and_none_never_does(oai, claude):
    forced = await oai.chat.completions.create(
        model="gpt-4o", messages=QUESTION, tools=[WEATHER_TOOL], tool_choice="required"
    )
    assert forced.choices[0].message.tool_calls[0].function.name == "get_weather"
    plain = await oai.chat.completions.create(
        model="gpt-4o", messages=QUESTION, tools=[WEATHER_TOOL], tool_choice="none", extra_headers={"x-mock-tool-call": "*"}
    )
    assert plain.choices[0].message.tool_calls is None
    message = await claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=QUESTION[1:],
        tools=[CLAUDE_WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert message.stop_reason == "tool_use"
    assert [(block.type, block.name, block.input) for block in message.content] == [("tool_use", "get_weather", WEATHER_ARGUMENTS)]
    async with claude.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=QUESTION[1:],
        tools=[CLAUDE_WEATHER_TOOL],
        tool_choice={"type": "any"},
    ) as stream:
        final = await stream.get_final_message()
    assert final.content[0].input == WEATHER_ARGUMENTS and final.stop_reason == "tool_use"


async def test_tool_results_are_echoed_like_user_text(oai, claude):
    completion = await oai.chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "Sunny today"},
        ],
    )
    assert completion.choices[0].message.content.startswith("Mock reply to: Sunny today")
    message = await claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "Sunny today"}]},
        ],
    )
    assert message.content[0].text.startswith("Mock reply to: Sunny today")


async def test_mock_target_lets_a_request_steer_one_named_mock_only():
    body = msgspec.json.encode({"model": "gpt-4o", "messages": QUESTION})
    knobs = {"x-mock-target": "primary, other", "x-mock-error-rate": "1", "x-mock-reply": "steered"}

    named = await MockUpstream(name="primary").handle("POST", "/v1/chat/completions", "", knobs, body)
    spared = await MockUpstream(name="backup").handle("POST", "/v1/chat/completions", "", knobs, body)

    assert named.status == 500
    assert spared.status == 200
    assert msgspec.json.decode(spared.body)["choices"][0]["message"]["content"].startswith("Mock reply to:")
