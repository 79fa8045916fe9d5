"""One SDK for every provider: the official SDKs through the gateway to a provider of the other API.

The providers are of type openai and anthropic, both pointed at the built-in mock
served over HTTP; the provider's type decides the shape it is spoken to in.
"""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from gateway.testing import run_gateway

from translate_probe import SEEN

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}}
ANTHROPIC_WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": WEATHER["function"]["parameters"],
}
ASK = [{"role": "user", "content": "Tell me about otters"}]


def translating_config(url, *plugins, **extra):
    return {
        "providers": {
            "openai": {"type": "openai", "base_url": url, "api_key": "sk-openai-provider"},
            "anthropic": {"type": "anthropic", "base_url": url, "api_key": "sk-ant-provider"},
        },
        "routes": [
            {"model": "claude-*", "provider": "anthropic"},
            {"model": "gpt-*", "provider": "openai"},
        ],
        "plugins": [{"use": "translate_probe:Recorder"}, *plugins],
        **extra,
    }


@pytest.fixture
async def gw(tmp_path, mock_http_upstream):
    async with run_gateway(translating_config(mock_http_upstream), tmp_path) as running:
        yield running


# -- OpenAI SDK -> a provider of type anthropic ------------------------------------------------


async def test_openai_sdk_gets_a_chat_completion_from_an_anthropic_provider(gw):
    raw = await gw.openai().chat.completions.with_raw_response.create(
        model="claude-sonnet-4-5", messages=[{"role": "system", "content": "Be brief."}, *ASK]
    )
    completion = raw.parse()
    native = await gw.anthropic().messages.create(model="claude-sonnet-4-5", max_tokens=1000, system="Be brief.", messages=ASK)
    assert raw.headers["x-gateway-provider"] == "anthropic"
    assert completion.object == "chat.completion"
    assert completion.model == "claude-sonnet-4-5"
    assert completion.id.startswith("msg_mock_")  # Anthropic's id, kept
    assert completion.choices[0].message.content == native.content[0].text
    assert completion.choices[0].message.content.startswith("Mock reply to: Tell me about otters")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == native.usage.input_tokens == 6
    assert completion.usage.completion_tokens == native.usage.output_tokens
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


async def test_plugins_see_the_callers_shape_and_the_exchange_names_the_providers(gw):
    await gw.openai().chat.completions.create(model="claude-haiku-4-5", messages=ASK)
    assert SEEN["api"] == "openai" and SEEN["provider_api"] == "anthropic"
    assert "max_tokens" not in SEEN["request_keys"]  # the caller's body, untranslated
    assert SEEN["answer"]["object"] == "chat.completion"
    assert SEEN["usage"].input_tokens == 4 and SEEN["usage"].output_tokens > 0


async def test_openai_max_tokens_becomes_anthropic_max_tokens_and_length_the_finish_reason(gw):
    completion = await gw.openai().chat.completions.create(model="claude-sonnet-4-5", messages=ASK, max_completion_tokens=3)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


