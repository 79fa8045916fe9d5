"""The data plane end to end: the official SDKs -> the gateway on loopback -> a provider."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import anthropic
import msgspec
import openai
import pytest
from aiohttp import web
from multidict import CIMultiDict

from gateway import Exchange, hookimpl
from gateway.testing import run_gateway, serve_app

CHAT = [{"role": "user", "content": "Tell me about otters"}]


def mock_config(**extra):
    return {"providers": {"mock": {"type": "mock"}}, **extra}


async def test_openai_chat_through_mock_provider(tmp_path):
    async with run_gateway(mock_config(), tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=CHAT)
        completion = raw.parse()
    assert completion.choices[0].message.content.startswith("Mock reply to: Tell me about otters")
    assert completion.model == "gpt-4o-mini"
    assert completion.usage.prompt_tokens == 4
    assert raw.headers["x-gateway-provider"] == "mock"
    assert len(raw.headers["x-request-id"]) == 32


async def test_openai_sdk_without_v1_in_base_url_is_served(tmp_path):
    async with run_gateway(mock_config(), tmp_path) as gw:
        client = openai.AsyncOpenAI(base_url=gw.url, api_key="x", max_retries=0)
        completion = await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    assert completion.choices[0].message.content


async def test_caller_request_id_is_kept(tmp_path):
    async with run_gateway(mock_config(), tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(
            model="m", messages=CHAT, extra_headers={"x-request-id": "req-123"}
        )
    assert raw.headers["x-request-id"] == "req-123"


async def test_openai_stream_is_relayed_with_usage(tmp_path):
    async with run_gateway(mock_config(), tmp_path) as gw:
        stream = await gw.openai().chat.completions.create(
            model="gpt-4o-mini", messages=CHAT, stream=True, stream_options={"include_usage": True}
        )
        parts, usage = [], None
        async for chunk in stream:
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
            if chunk.usage:
                usage = chunk.usage
        plain = await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    assert "".join(parts) == plain.choices[0].message.content
    assert usage.completion_tokens == plain.usage.completion_tokens


async def test_stream_events_arrive_as_the_upstream_sends_them(tmp_path):
    """Not buffered: the first event reaches the caller long before the last is sent."""
    async with run_gateway(mock_config(), tmp_path) as gw:
        stream = await gw.openai().chat.completions.create(
            model="m", messages=CHAT, stream=True, extra_headers={"x-mock-inter-token-ms": "60"}
        )
        started = time.perf_counter()
        arrivals = [time.perf_counter() - started async for _ in stream]
    assert len(arrivals) > 10
    assert arrivals[-1] - arrivals[1] > 0.5  # tokens kept their pace through the gateway


async def test_anthropic_messages_plain_and_stream(tmp_path):
    async with run_gateway(mock_config(), tmp_path) as gw:
        client = gw.anthropic()
        message = await client.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=CHAT)
        async with client.messages.stream(model="claude-haiku-4-5", max_tokens=100, messages=CHAT) as stream:
            text = "".join([part async for part in stream.text_stream])
            final = await stream.get_final_message()
    assert message.content[0].text == text
    assert final.usage.output_tokens == message.usage.output_tokens
    assert message.usage.input_tokens == 4


async def test_other_openai_endpoints(tmp_path):
    async with run_gateway(mock_config(), tmp_path) as gw:
        client = gw.openai()
        embedding = await client.embeddings.create(model="text-embedding-3-small", input="otters")
        models = [model.id async for model in client.models.list()]
        completion = await client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
        response = await client.responses.create(model="gpt-4o-mini", input="Say hi")
    assert len(embedding.data[0].embedding) > 0
    assert "gpt-4o-mini" in models
    assert completion.choices[0].text
    assert response.output_text


async def test_routes_by_prefix_and_by_model_glob(tmp_path):
    config = {
        "providers": {"main": {"type": "mock"}, "backup": {"type": "mock"}, "claude": {"type": "mock"}},
        "routes": [
            {"prefix": "/v1/messages", "provider": "claude"},
            {"model": "gpt-4o-mini*", "provider": "backup"},
            {"prefix": "/v1/", "provider": "main"},
        ],
    }
    async with run_gateway(config, tmp_path) as gw:
        client = gw.openai()
        mini = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini-2024", messages=CHAT)
        big = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=CHAT)
        claude = await gw.anthropic().messages.with_raw_response.create(model="c", max_tokens=10, messages=CHAT)
    assert mini.headers["x-gateway-provider"] == "backup"
    assert big.headers["x-gateway-provider"] == "main"
    assert claude.headers["x-gateway-provider"] == "claude"


async def test_default_routing_sends_messages_to_anthropic_and_the_rest_to_openai(tmp_path, mock_http_upstream):
    config = {
        "providers": {
            "oa": {"type": "openai", "base_url": mock_http_upstream, "api_key": "sk-oa"},
            "an": {"type": "anthropic", "base_url": mock_http_upstream, "api_key": "sk-an"},
        }
    }
    async with run_gateway(config, tmp_path) as gw:
        chat = await gw.openai().chat.completions.with_raw_response.create(model="m", messages=CHAT)
        message = await gw.anthropic().messages.with_raw_response.create(model="c", max_tokens=10, messages=CHAT)
    assert chat.headers["x-gateway-provider"] == "oa"
    assert message.headers["x-gateway-provider"] == "an"


async def test_no_route_matches_is_404_in_api_shape(tmp_path):
    config = mock_config(routes=[{"prefix": "/v1/messages", "provider": "mock"}])
    async with run_gateway(config, tmp_path) as gw:
        with pytest.raises(openai.NotFoundError) as caught:
            await gw.openai().chat.completions.create(model="m", messages=CHAT)
    assert caught.value.body["code"] == "route_not_found"


# -- what reaches the provider -------------------------------------------------------


class EchoUpstream:
    """A provider double that answers a chat completion and remembers each request."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": request.rel_url.raw_query_string,
                "headers": CIMultiDict(request.headers),
                "body": await request.read(),
            }
        )
        return web.json_response(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 1,
                "model": "echo",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            },
            headers={"x-upstream": "yes", "Connection": "keep-alive, x-upstream-hop", "x-upstream-hop": "1"},
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