async def test_openai_stream_from_an_anthropic_provider_ends_with_usage_and_done(gw):
    client = gw.openai()
    stream = await client.chat.completions.create(
        model="claude-sonnet-4-5", messages=ASK, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    seen = dict(SEEN)
    plain = await client.chat.completions.create(model="claude-sonnet-4-5", messages=ASK)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.object == "chat.completion.chunk" and chunk.model == "claude-sonnet-4-5" for chunk in chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == plain.choices[0].message.content
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    assert seen["chunks"][-1] == (None, None)  # the chunk hooks saw data: [DONE]
    assert seen["usage"].output_tokens == plain.usage.completion_tokens


async def test_translated_stream_events_arrive_as_the_provider_sends_them(gw):
    """Not buffered: each Anthropic event becomes a chunk the moment it arrives."""
    import time

    stream = await gw.openai().chat.completions.create(
        model="claude-sonnet-4-5", messages=ASK, stream=True, extra_headers={"x-mock-inter-token-ms": "60"}
    )
    started = time.perf_counter()
    arrivals = [time.perf_counter() - started async for _ in stream]
    assert len(arrivals) > 10
    assert arrivals[-1] - arrivals[1] > 0.5  # the tokens kept their pace through the translation


async def test_openai_stream_without_include_usage_has_no_usage_chunk_but_usage_is_counted(gw):
    stream = await gw.openai().chat.completions.create(model="claude-sonnet-4-5", messages=ASK, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    assert SEEN["usage"].output_tokens > 0


async def test_openai_tool_call_from_an_anthropic_provider_and_the_tool_result_back(gw):
    client = gw.openai()
    first = await client.chat.completions.create(
        model="claude-sonnet-4-5",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "mock", "unit": "celsius"}
    second = await client.chat.completions.create(
        model="claude-sonnet-4-5",
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny and 21 degrees"},
        ],
        tools=[WEATHER, TIME],
    )
    assert second.choices[0].message.content.startswith("Mock reply to: Sunny and 21 degrees")
    assert second.choices[0].finish_reason == "stop"


async def test_openai_parallel_tool_calls_stream_from_an_anthropic_provider(gw):
    client = gw.openai()
    async with client.chat.completions.stream(
        model="claude-sonnet-4-5",
        messages=[{"role": "user", "content": "Weather and time in Paris?"}],
        tools=[WEATHER, TIME],
        extra_headers={"x-mock-tool-call": "get_weather,get_time"},
    ) as stream:
        final = await stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [call.function.name for call in calls] == ["get_weather", "get_time"]
    assert [json.loads(call.function.arguments) for call in calls] == [{"city": "mock", "unit": "celsius"}, {"zone": "mock"}]
    assert all(call.id.startswith("toolu_mock_") for call in calls)
    assert final.choices[0].finish_reason == "tool_calls"


async def test_a_streamed_tool_call_from_an_anthropic_provider_has_no_content_as_from_openai(gw):
    """OpenAI opens a tool-call stream with content null, not "": the SDK's final message
    then has content None, as the buffered answer does, not an empty string."""
    client = gw.openai()
    asked = {"model": "claude-sonnet-4-5", "messages": ASK, "tools": [WEATHER], "tool_choice": "required"}
    async with client.chat.completions.stream(**asked) as stream:
        events = [event.type async for event in stream]
        final = await stream.get_final_completion()
    buffered = await client.chat.completions.create(**asked)
    chunks = [chunk async for chunk in await client.chat.completions.create(**asked, stream=True)]
    assert "content.delta" not in events and "content.done" not in events
    assert final.choices[0].message.content is None is buffered.choices[0].message.content
    assert final.choices[0].message.tool_calls[0].function.arguments == buffered.choices[0].message.tool_calls[0].function.arguments
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content is None and first.tool_calls[0].function.name == "get_weather"


async def test_openai_images_reach_an_anthropic_provider(gw):
    image = "data:image/png;base64,iVBORw0KGgo="
    completion = await gw.openai().chat.completions.create(
        model="claude-sonnet-4-5",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": image}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/otter.jpg"}},
                ],
            }
        ],
    )
    assert completion.choices[0].message.content.startswith("Mock reply to: What is in this picture?")


async def test_parameters_without_an_anthropic_equivalent_get_400_naming_them(gw):
    client = gw.openai()
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="claude-sonnet-4-5", messages=ASK, n=2)
    assert caught.value.body["code"] == "invalid_request" and caught.value.body["param"] == "n"
    assert "'n'" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="claude-sonnet-4-5", messages=ASK, logprobs=True)
    assert caught.value.body["param"] == "logprobs"
    # the same parameters are fine for an OpenAI provider
    await client.chat.completions.create(model="gpt-4o", messages=ASK, n=1, logprobs=True)


async def test_anthropic_provider_errors_reach_the_openai_sdk_as_its_own_classes(gw):
    client = gw.openai()
    for status, error_class in ((429, openai.RateLimitError), (400, openai.BadRequestError), (500, openai.InternalServerError)):
        with pytest.raises(error_class) as caught:
            await client.chat.completions.create(
                model="claude-sonnet-4-5",
                messages=ASK,
                extra_headers={"x-mock-error-rate": "1", "x-mock-error-status": str(status)},
            )
        assert caught.value.status_code == status
        assert set(caught.value.body) == {"message", "type", "code", "param"}
        assert caught.value.body["message"] == "mock upstream: injected failure"
    assert caught.value.response.headers.get("x-gateway-provider") == "anthropic"


async def test_a_broken_anthropic_stream_ends_with_an_openai_error_event(gw):
    stream = await gw.openai().chat.completions.create(
        model="claude-sonnet-4-5", messages=ASK, stream=True, extra_headers={"x-mock-stream-cut-after": "2"}
    )
    texts = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            texts.append(chunk.choices[0].delta.content)
    assert len(texts) == 3  # the role chunk and two tokens came through first
    assert caught.value.body["code"] == "upstream_error"
    assert SEEN["error"].code == "upstream_error"


# -- Anthropic SDK -> a provider of type openai ------------------------------------------------


async def test_anthropic_sdk_gets_a_message_from_an_openai_provider(gw):
    raw = await gw.anthropic().messages.with_raw_response.create(
        model="gpt-4o", max_tokens=200, system="Be brief.", messages=ASK, stop_sequences=["\n\nHuman:"]
    )
    message = await raw.parse()
    seen = dict(SEEN)
    native = await gw.openai().chat.completions.create(
        model="gpt-4o", messages=[{"role": "system", "content": "Be brief."}, *ASK]
    )
    assert raw.headers["x-gateway-provider"] == "openai"
    assert message.type == "message" and message.role == "assistant" and message.model == "gpt-4o"
    assert message.id.startswith("chatcmpl-mock-")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == native.choices[0].message.content
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == native.usage.prompt_tokens
    assert message.usage.output_tokens == native.usage.completion_tokens
    assert seen["api"] == "anthropic" and seen["provider_api"] == "openai"


async def test_anthropic_sdk_stream_helpers_accept_a_translated_openai_stream(gw):
    client = gw.anthropic()
    async with client.messages.stream(model="gpt-4o", max_tokens=200, messages=ASK) as stream:
        text = "".join([part async for part in stream.text_stream])
        final = await stream.get_final_message()
    names = [name for name, _ in SEEN["chunks"]]
    plain = await client.messages.create(model="gpt-4o", max_tokens=200, messages=ASK)
    assert text == plain.content[0].text == final.content[0].text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.usage.input_tokens == plain.usage.input_tokens == 4
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 1


async def test_anthropic_sdk_tool_use_from_an_openai_provider_and_the_tool_result_back(gw):
    client = gw.anthropic()
    first = await client.messages.create(
        model="gpt-4o",
        max_tokens=200,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[ANTHROPIC_WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert first.stop_reason == "tool_use"
    [tool_use] = first.content
    assert tool_use.type == "tool_use" and tool_use.name == "get_weather"
    assert tool_use.input == {"city": "mock", "unit": "celsius"}
    second = await client.messages.create(
        model="gpt-4o",
        max_tokens=200,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "Rain, 12 degrees"}]},
        ],
        tools=[ANTHROPIC_WEATHER],
    )
    assert second.content[0].text.startswith("Mock reply to: Rain, 12 degrees")
    assert second.stop_reason == "end_turn"