@pytest.fixture
async def echo():
    upstream = EchoUpstream()
    async with serve_app(upstream.app()) as url:
        upstream.url = url
        yield upstream


async def test_provider_key_injected_and_caller_key_never_forwarded(tmp_path, echo):
    config = {"providers": {"oa": {"type": "openai", "base_url": echo.url, "api_key": "sk-provider"}}}
    async with run_gateway(config, tmp_path) as gw:
        raw = await gw.openai(api_key="sk-caller-own").chat.completions.with_raw_response.create(
            model="m", messages=CHAT, extra_headers={"x-gateway-user": "alice", "x-custom": "kept"}
        )
    headers = echo.seen[0]["headers"]
    assert headers["Authorization"] == "Bearer sk-provider"
    assert "sk-caller-own" not in str(headers)
    assert headers["x-custom"] == "kept"
    assert "x-gateway-user" not in headers
    assert headers["x-request-id"] == raw.headers["x-request-id"]
    assert raw.headers["x-upstream"] == "yes"
    assert "x-upstream-hop" not in raw.headers  # named by the upstream's Connection header


async def test_anthropic_provider_gets_x_api_key_and_version(tmp_path, echo):
    config = {"providers": {"an": {"type": "anthropic", "base_url": echo.url, "api_key": "sk-ant-provider"}}}
    async with run_gateway(config, tmp_path) as gw:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{gw.url}/v1/messages", json={"model": "c", "max_tokens": 5, "messages": CHAT}, headers={"x-api-key": "mine"}
            ) as reply:
                assert reply.status == 200
    headers = echo.seen[0]["headers"]
    assert headers["x-api-key"] == "sk-ant-provider"
    assert headers["anthropic-version"] == "2023-06-01"


async def test_passthrough_forwards_the_callers_key(tmp_path, echo):
    config = {"providers": {"oa": {"type": "openai", "base_url": echo.url, "api_key": "passthrough"}}}
    async with run_gateway(config, tmp_path) as gw:
        await gw.openai(api_key="sk-caller-own").chat.completions.create(model="m", messages=CHAT)
    assert echo.seen[0]["headers"]["Authorization"] == "Bearer sk-caller-own"