async def test_anthropic_sdk_streams_parallel_tool_use_from_an_openai_provider(gw):
    client = gw.anthropic()
    time_tool = {"name": "get_time", "input_schema": TIME["function"]["parameters"]}
    async with client.messages.stream(
        model="gpt-4o",
        max_tokens=200,
        messages=[{"role": "user", "content": "Weather and time?"}],
        tools=[ANTHROPIC_WEATHER, time_tool],
        extra_headers={"x-mock-tool-call": "*"},
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [(block.type, block.name, block.input) for block in final.content] == [
        ("tool_use", "get_weather", {"city": "mock", "unit": "celsius"}),
        ("tool_use", "get_time", {"zone": "mock"}),
    ]
    assert final.usage.output_tokens > 0


async def test_openai_provider_errors_reach_the_anthropic_sdk_as_its_own_classes(gw):
    client = gw.anthropic()
    for status, error_class in ((429, anthropic.RateLimitError), (404, anthropic.NotFoundError), (503, anthropic.InternalServerError)):
        with pytest.raises(error_class) as caught:
            await client.messages.create(
                model="gpt-4o",
                max_tokens=20,
                messages=ASK,
                extra_headers={"x-mock-error-rate": "1", "x-mock-error-status": str(status)},
            )
        assert caught.value.status_code == status
        assert caught.value.body["type"] == "error"
        assert caught.value.body["error"]["message"] == "mock upstream: injected failure"


async def test_anthropic_only_parameters_get_400_naming_them(gw):
    with pytest.raises(anthropic.BadRequestError) as caught:
        await gw.anthropic().messages.create(
            model="gpt-4o", max_tokens=20, messages=ASK, thinking={"type": "enabled", "budget_tokens": 1024}
        )
    assert caught.value.body["error"]["type"] == "invalid_request"
    assert "'thinking'" in caught.value.body["error"]["message"]


async def test_a_broken_openai_stream_ends_with_an_anthropic_error_event(gw):
    client = gw.anthropic()
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with client.messages.stream(
            model="gpt-4o", max_tokens=200, messages=ASK, extra_headers={"x-mock-stream-cut-after": "2"}
        ) as stream:
            async for _ in stream:
                pass
    assert caught.value.body["error"]["type"] == "upstream_error"


# -- at the provider boundary: routing, fallback, spans ------------------------------------------


async def test_a_fallback_to_a_provider_of_the_other_api_is_translated(tmp_path, mock_http_upstream):
    config = translating_config(mock_http_upstream, {"use": "translate_probe:Fallback", "config": {"to": "anthropic"}})
    config["providers"] = {"down": {"type": "openai", "base_url": "http://127.0.0.1:9", "api_key": "k"}, **config["providers"]}
    config["routes"] = [{"prefix": "/v1/", "provider": "down"}]
    async with run_gateway(config, tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(model="claude-sonnet-4-5", messages=ASK)
    completion = raw.parse()
    assert raw.headers["x-gateway-provider"] == "anthropic"
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content.startswith("Mock reply to: Tell me about otters")


async def test_a_fallback_of_the_other_api_that_cannot_take_the_request_is_skipped(tmp_path, mock_http_upstream):
    """The primary fails; its fallback is an Anthropic provider, and the request asks for
    logprobs, which Anthropic has not: the caller gets the primary's failure (the request
    is fine for its own API), not a 400 about a parameter of a provider it never chose."""
    breaker = {"fallbacks": {"down": ["anthropic"]}, "fallback_models": {"anthropic": {"*": "claude-haiku-4-5"}}}
    config = translating_config(mock_http_upstream, {"use": "breaker", "config": breaker})
    config["providers"] = {"down": {"type": "openai", "base_url": "http://127.0.0.1:9", "api_key": "k"}, **config["providers"]}
    config["routes"] = [{"prefix": "/v1/", "provider": "down"}]
    async with run_gateway(config, tmp_path) as gw:
        client = gw.openai()
        served = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=ASK)
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="gpt-4o", messages=ASK, logprobs=True)
    assert served.headers["x-gateway-provider"] == "anthropic"  # the fallback takes what it can
    assert caught.value.status_code == 502 and caught.value.body["code"] == "upstream_error"
    assert caught.value.response.headers["x-gateway-provider"] == "down"


async def test_client_span_carries_the_providers_path_model_and_usage(gw):
    await gw.openai().chat.completions.create(model="claude-sonnet-4-5", messages=ASK)
    stream = await gw.anthropic().messages.create(model="gpt-4o", max_tokens=50, messages=ASK, stream=True)
    async for _ in stream:
        pass
    buffered, streamed = gw.spans_named("chat claude-sonnet-4-5"), gw.spans_named("chat gpt-4o")
    assert buffered and streamed
    for span, provider_type, path in ((buffered[0], "anthropic", "/v1/messages"), (streamed[0], "openai", "/v1/chat/completions")):
        attributes = span.attributes
        assert attributes["gen_ai.provider.name"] == provider_type
        assert attributes["url.full"].endswith(path)
        assert attributes["gen_ai.response.model"] == attributes["gen_ai.request.model"]
        assert attributes["gen_ai.usage.input_tokens"] == 4
        assert attributes["gen_ai.usage.output_tokens"] > 0


async def test_the_untranslated_path_is_unchanged(gw):
    """An OpenAI caller on an OpenAI provider and an Anthropic caller on an Anthropic one pass as before."""
    completion = await gw.openai().chat.completions.create(model="gpt-4o", messages=ASK, n=1)
    message = await gw.anthropic().messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=ASK)
    assert completion.id.startswith("chatcmpl-mock-") and message.id.startswith("msg_mock_")


# -- what reaches the provider -------------------------------------------------------------------


class Recorder:
    """A provider double that remembers each request and answers in the shape of its path."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    async def handle(self, request):
        from aiohttp import web

        body = await request.json()
        self.seen.append({"path": request.path, "query": request.query_string, "headers": dict(request.headers), "body": body})
        if request.path.endswith("/messages"):
            return web.json_response(
                {
                    "id": "msg_rec",
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": [{"type": "text", "text": "recorded"}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": 3, "output_tokens": 1},
                }
            )
        return web.json_response(
            {
                "id": "chatcmpl-rec",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "recorded"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }
        )


@pytest.fixture
async def recorder():
    from aiohttp import web

    from gateway.testing import serve_app

    upstream = Recorder()
    app = web.Application()
    app.router.add_post("/{tail:.*}", upstream.handle)
    async with serve_app(app) as url:
        upstream.url = url
        yield upstream


async def test_the_anthropic_provider_gets_an_anthropic_request_with_its_own_key(tmp_path, recorder):
    config = {"providers": {"claude": {"type": "anthropic", "base_url": recorder.url, "api_key": "sk-ant-provider"}}}
    async with run_gateway(config, tmp_path) as gw:
        completion = await gw.openai(api_key="sk-caller").chat.completions.create(
            model="claude-sonnet-4-5", messages=ASK, stop=["END"], temperature=1.5
        )
    assert completion.choices[0].message.content == "recorded"
    [seen] = recorder.seen
    assert seen["path"] == "/v1/messages"
    assert seen["headers"]["x-api-key"] == "sk-ant-provider"
    assert seen["headers"]["anthropic-version"] == "2023-06-01"
    assert "sk-caller" not in str(seen["headers"])
    assert seen["body"] == {
        "model": "claude-sonnet-4-5",
        "stop_sequences": ["END"],
        "temperature": 1.0,
        "messages": [{"role": "user", "content": "Tell me about otters"}],
        "max_tokens": 64000,
    }


async def test_azure_style_provider_gets_its_key_in_the_api_key_header(tmp_path, recorder):
    config = {
        "providers": {
            "azure": {"type": "openai", "base_url": recorder.url + "/openai/v1", "api_key": "azure-key", "api_key_header": "api-key"}
        }
    }
    async with run_gateway(config, tmp_path) as gw:
        message = await gw.anthropic().messages.create(model="gpt-4o", max_tokens=50, messages=ASK)
    assert message.content[0].text == "recorded"
    [seen] = recorder.seen
    assert seen["path"] == "/openai/v1/chat/completions"
    assert seen["headers"]["api-key"] == "azure-key"
    assert "Authorization" not in seen["headers"]
    assert seen["body"]["max_tokens"] == 50  # a compatible server: max_tokens, not max_completion_tokens


def test_provider_urls_and_max_tokens_field_for_openai_compatible_servers():
    from gateway.config import ProviderConfig
    from gateway.proxy import Provider

    def provider(base_url, **extra):
        return Provider("p", ProviderConfig(type="openai", base_url=base_url, **extra))

    gemini = provider("https://generativelanguage.googleapis.com/v1beta/openai/")
    assert gemini.url_for("/v1/chat/completions", "") == "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions"
    groq = provider("https://api.groq.com/openai/v1")
    assert groq.url_for("/v1/chat/completions", "") == "https://api.groq.com/openai/v1/chat/completions"
    assert provider("https://openrouter.ai/api").url_for("/v1/chat/completions", "") == "https://openrouter.ai/api/v1/chat/completions"
    assert provider("http://localhost:11434/v1").url_for("/v1/chat/completions", "") == "http://localhost:11434/v1/chat/completions"
    assert Provider("o", ProviderConfig(type="openai")).max_tokens_field == "max_completion_tokens"
    assert provider("https://my-resource.openai.azure.com/openai/v1").max_tokens_field == "max_completion_tokens"
    assert groq.max_tokens_field == "max_tokens"
    azure = provider("https://r.openai.azure.com/openai/v1", api_key="k", api_key_header="api-key")
    assert azure.extra_headers == {"api-key": "k"}
    assert provider("https://x", api_key="k").extra_headers == {"Authorization": "Bearer k"}


async def test_whitespace_only_stop_sequences_are_not_sent_to_anthropic(tmp_path, recorder):
    """OpenAI takes stop=["\\n"]; Anthropic answers 400 to an empty or whitespace-only
    stop sequence ("each stop sequence must contain non-whitespace"), so they are left out."""
    config = {"providers": {"claude": {"type": "anthropic", "base_url": recorder.url, "api_key": "k"}}}
    async with run_gateway(config, tmp_path) as gw:
        client = gw.openai()
        await client.chat.completions.create(model="claude-sonnet-4-5", messages=ASK, stop=["\n", "END", " \t", ""])
        await client.chat.completions.create(model="claude-sonnet-4-5", messages=ASK, stop="\n\n")
    first, second = recorder.seen
    assert first["body"]["stop_sequences"] == ["END"]
    assert "stop_sequences" not in second["body"]


async def test_no_tools_reach_openai_as_no_tools_rather_than_an_empty_list(tmp_path, recorder):
    """An Anthropic caller may send tools=[] (and a tool_choice with it); OpenAI answers 400
    to an empty tools list and to a tool_choice without tools, so neither is sent."""
    config = {"providers": {"gpt": {"type": "openai", "base_url": recorder.url, "api_key": "k"}}}
    async with run_gateway(config, tmp_path) as gw:
        message = await gw.anthropic().messages.create(
            model="gpt-4o", max_tokens=50, messages=ASK, tools=[], tool_choice={"type": "auto", "disable_parallel_tool_use": True}
        )
    assert message.content[0].text == "recorded"
    [seen] = recorder.seen
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(seen["body"])


async def test_the_callers_query_string_is_not_sent_to_a_provider_of_the_other_api(tmp_path, recorder):
    """The anthropic SDK's beta resources post to /v1/messages?beta=true; an Azure-style
    OpenAI client adds ?api-version=...: parameters of the caller's API, not the provider's."""
    config = {
        "providers": {
            "gpt": {"type": "openai", "base_url": recorder.url, "api_key": "k"},
            "claude": {"type": "anthropic", "base_url": recorder.url, "api_key": "k"},
        },
        "routes": [{"model": "claude-*", "provider": "claude"}, {"model": "gpt-*", "provider": "gpt"}],
    }
    async with run_gateway(config, tmp_path) as gw:
        message = await gw.anthropic().beta.messages.create(model="gpt-4o", max_tokens=50, messages=ASK)
        azure = gw.openai(default_query={"api-version": "2024-10-21"})
        completion = await azure.chat.completions.create(model="claude-sonnet-4-5", messages=ASK)
        await azure.chat.completions.create(model="gpt-4o", messages=ASK)  # its own API: kept
    assert message.content[0].text == completion.choices[0].message.content == "recorded"
    to_openai, to_anthropic, untranslated = recorder.seen
    assert (to_openai["path"], to_openai["query"]) == ("/v1/chat/completions", "")
    assert (to_anthropic["path"], to_anthropic["query"]) == ("/v1/messages", "")
    assert untranslated["query"] == "api-version=2024-10-21"


async def _cached_usage_upstream(request):
    """A provider whose answers report prompt-cache reads and writes, in its own API's shape."""
    from aiohttp import web

    body = await request.json()
    if request.path.endswith("/messages"):
        usage = {"input_tokens": 10, "cache_read_input_tokens": 200, "cache_creation_input_tokens": 100, "output_tokens": 2}
        message = {"id": "msg_c", "type": "message", "role": "assistant", "model": body["model"], "stop_sequence": None}
        if not body.get("stream"):
            content = [{"type": "text", "text": "cached"}]
            return web.json_response({**message, "content": content, "stop_reason": "end_turn", "usage": usage})
        events = [
            ("message_start", {"message": {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}}),
            ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "cached"}}),
            ("content_block_stop", {"index": 0}),
            ("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 2}}),
            ("message_stop", {}),
        ]
        text = "".join(f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n" for name, data in events)
        return web.Response(text=text, content_type="text/event-stream")
    details = {"cached_tokens": 200, "cache_write_tokens": 100}
    usage = {"prompt_tokens": 310, "completion_tokens": 2, "total_tokens": 312, "prompt_tokens_details": details}
    head = {"id": "chatcmpl-c", "created": 1, "model": body["model"]}
    if not body.get("stream"):
        choice = {"index": 0, "message": {"role": "assistant", "content": "cached"}, "finish_reason": "stop"}
        return web.json_response({**head, "object": "chat.completion", "choices": [choice], "usage": usage})
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "cached"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": usage},
    ]
    text = "".join(f"data: {json.dumps({**head, 'object': 'chat.completion.chunk', **chunk})}\n\n" for chunk in chunks)
    return web.Response(text=text + "data: [DONE]\n\n", content_type="text/event-stream")