async def test_method_path_query_and_body_are_forwarded_hop_by_hop_dropped(tmp_path, echo):
    config = {"providers": {"oa": {"type": "openai", "base_url": echo.url + "/v1", "api_key": "k"}}}
    body = b'{"model": "m", "input": "exact bytes"}'
    async with run_gateway(config, tmp_path) as gw:
        async with aiohttp.ClientSession() as session:
            async with session.put(
                f"{gw.url}/v1/files/abc?purpose=batch&x=1%202",
                data=body,
                headers={
                    "Content-Type": "application/json",
                    "Keep-Alive": "timeout=5",
                    "TE": "trailers",
                    "Connection": "keep-alive, x-hop-only",
                    "x-hop-only": "this hop",
                },
            ) as reply:
                assert reply.status == 200
                assert "keep-alive" not in reply.headers
    seen = echo.seen[0]
    assert seen["method"] == "PUT"
    assert seen["path"] == "/v1/files/abc"  # a base_url ending in /v1 is not doubled
    assert seen["query"] == "purpose=batch&x=1%202"
    assert seen["body"] == body
    for hop_by_hop in ("keep-alive", "te", "connection", "x-hop-only"):
        assert hop_by_hop not in seen["headers"]


async def test_virtual_client_keys(tmp_path, echo):
    config = {
        "providers": {
            "oa": {"type": "openai", "base_url": echo.url, "api_key": "sk-provider"},
            "an": {"type": "anthropic", "base_url": echo.url, "api_key": "sk-ant-provider"},
        },
        "clients": {"frontend": {"key": "gw-frontend"}, "batch": {"key": "gw-batch"}},
        "plugins": [{"use": "probe_plugin:Probe", "config": {"tag": "p"}}],
    }
    async with run_gateway(config, tmp_path) as gw:
        await gw.openai(api_key="gw-frontend").chat.completions.create(model="m", messages=CHAT)
        from probe_plugin import SEEN

        assert SEEN["p"]["caller"] == "frontend" and SEEN["p"]["client"] == "frontend"
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{gw.url}/v1/messages", json={"model": "c", "messages": CHAT}, headers={"x-api-key": "gw-batch"}
            ) as reply:
                assert reply.status == 200
        assert SEEN["p"]["caller"] == "batch"
        with pytest.raises(openai.AuthenticationError) as caught:
            await gw.openai(api_key="gw-unknown").chat.completions.create(model="m", messages=CHAT)
        assert caught.value.body["code"] == "invalid_api_key"
        with pytest.raises(anthropic.AuthenticationError) as caught_anthropic:
            await gw.anthropic(api_key="nope").messages.create(model="c", max_tokens=5, messages=CHAT)
        assert caught_anthropic.value.body == {
            "type": "error",
            "error": {"type": "invalid_api_key", "message": caught_anthropic.value.body["error"]["message"]},
        }
    assert all("gw-frontend" not in str(seen["headers"]) for seen in echo.seen)
    assert len(echo.seen) == 2  # the 401s never reached the provider


async def test_caller_known_by_x_gateway_user_else_address(tmp_path):
    config = mock_config(plugins=[{"use": "probe_plugin:Probe", "config": {"tag": "who"}}])
    from probe_plugin import SEEN

    async with run_gateway(config, tmp_path) as gw:
        await gw.openai().chat.completions.create(model="m", messages=CHAT, extra_headers={"x-gateway-user": "alice"})
        assert SEEN["who"]["caller"] == "alice"
        await gw.openai().chat.completions.create(model="m", messages=CHAT)
        assert SEEN["who"]["caller"] == "127.0.0.1"


async def test_upstream_own_error_is_passed_through_unchanged(tmp_path, mock_http_upstream):
    config = {"providers": {"oa": {"type": "openai", "base_url": mock_http_upstream, "api_key": "k"}}}
    async with run_gateway(config, tmp_path) as gw:
        client = gw.openai()
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(
                model="m", messages=CHAT, extra_headers={"x-mock-error-rate": "1", "x-mock-error-status": "429"}
            )
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.body["message"] == "mock upstream: injected failure"  # the upstream's own body
    assert caught.value.response.headers["x-gateway-provider"] == "oa"