async def test_prompt_cache_reads_and_writes_reach_either_sdk_in_its_own_usage_fields(tmp_path):
    """Anthropic's cache_creation_input_tokens is OpenAI's prompt_tokens_details.cache_write_tokens
    and back; reads are cached_tokens / cache_read_input_tokens; OpenAI's prompt counts all three."""
    from aiohttp import web

    from gateway.testing import serve_app

    app = web.Application()
    app.router.add_post("/{tail:.*}", _cached_usage_upstream)
    async with serve_app(app) as url:
        config = translating_config(url)
        config["plugins"] = []
        async with run_gateway(config, tmp_path) as gw:
            client = gw.openai()
            completion = await client.chat.completions.create(model="claude-sonnet-4-5", messages=ASK)
            stream = await client.chat.completions.create(
                model="claude-sonnet-4-5", messages=ASK, stream=True, stream_options={"include_usage": True}
            )
            streamed = [chunk async for chunk in stream][-1].usage
            anthropic_client = gw.anthropic()
            message = await anthropic_client.messages.create(model="gpt-4o", max_tokens=50, messages=ASK)
            async with anthropic_client.messages.stream(model="gpt-4o", max_tokens=50, messages=ASK) as events:
                final = await events.get_final_message()
    for usage in (completion.usage, streamed):
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (310, 2, 312)
        assert (usage.prompt_tokens_details.cached_tokens, usage.prompt_tokens_details.cache_write_tokens) == (200, 100)
    for usage in (message.usage, final.usage):
        assert (usage.input_tokens, usage.output_tokens) == (10, 2)
        assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (200, 100)


async def _azure_stream(request):
    """Azure OpenAI's stream: a first chunk of prompt filter results with no choices, id or model."""
    from aiohttp import web

    filters = {"choices": [], "created": 0, "id": "", "model": "", "object": "", "prompt_filter_results": []}
    head = {"id": "chatcmpl-azure", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-2024-11-20"}
    chunks = [
        filters,
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**head, "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}},
    ]
    text = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks)
    return web.Response(text=text + "data: [DONE]\n\n", content_type="text/event-stream")


async def test_an_azure_stream_opening_with_prompt_filter_results_keeps_its_message_id(tmp_path):
    from aiohttp import web

    from gateway.testing import serve_app

    app = web.Application()
    app.router.add_post("/{tail:.*}", _azure_stream)
    async with serve_app(app) as url:
        config = {"providers": {"azure": {"type": "openai", "base_url": url + "/openai/v1", "api_key": "k"}}}
        async with run_gateway(config, tmp_path) as gw:
            async with gw.anthropic().messages.stream(model="gpt-4o", max_tokens=50, messages=ASK) as stream:
                final = await stream.get_final_message()
    assert (final.id, final.model) == ("chatcmpl-azure", "gpt-4o-2024-11-20")
    assert final.content[0].text == "Hello" and final.usage.output_tokens == 1