async def test_upstream_timeout_is_504(tmp_path, mock_http_upstream):
    config = {"providers": {"oa": {"type": "openai", "base_url": mock_http_upstream, "api_key": "k", "timeout_s": 0.3}}}
    async with run_gateway(config, tmp_path) as gw:
        with pytest.raises(openai.InternalServerError) as caught:
            await gw.openai().chat.completions.create(model="m", messages=CHAT, extra_headers={"x-mock-hang": "1"})
    assert caught.value.status_code == 504
    assert caught.value.body["code"] == "upstream_timeout"


async def test_mock_provider_timeout_is_504_too(tmp_path):
    config = {"providers": {"mock": {"type": "mock", "timeout_s": 0.2}}}
    async with run_gateway(config, tmp_path) as gw:
        with pytest.raises(anthropic.InternalServerError) as caught:
            await gw.anthropic().messages.create(
                model="c", max_tokens=5, messages=CHAT, extra_headers={"x-mock-hang": "1"}
            )
    assert caught.value.status_code == 504
    assert caught.value.body["error"]["type"] == "upstream_timeout"
    assert caught.value.response.headers["x-gateway-provider"] == "mock"


async def test_unreachable_upstream_is_502(tmp_path, unused_tcp_port):
    config = {"providers": {"oa": {"type": "openai", "base_url": f"http://127.0.0.1:{unused_tcp_port}", "api_key": "k"}}}
    async with run_gateway(config, tmp_path) as gw:
        with pytest.raises(openai.InternalServerError) as caught:
            await gw.openai().chat.completions.create(model="m", messages=CHAT)
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_error"
    assert caught.value.response.headers["x-gateway-provider"] == "oa"  # whom the gateway tried


async def test_body_over_limit_is_413(tmp_path):
    config = mock_config(limits={"max_body_bytes": 1000})
    async with run_gateway(config, tmp_path) as gw:
        with pytest.raises(openai.APIStatusError) as caught:
            await gw.openai().chat.completions.create(model="m", messages=[{"role": "user", "content": "x" * 2000}])
        async with aiohttp.ClientSession() as session:

            async def chunked():
                for _ in range(20):
                    yield b"x" * 100

            async with session.post(f"{gw.url}/v1/chat/completions", data=chunked()) as reply:
                chunked_status = reply.status
                chunked_body = await reply.json()
    assert caught.value.status_code == 413
    assert caught.value.body["code"] == "request_too_large"
    assert chunked_status == 413 and chunked_body["error"]["code"] == "request_too_large"


async def test_invalid_json_is_400_where_the_gateway_must_read_it(tmp_path):
    config = mock_config(routes=[{"model": "gpt-*", "provider": "mock"}])
    async with run_gateway(config, tmp_path) as gw:
        async with aiohttp.ClientSession() as session:
            for body in (b'{"model": "gpt-4o", ', b"\xff\xfe not utf-8", b"[1, 2]"):
                async with session.post(
                    f"{gw.url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
                ) as reply:
                    assert reply.status == 400
                    error = (await reply.json())["error"]
                    assert error["code"] == "invalid_request"
                    assert error["type"] == "invalid_request_error"
            async with session.post(
                f"{gw.url}/v1/messages", data=b"{oops", headers={"Content-Type": "application/json"}
            ) as reply:
                assert reply.status == 400
                assert (await reply.json())["error"]["type"] == "invalid_request"


async def test_invalid_json_is_the_upstreams_to_judge_when_nobody_reads_it(tmp_path):
    async with run_gateway(mock_config(), tmp_path) as gw:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{gw.url}/v1/chat/completions", data=b"{oops", headers={"Content-Type": "application/json"}
            ) as reply:
                assert reply.status == 400  # the mock's own answer, passed through
                assert reply.headers["x-gateway-provider"] == "mock"


async def test_stream_broken_by_the_upstream_ends_with_an_error_event(tmp_path, mock_http_upstream):
    config = {"providers": {"oa": {"type": "openai", "base_url": mock_http_upstream, "api_key": "k"}}}
    async with run_gateway(config, tmp_path) as gw:
        stream = await gw.openai().chat.completions.create(
            model="m", messages=CHAT, stream=True, extra_headers={"x-mock-stream-cut-after": "3"}
        )
        with pytest.raises(openai.APIError) as caught:
            async for _ in stream:
                pass
    assert "stream broke" in str(caught.value.message)


class SlowStream:
    """A provider double whose stream never ends; records when its request is cancelled."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.sent = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            while True:
                chunk = {"id": "s", "object": "chat.completion.chunk", "created": 1, "model": "m",
                         "choices": [{"index": 0, "delta": {"content": "tick "}, "finish_reason": None}]}  # fmt: skip
                await response.write(b"data: " + msgspec.json.encode(chunk) + b"\n\n")
                self.sent += 1
                await asyncio.sleep(0.02)
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled.set()
            raise


async def test_caller_leaving_mid_stream_cancels_the_upstream_call(tmp_path):
    upstream = SlowStream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream.handle)
    async with serve_app(app) as url:
        config = {
            "providers": {"oa": {"type": "openai", "base_url": url, "api_key": "k"}},
            "plugins": [{"use": "probe_plugin:Probe", "config": {"tag": "left"}}],
        }
        from probe_plugin import SEEN

        async with run_gateway(config, tmp_path) as gw:
            stream = await gw.openai().chat.completions.create(model="m", messages=CHAT, stream=True)
            received = 0
            async for _ in stream:
                received += 1
                if received == 3:
                    break
            await stream.close()
            await asyncio.wait_for(upstream.cancelled.wait(), 5)
            for _ in range(50):
                if SEEN.get("left", {}).get("error"):
                    break
                await asyncio.sleep(0.02)
        assert SEEN["left"]["error"] == "client_closed_request"


@pytest.fixture
async def raw_upstream():
    """A TCP server that misbehaves as told: answers garbage, or drops the connection."""
    servers = []

    async def start(behaviour: str) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            if behaviour == "garbage":
                writer.write(b"\x00\x01 this is not HTTP at all\r\n\r\n")
                await writer.drain()
            elif behaviour == "half-body":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"id\":")
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("behaviour", ["garbage", "reset", "half-body"])
async def test_upstream_that_resets_or_sends_garbage_is_502(tmp_path, raw_upstream, behaviour):
    url = await raw_upstream(behaviour)
    config = {"providers": {"oa": {"type": "openai", "base_url": url, "api_key": "sk-provider-secret"}}}
    async with run_gateway(config, tmp_path) as gw:
        with pytest.raises(openai.InternalServerError) as caught:
            await gw.openai().chat.completions.create(model="m", messages=CHAT)
        # the gateway stays healthy for the next caller
        async with aiohttp.ClientSession() as session:
            async with session.get(gw.admin_url + "/healthz") as reply:
                assert reply.status == 200
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_error"
    assert "sk-provider-secret" not in caught.value.response.text


async def test_a_slow_caller_holds_a_fast_stream_back(tmp_path):
    """Backpressure: the gateway does not buffer a stream the caller is not reading."""
    event = b"data: " + b"x" * 65_530 + b"\n\n"
    total_events = 4096  # 256 MiB: far more than every socket buffer on the path
    sent = 0

    async def flood(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(total_events):
            await response.write(event)
            sent += len(event)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", flood)
    async with serve_app(app) as url:
        config = {"providers": {"oa": {"type": "openai", "base_url": url, "api_key": "k"}}}
        async with run_gateway(config, tmp_path) as gw:
            async with aiohttp.ClientSession() as session:
                async with session.post(f"{gw.url}/v1/chat/completions", json={"model": "m", "stream": True}) as reply:
                    await reply.content.readexactly(len(event))
                    await asyncio.sleep(1.0)  # the caller reads nothing more for a while
                    held_at = sent
    assert held_at < total_events * len(event) // 2, f"the upstream sent {held_at} bytes to a caller that read 64 KiB"


async def test_every_answer_has_server_timing_with_gateway_and_upstream_durations(tmp_path):
    config = {"providers": {"mock": {"type": "mock", "mock": {"latency_ms": 30}}}}
    async with run_gateway(config, tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        timing = raw.headers["server-timing"]
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{gw.url}/v1/chat/completions", data=b"{not json") as error:
                error_timing = error.headers["server-timing"]
    parts = dict(part.strip().split(";dur=") for part in timing.split(","))
    assert set(parts) == {"gateway", "upstream"}
    assert float(parts["upstream"]) >= 30
    assert 0 <= float(parts["gateway"]) < 1000
    assert error_timing.startswith("gateway;dur=")


class SlowComplete:
    """A plugin whose complete hook takes a while (a ledger write on a slow disk)."""

    finished: list[str] = []

    def __init__(self, config: object = None) -> None:
        pass

    @hookimpl
    async def complete(self, exchange: Exchange) -> None:
        await asyncio.sleep(0.3)
        SlowComplete.finished.append(exchange.request_id)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_caller_that_hangs_up_after_the_whole_answer_is_counted_with_its_status(tmp_path, stream):
    """curl and other clients close the connection as soon as the answer is in: aiohttp
    then cancels the handler while the complete hooks still run. The caller got its 200,
    so /stats, the metrics and the access line say 200 (not 499), and the hooks finish."""
    SlowComplete.finished.clear()
    config = mock_config(plugins=[{"use": "test_proxy:SlowComplete"}])
    async with run_gateway(config, tmp_path) as gw:
        body = {"model": "m", "messages": CHAT, "stream": stream}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            async with session.post(f"{gw.url}/v1/chat/completions", json=body) as reply:
                assert reply.status == 200
                text = await reply.text()
                request_id = reply.headers["x-request-id"]
        assert ("[DONE]" in text) if stream else ("choices" in text)
        deadline = time.monotonic() + 5
        while request_id not in SlowComplete.finished and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert SlowComplete.finished == [request_id]
        await asyncio.sleep(0.05)  # the records follow the complete hooks
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{gw.admin_url}/stats") as answer:
                stats = await answer.json()
            async with session.get(f"{gw.admin_url}/metrics") as answer:
                metrics = await answer.text()
        assert stats["by_status"] == {"200": 1}, stats
        assert 'route="/v1/chat/completions",status="200"} 1.0' in metrics
        assert 'status="499"' not in metrics


class LateFailingComplete:
    """A complete hook that waits, then fails: it runs on in a task of its own."""

    def __init__(self, config: object = None) -> None:
        pass

    @hookimpl
    async def complete(self, exchange: Exchange) -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("the ledger went away")


class QuickComplete:
    """A complete hook that never waits: it runs to its end before the handler returns."""

    seen: list[str] = []

    def __init__(self, config: object = None) -> None:
        pass

    @hookimpl
    async def complete(self, exchange: Exchange) -> None:
        QuickComplete.seen.append(exchange.request_id)


async def test_complete_hooks_that_wait_go_on_in_a_task_with_their_spans_and_failures(tmp_path, caplog):
    """The complete hooks start at once; the first that waits takes the rest into a task
    of its own. Its span (attached before the wait) ends after it, in the right trace,
    marked failed; the failure is counted; hooks that never wait are done with the answer."""
    QuickComplete.seen.clear()
    config = mock_config(plugins=[{"use": "test_proxy:LateFailingComplete"}, {"use": "test_proxy:QuickComplete"}])
    async with run_gateway(config, tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(model="m", messages=CHAT)
        request_id = raw.headers["x-request-id"]
        assert QuickComplete.seen == [request_id]  # complete runs backwards: the quick one first, at once
        deadline = time.monotonic() + 5
        while not gw.spans_named("POST /v1/chat/completions") and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # the SERVER span ends once the complete hooks are done
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{gw.admin_url}/stats") as answer:
                stats = await answer.json()
        spans = gw.spans()
    (server,) = [span for span in spans if span.name == "POST /v1/chat/completions"]
    (late,) = [span for span in spans if span.name == "test_proxy:LateFailingComplete complete"]
    assert late.parent is not None and late.context.trace_id == server.context.trace_id
    assert late.status.status_code.name == "ERROR"
    assert late.end_time - late.start_time >= 40_000_000  # it ended after its wait
    assert server.end_time >= late.end_time
    assert stats["plugins"]["test_proxy:LateFailingComplete"]["failures"] == 1
    # the span's context was attached before the wait and detached after it, in one context
    assert not [record for record in caplog.records if "detach" in record.getMessage()]