async def test_an_untranslated_path_errs_in_the_callers_shape(tmp_path):
    """Embeddings or count_tokens have no counterpart in the other API: they go as they
    are, and the provider's 404 comes back in the caller's shape all the same."""
    from aiohttp import web

    from gateway.testing import serve_app

    async def not_found(request):
        if request.headers.get("x-api-key"):  # the anthropic provider
            return web.json_response({"type": "error", "error": {"type": "not_found_error", "message": "no such path"}}, status=404)
        return web.json_response({"error": {"message": "no such path", "type": "invalid_request_error", "code": None}}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", not_found)
    async with serve_app(app) as url:
        config = {
            "providers": {
                "claude": {"type": "anthropic", "base_url": url, "api_key": "k"},
                "gpt": {"type": "openai", "base_url": url, "api_key": "k"},
            },
            "routes": [{"prefix": "/v1/messages", "provider": "gpt"}, {"prefix": "/v1/", "provider": "claude"}],
        }
        async with run_gateway(config, tmp_path) as gw:
            with pytest.raises(openai.NotFoundError) as from_anthropic:
                await gw.openai().embeddings.create(model="claude-embed", input="otters")
            with pytest.raises(anthropic.NotFoundError) as from_openai:
                await gw.anthropic().messages.count_tokens(model="gpt-4o", messages=ASK)
    assert from_anthropic.value.body == {"message": "no such path", "type": "not_found_error", "code": "not_found_error", "param": None}
    assert from_openai.value.body == {"type": "error", "error": {"type": "not_found_error", "message": "no such path"}}


async def test_a_conversation_of_system_messages_alone_gets_a_user_turn_for_anthropic(tmp_path, recorder):
    """OpenAI answers messages=[system]; Anthropic refuses an empty messages list
    ("at least one message is required"): the instructions go as system, with a "." turn."""
    config = {"providers": {"claude": {"type": "anthropic", "base_url": recorder.url, "api_key": "k"}}}
    async with run_gateway(config, tmp_path) as gw:
        completion = await gw.openai().chat.completions.create(
            model="claude-sonnet-4-5", messages=[{"role": "system", "content": "Write a haiku about otters."}]
        )
    assert completion.choices[0].message.content == "recorded"
    [seen] = recorder.seen
    assert seen["body"]["system"] == "Write a haiku about otters."
    assert seen["body"]["messages"] == [{"role": "user", "content": "."}]


async def _stream_without_usage(request):
    """An OpenAI-compatible server that ignores stream_options: no usage chunk at all."""
    from aiohttp import web

    head = {"id": "chatcmpl-n", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
    deltas = [{"role": "assistant", "content": ""}, {"content": "The answer"}, {"content": " is forty two."}, {}]
    chunks = [{**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in deltas]
    chunks[-1]["choices"][0]["finish_reason"] = "stop"
    text = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks)
    return web.Response(text=text + "data: [DONE]\n\n", content_type="text/event-stream")


async def test_a_translated_stream_without_usage_is_estimated_by_cost_not_counted_as_zero(tmp_path):
    """The Anthropic caller's message_delta must carry a usage (zeros here); the cost plugin
    must not take them for the provider's count, but estimate, as for an untranslated stream."""
    from aiohttp import web
    from test_cost import ledger_rows, plugin

    from gateway.testing import serve_app

    app = web.Application()
    app.router.add_post("/{tail:.*}", _stream_without_usage)
    async with serve_app(app) as url:
        config = {
            "providers": {"gpt": {"type": "openai", "base_url": url, "api_key": "k"}},
            "plugins": [{"use": "cost", "config": {"store": str(tmp_path / "usage.db"), "flush_interval_s": 0.05}}],
        }
        async with run_gateway(config, tmp_path) as gw:
            async with gw.anthropic().messages.stream(model="gpt-4o", max_tokens=50, messages=ASK) as stream:
                final = await stream.get_final_message()
            [row] = await ledger_rows(gw, at_least=1)
            stats = plugin(gw).stats()
    assert final.content[0].text == "The answer is forty two." and final.usage.output_tokens == 0
    assert row["estimated"] == 1 and row["output_tokens"] == 6 and row["cost_picousd"] > 0
    assert stats["usage_missing"] == 1
