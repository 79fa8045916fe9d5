"""Telemetry as SPEC.md promises it: one SERVER span per request, a child span per
plugin hook that runs, a CLIENT span per upstream attempt with the GenAI and HTTP
client attributes, W3C trace context in and out, no key in any span, OTLP export
configured by ``OTEL_*``, and JSON log lines that carry the request and trace ids.

The in-process tests run a real gateway on loopback (:func:`gateway.testing.run_gateway`,
spans in memory) and call it with the official SDKs. The export and log tests run
``python -m gateway run`` (see helpers_lifecycle) against OTLP receivers served here.

The test plugins below are named in configs as ``f"{__name__}:Recorder"``: ``tests``
is not a package (no ``__init__.py``), so pytest imports this file under a name of
its own choosing (``test_telemetry`` with the default ``prepend`` import mode) and
registers it in ``sys.modules``, where the gateway's ``module:attr`` loader finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import openai
import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, DEFAULT_OFF
from opentelemetry.trace import SpanKind, StatusCode

from gateway import CallNext, Exchange, Response, hookimpl
from gateway.mock_upstream import MockUpstream
from gateway.otlp import SpanExporter as HttpSpanExporter
from gateway.telemetry import TelemetryConfigError, TraceBuffer, roots_unsampled, tracer_provider_from_env
from gateway.testing import RunningGateway, run_gateway, serve_app

from helpers_lifecycle import child_env, loopback_config, start_gateway
from test_otlp import otlp_json_request

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
REPLY = "one two three four five six seven eight nine ten"
CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
CALLER_TRACEPARENT = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"
HEX32 = re.compile(r"^[0-9a-f]{32}$")


# -- test plugins (named in configs as f"{__name__}:Recorder") -----------------------


class Recorder:
    """Remembers, per hook, the id of the span that was current while the hook ran."""

    def __init__(self) -> None:
        self.current: dict[str, int] = {}

    def _saw(self, hook: str) -> None:
        self.current[hook] = trace.get_current_span().get_span_context().span_id

    @hookimpl
    async def request(self, exchange: Exchange) -> None:
        self._saw("request")

    @hookimpl
    async def response(self, exchange: Exchange, response: Response) -> None:
        self._saw("response")

    @hookimpl
    async def complete(self, exchange: Exchange) -> None:
        self._saw("complete")


class Answerer:
    """Answers every request itself, so the rest of the chain never runs."""

    @hookimpl
    async def request(self, exchange: Exchange) -> Response:
        return Response.json_response(
            {
                "id": "chatcmpl-answerer",
                "object": "chat.completion",
                "created": 0,
                "model": "answerer",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "early"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )


class Broken:
    """Its request hook raises; it fails open, so the request goes on without it."""

    @hookimpl
    async def request(self, exchange: Exchange) -> None:
        raise RuntimeError("the broken plugin broke")


class TwoAttempts:
    """Calls the upstream twice and keeps the second answer, as a retry would."""

    @hookimpl
    async def send(self, exchange: Exchange, call_next: CallNext) -> Response:
        await call_next(exchange)
        return await call_next(exchange)


# -- helpers ---------------------------------------------------------------------------


def by_kind(spans: list[ReadableSpan], kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in spans if span.kind == kind]


async def settled(gw: RunningGateway, requests: int, timeout_s: float = 3.0) -> list[ReadableSpan]:
    """The spans once ``requests`` SERVER spans have ended (the last ones end after the
    caller has its answer: ``complete`` hooks run after the body is sent)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(by_kind(gw.spans(), SpanKind.SERVER)) < requests:
        assert asyncio.get_running_loop().time() < deadline, f"only {len(gw.spans())} spans: {gw.spans()}"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    return gw.spans()


def only(spans: list[ReadableSpan], **where: Any) -> ReadableSpan:
    found = [span for span in spans if all(getattr(span, k) == v for k, v in where.items())]
    assert len(found) == 1, f"expected one span with {where}, got {[s.name for s in found]}"
    return found[0]


def chat_completion(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-recorded",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Paris."},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
    }


def header_recording_upstream(seen: list[dict[str, str]]) -> web.Application:
    """A fake OpenAI upstream that keeps every request's headers and answers a chat completion."""

    async def chat(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        payload = await request.json()
        return web.json_response(chat_completion(payload["model"]))

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def mock_over_http(seen: list[dict[str, str]] | None = None) -> web.Application:
    """The built-in mock upstream behind aiohttp, optionally keeping each request's headers."""
    app = MockUpstream().web_app()
    if seen is not None:

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            seen.append(dict(request.headers))
            return await handler(request)

        app.middlewares.append(record)
    return app


# -- the SERVER span -------------------------------------------------------------------


async def test_one_server_span_per_request_with_route_method_status_and_request_id(tmp_path):
    async with run_gateway({"providers": {"mock": {"type": "mock"}}}, tmp_path) as gw:
        client = gw.openai()
        mine = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=QUESTION, extra_headers={"x-request-id": "req-from-the-caller"}
        )
        new = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=QUESTION)
        spans = await settled(gw, 2)

    servers = by_kind(spans, SpanKind.SERVER)
    assert len(servers) == 2
    assert mine.headers["x-request-id"] == "req-from-the-caller"
    assert re.match(r"^[0-9a-f]{32}$", new.headers["x-request-id"])
    by_request_id = {span.attributes["gateway.request_id"]: span for span in servers}
    assert set(by_request_id) == {"req-from-the-caller", new.headers["x-request-id"]}
    for span in servers:
        assert span.name == "POST /v1/chat/completions"
        assert span.parent is None
        assert span.attributes["http.request.method"] == "POST"
        assert span.attributes["url.path"] == "/v1/chat/completions"
        assert span.attributes["http.response.status_code"] == 200
        assert span.status.status_code != StatusCode.ERROR
    assert len({span.context.trace_id for span in servers}) == 2, "each request is a trace of its own"


async def test_server_span_of_a_gateway_error_carries_its_status_and_error_type(tmp_path):
    config = {"providers": {"mock": {"type": "mock"}}, "clients": {"app": {"key": "gw-good-key"}}}
    async with run_gateway(config, tmp_path) as gw:
        with pytest.raises(openai.AuthenticationError):
            await gw.openai(api_key="gw-wrong-key").chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
        spans = await settled(gw, 1)

    server = only(spans, kind=SpanKind.SERVER)
    assert server.attributes["http.response.status_code"] == 401
    assert server.attributes["error.type"] == "invalid_api_key"
    assert by_kind(spans, SpanKind.CLIENT) == [], "no upstream attempt for a caller without a key"


async def test_upstream_5xx_relayed_to_the_caller_marks_the_server_span_as_an_error(tmp_path):
    async with run_gateway({"providers": {"mock": {"type": "mock"}}}, tmp_path) as gw:
        with pytest.raises(openai.InternalServerError):
            await gw.openai().chat.completions.create(
                model="gpt-4o-mini", messages=QUESTION, extra_headers={"x-mock-error-rate": "1"}
            )
        spans = await settled(gw, 1)

    client = only(spans, kind=SpanKind.CLIENT)
    assert client.attributes["http.response.status_code"] == 500
    assert client.attributes["error.type"] == "500"
    assert client.status.status_code == StatusCode.ERROR
    server = only(spans, kind=SpanKind.SERVER)
    assert server.attributes["http.response.status_code"] == 500
    assert server.attributes.get("error.type") == "500"
    assert server.status.status_code == StatusCode.ERROR


# -- hook spans ------------------------------------------------------------------------


async def test_every_hook_that_runs_is_a_child_span_of_the_server_span(tmp_path):
    config = {
        "providers": {"mock": {"type": "mock"}},
        "plugins": [{"use": f"{__name__}:Recorder", "name": "recorder"}],
    }
    async with run_gateway(config, tmp_path) as gw:
        await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
        spans = await settled(gw, 1)
        recorder = gw.gateway.chain.plugins[0].instance

    server = only(spans, kind=SpanKind.SERVER)
    for hook in ("request", "response", "complete"):
        span = only(spans, name=f"recorder {hook}")
        assert span.kind == SpanKind.INTERNAL
        assert span.parent is not None and span.parent.span_id == server.context.span_id
        assert span.context.trace_id == server.context.trace_id
        assert span.attributes["gateway.plugin"] == "recorder"
        assert span.attributes["gateway.hook"] == hook
        # a plugin's own spans nest under its hook span
        assert recorder.current[hook] == span.context.span_id
    client = only(spans, kind=SpanKind.CLIENT)
    assert client.parent.span_id == server.context.span_id
    assert [s.name for s in spans if s.name.startswith("recorder ")] == [
        "recorder request",
        "recorder response",
        "recorder complete",
    ]


async def test_hooks_that_do_not_run_make_no_span(tmp_path):
    config = {
        "providers": {"mock": {"type": "mock"}},
        "plugins": [
            {"use": f"{__name__}:Answerer", "name": "answerer"},
            {"use": f"{__name__}:Recorder", "name": "recorder"},
        ],
    }
    async with run_gateway(config, tmp_path) as gw:
        reply = await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
        spans = await settled(gw, 1)

    assert reply.choices[0].message.content == "early"
    assert sorted(span.name for span in spans) == ["POST /v1/chat/completions", "answerer request"]


async def test_a_hook_that_raises_leaves_an_error_span_with_the_exception(tmp_path):
    config = {
        "providers": {"mock": {"type": "mock"}},
        "plugins": [{"use": f"{__name__}:Broken", "name": "broken", "on_error": "open"}],
    }
    async with run_gateway(config, tmp_path) as gw:
        await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
        spans = await settled(gw, 1)

    span = only(spans, name="broken request")
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "RuntimeError: the broken plugin broke"
    (event,) = span.events
    assert event.name == "exception" and event.attributes["exception.type"] == "RuntimeError"
    assert span.end_time is not None
    # the request went on: the hook's span is no longer current for what follows
    assert only(spans, kind=SpanKind.CLIENT).parent.span_id == only(spans, kind=SpanKind.SERVER).context.span_id


# -- CLIENT spans ----------------------------------------------------------------------


def assert_client_span(span: ReadableSpan, *, provider: str, model: str, usage: tuple[int, int], url: str | None):
    attributes = span.attributes
    assert span.kind == SpanKind.CLIENT
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == provider
    assert attributes["gen_ai.request.model"] == model
    assert attributes["gen_ai.response.model"] == model
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == usage
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.response.status_code"] == 200
    assert span.status.status_code != StatusCode.ERROR
    if url is None:  # in-process: no socket; the provider is named mock://<provider name>
        assert attributes["url.full"] == f"mock://{attributes['gateway.provider']}/v1/chat/completions"
        assert attributes["server.address"] == attributes["gateway.provider"]
    else:
        assert attributes["url.full"] == url
        assert attributes["server.address"] == "127.0.0.1"
        assert attributes["server.port"] == int(url.split(":")[2].split("/")[0])


@contextlib.asynccontextmanager
async def openai_gateway(transport: str, tmp_path) -> AsyncIterator[tuple[RunningGateway, str, str | None]]:
    """A gateway whose one provider is the mock, in-process or over HTTP as type openai.

    Yields the gateway, the expected ``gen_ai.provider.name`` and the upstream base URL."""
    if transport == "in-process":
        async with run_gateway({"providers": {"mock": {"type": "mock"}}}, tmp_path) as gw:
            yield gw, "mock", None
        return
    async with serve_app(mock_over_http()) as upstream:
        config = {"providers": {"openai": {"type": "openai", "base_url": upstream, "api_key": "sk-upstream"}}}
        async with run_gateway(config, tmp_path) as gw:
            yield gw, "openai", upstream


@pytest.mark.parametrize("transport", ["in-process", "http"])
async def test_client_span_of_a_chat_call_carries_genai_usage_and_http_attributes(tmp_path, transport):
    async with openai_gateway(transport, tmp_path) as (gw, provider, upstream):
        reply = await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
        spans = await settled(gw, 1)

    client = only(spans, kind=SpanKind.CLIENT)
    server = only(spans, kind=SpanKind.SERVER)
    assert client.parent.span_id == server.context.span_id
    assert client.name == "chat gpt-4o-mini"
    usage = (reply.usage.prompt_tokens, reply.usage.completion_tokens)
    url = f"{upstream}/v1/chat/completions" if upstream else None
    assert_client_span(client, provider=provider, model="gpt-4o-mini", usage=usage, url=url)


@pytest.mark.parametrize("transport", ["in-process", "http"])
async def test_client_span_of_a_stream_ends_after_the_stream_and_carries_its_usage(tmp_path, transport):
    async with openai_gateway(transport, tmp_path) as (gw, provider, upstream):
        stream = await gw.openai().chat.completions.create(
            model="gpt-4o",
            messages=QUESTION,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-mock-reply": REPLY, "x-mock-inter-token-ms": "30"},
        )
        chunks = [chunk async for chunk in stream]
        spans = await settled(gw, 1)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    usage = chunks[-1].usage
    assert usage.completion_tokens == 10
    client = only(spans, kind=SpanKind.CLIENT)
    server = only(spans, kind=SpanKind.SERVER)
    url = f"{upstream}/v1/chat/completions" if upstream else None
    assert_client_span(
        client, provider=provider, model="gpt-4o", usage=(usage.prompt_tokens, usage.completion_tokens), url=url
    )
    # nine 30 ms gaps between ten tokens: the span covers the whole stream, not its headers
    assert (client.end_time - client.start_time) / 1e9 >= 0.25
    assert client.end_time <= server.end_time


@contextlib.asynccontextmanager
async def anthropic_gateway(tmp_path) -> AsyncIterator[tuple[RunningGateway, str]]:
    async with serve_app(mock_over_http()) as upstream:
        config = {"providers": {"claude": {"type": "anthropic", "base_url": upstream, "api_key": "sk-ant-upstream"}}}
        async with run_gateway(config, tmp_path) as gw:
            yield gw, upstream


async def test_client_span_of_an_anthropic_message_carries_genai_usage_and_http_attributes(tmp_path):
    async with anthropic_gateway(tmp_path) as (gw, upstream):
        message = await gw.anthropic().messages.create(model="claude-haiku-4-5", max_tokens=100, messages=QUESTION)
        spans = await settled(gw, 1)

    server = only(spans, kind=SpanKind.SERVER)
    assert server.name == "POST /v1/messages"
    client = only(spans, kind=SpanKind.CLIENT)
    assert client.parent.span_id == server.context.span_id
    usage = (message.usage.input_tokens, message.usage.output_tokens)
    assert_client_span(
        client, provider="anthropic", model="claude-haiku-4-5", usage=usage, url=f"{upstream}/v1/messages"
    )


async def test_client_span_of_an_anthropic_stream_takes_usage_from_message_start_and_delta(tmp_path):
    async with anthropic_gateway(tmp_path) as (gw, upstream):
        async with gw.anthropic().messages.stream(
            model="claude-haiku-4-5",
            max_tokens=100,
            messages=QUESTION,
            extra_headers={"x-mock-reply": REPLY, "x-mock-inter-token-ms": "30"},
        ) as stream:
            message = await stream.get_final_message()
        spans = await settled(gw, 1)

    assert message.content[0].text == REPLY
    assert message.usage.output_tokens == 10
    client = only(spans, kind=SpanKind.CLIENT)
    usage = (message.usage.input_tokens, message.usage.output_tokens)
    assert_client_span(
        client, provider="anthropic", model="claude-haiku-4-5", usage=usage, url=f"{upstream}/v1/messages"
    )
    assert (client.end_time - client.start_time) / 1e9 >= 0.25


async def test_every_upstream_attempt_is_a_client_span_under_the_send_hook_span(tmp_path):
    config = {
        "providers": {"mock": {"type": "mock"}},
        "plugins": [{"use": f"{__name__}:TwoAttempts", "name": "retry"}],
    }
    async with run_gateway(config, tmp_path) as gw:
        await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
        spans = await settled(gw, 1)

    send = only(spans, name="retry send")
    assert send.parent.span_id == only(spans, kind=SpanKind.SERVER).context.span_id
    clients = sorted(by_kind(spans, SpanKind.CLIENT), key=lambda span: span.start_time)
    assert [span.attributes["gateway.attempt"] for span in clients] == [1, 2]
    assert all(span.parent.span_id == send.context.span_id for span in clients)


@pytest.mark.parametrize("transport", ["in-process", "http"])
async def test_client_span_of_a_stream_that_breaks_mid_way_is_an_error(tmp_path, transport):
    async with openai_gateway(transport, tmp_path) as (gw, provider, upstream):
        with pytest.raises(openai.APIError):
            async for _ in await gw.openai().chat.completions.create(
                model="gpt-4o-mini", messages=QUESTION, stream=True, extra_headers={"x-mock-stream-cut-after": "3"}
            ):
                pass
        spans = await settled(gw, 1)

    assert only(spans, kind=SpanKind.SERVER).attributes["error.type"] == "upstream_error"
    client = only(spans, kind=SpanKind.CLIENT)
    assert client.status.status_code == StatusCode.ERROR
    assert client.attributes.get("error.type")


async def test_server_span_of_a_stream_that_breaks_mid_way_is_an_error(tmp_path):
    async with run_gateway({"providers": {"mock": {"type": "mock"}}}, tmp_path) as gw:
        with pytest.raises(openai.APIError):
            async for _ in await gw.openai().chat.completions.create(
                model="gpt-4o-mini", messages=QUESTION, stream=True, extra_headers={"x-mock-stream-cut-after": "3"}
            ):
                pass
        spans = await settled(gw, 1)

    server = only(spans, kind=SpanKind.SERVER)
    assert server.attributes["error.type"] == "upstream_error"
    assert server.status.status_code == StatusCode.ERROR


# -- trace context -----------------------------------------------------------------------


async def test_caller_traceparent_continues_into_server_span_and_upstream(tmp_path):
    seen: list[dict[str, str]] = []
    async with serve_app(header_recording_upstream(seen)) as upstream:
        config = {"providers": {"openai": {"type": "openai", "base_url": upstream, "api_key": "sk-upstream"}}}
        async with run_gateway(config, tmp_path) as gw:
            reply = await gw.openai().chat.completions.create(
                model="gpt-4o-mini", messages=QUESTION, extra_headers={"traceparent": CALLER_TRACEPARENT}
            )
            spans = await settled(gw, 1)

    assert reply.choices[0].message.content == "Paris."
    server = only(spans, kind=SpanKind.SERVER)
    assert format(server.context.trace_id, "032x") == CALLER_TRACE_ID
    assert server.parent is not None and server.parent.is_remote
    assert format(server.parent.span_id, "016x") == CALLER_SPAN_ID
    client = only(spans, kind=SpanKind.CLIENT)
    assert format(client.context.trace_id, "032x") == CALLER_TRACE_ID
    assert client.attributes["gen_ai.usage.input_tokens"] == 7
    assert len(seen) == 1
    assert seen[0]["traceparent"] == f"00-{CALLER_TRACE_ID}-{client.context.span_id:016x}-01"


async def test_gateway_starts_a_trace_and_sends_it_upstream_when_the_caller_sends_none(tmp_path):
    seen: list[dict[str, str]] = []
    async with serve_app(header_recording_upstream(seen)) as upstream:
        config = {"providers": {"openai": {"type": "openai", "base_url": upstream, "api_key": "sk-upstream"}}}
        async with run_gateway(config, tmp_path) as gw:
            await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
            spans = await settled(gw, 1)

    client = only(spans, kind=SpanKind.CLIENT)
    version, trace_id, span_id, flags = seen[0]["traceparent"].split("-")
    assert (version, trace_id, span_id) == ("00", f"{client.context.trace_id:032x}", f"{client.context.span_id:016x}")
    assert int(flags, 16) & 0x01, "sampled"


async def test_caller_trace_that_is_not_sampled_records_no_span_but_still_reaches_the_upstream(tmp_path):
    seen: list[dict[str, str]] = []
    not_sampled = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-00"
    async with serve_app(header_recording_upstream(seen)) as upstream:
        config = {"providers": {"openai": {"type": "openai", "base_url": upstream, "api_key": "sk-upstream"}}}
        async with run_gateway(config, tmp_path) as gw:  # the default sampler: parentbased_always_on
            await gw.openai().chat.completions.create(
                model="gpt-4o-mini", messages=QUESTION, extra_headers={"traceparent": not_sampled}
            )
            await asyncio.sleep(0.1)
            assert gw.spans() == []

    version, trace_id, _, flags = seen[0]["traceparent"].split("-")
    assert (version, trace_id) == ("00", CALLER_TRACE_ID)
    assert not int(flags, 16) & 0x01


# -- no key in any span ------------------------------------------------------------------

PROVIDER_KEY = "sk-provider-secret-123"
ANTHROPIC_PROVIDER_KEY = "sk-ant-provider-secret-789"
CLIENT_KEY = "gw-client-key-456"
WRONG_CLIENT_KEY = "gw-wrong-client-key-000"
SECRETS = (PROVIDER_KEY, ANTHROPIC_PROVIDER_KEY, CLIENT_KEY, WRONG_CLIENT_KEY)


def texts_of(span: ReadableSpan) -> Iterator[str]:
    """Every string a span exports: name, attribute values, status, events, links, resource."""
    yield span.name
    yield span.status.description or ""

    def values(attributes: Any) -> Iterator[str]:
        for key, value in (attributes or {}).items():
            yield key
            yield repr(value)

    yield from values(span.attributes)
    for event in span.events:
        yield event.name
        yield from values(event.attributes)
    for link in span.links:
        yield from values(link.attributes)
    yield from values(span.resource.attributes)


async def test_no_provider_or_client_key_appears_in_any_span_or_log_line(tmp_path, caplog):
    seen: list[dict[str, str]] = []
    async with serve_app(mock_over_http(seen)) as upstream:
        config = {
            "providers": {
                "openai": {"type": "openai", "base_url": upstream, "api_key": PROVIDER_KEY},
                "claude": {"type": "anthropic", "base_url": upstream, "api_key": ANTHROPIC_PROVIDER_KEY},
                "dead": {"type": "openai", "base_url": "http://127.0.0.1:1", "api_key": PROVIDER_KEY},
            },
            "routes": [
                {"model": "dead-*", "provider": "dead"},
                {"prefix": "/v1/messages", "provider": "claude"},
                {"prefix": "/v1/", "provider": "openai"},
            ],
            "clients": {"app": {"key": CLIENT_KEY}},
            "plugins": [{"use": "accesslog"}],
        }
        caplog.set_level("DEBUG")
        async with run_gateway(config, tmp_path) as gw:
            oai, claude = gw.openai(api_key=CLIENT_KEY), gw.anthropic(api_key=CLIENT_KEY)
            await oai.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
            async for _ in await oai.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, stream=True):
                pass
            await claude.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=QUESTION)
            with pytest.raises(openai.InternalServerError):  # the upstream fails
                await oai.chat.completions.create(
                    model="gpt-4o-mini", messages=QUESTION, extra_headers={"x-mock-error-rate": "1"}
                )
            with pytest.raises(openai.APIStatusError) as unreachable:  # the gateway's 502
                await oai.chat.completions.create(model="dead-model", messages=QUESTION)
            with pytest.raises(openai.AuthenticationError):  # an unknown client key
                await gw.openai(api_key=WRONG_CLIENT_KEY).chat.completions.create(
                    model="gpt-4o-mini", messages=QUESTION
                )
            spans = await settled(gw, 6)

    assert unreachable.value.status_code == 502
    # the keys were really in play: the upstream got the provider's, never the caller's
    assert {headers.get("Authorization") for headers in seen if "Authorization" in headers} == {
        f"Bearer {PROVIDER_KEY}"
    }
    assert {headers.get("x-api-key") for headers in seen if "x-api-key" in headers} == {ANTHROPIC_PROVIDER_KEY}
    assert len(by_kind(spans, SpanKind.CLIENT)) == 5
    assert {span.attributes.get("gateway.caller") for span in by_kind(spans, SpanKind.SERVER)} >= {"app"}
    for span in spans:
        for text in texts_of(span):
            for secret in SECRETS:
                assert secret not in text, f"{secret!r} in span {span.name!r}: {text!r}"
    assert caplog.records, "expected access-log lines"
    for record in caplog.records:
        line = record.getMessage() + repr(vars(record))
        for secret in SECRETS:
            assert secret not in line, f"{secret!r} in log line {line!r}"


# -- tracer_provider_from_env --------------------------------------------------------------


def exporters(provider: TracerProvider) -> list[SpanExporter]:
    """The exporters behind a provider's processors (SDK internals: there is no public accessor)."""
    found = []
    for processor in provider._active_span_processor._span_processors:
        if isinstance(processor, TraceBuffer):  # the trace page's, beside every exporter
            continue
        inner = getattr(processor, "_batch_processor", processor)
        found.append(getattr(inner, "_exporter", None) or getattr(processor, "span_exporter", None))
    return found


@pytest.fixture
def otel_env(monkeypatch) -> pytest.MonkeyPatch:
    """os.environ without any OTEL_* variable (the exporters read it themselves)."""
    import os

    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(
    ("environ", "kinds"),
    [
        pytest.param({}, [], id="nothing-set"),
        pytest.param({"OTEL_TRACES_EXPORTER": "none"}, [], id="none"),
        pytest.param({"OTEL_TRACES_EXPORTER": "console"}, [ConsoleSpanExporter], id="console"),
        pytest.param({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, [HttpSpanExporter], id="endpoint-only"),
        pytest.param(
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            [HttpSpanExporter],
            id="otlp-json",
        ),
        pytest.param(
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, [GrpcSpanExporter], id="otlp-grpc"
        ),
        pytest.param(
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"},
            [HttpSpanExporter],
            id="otlp-http",
        ),
        pytest.param({"OTEL_TRACES_EXPORTER": "console,otlp"}, [ConsoleSpanExporter, HttpSpanExporter], id="list"),
    ],
)
def test_tracer_provider_from_env_builds_the_exporters_asked_for(otel_env, environ, kinds):
    provider = tracer_provider_from_env(environ)
    try:
        found = exporters(provider)
        assert [type(exporter) for exporter in found] == kinds
        protocol = environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        for exporter in found:
            if isinstance(exporter, HttpSpanExporter):
                assert exporter.lean  # the gateway's encoder, not the SDK's
                assert exporter.protocol == ("http/json" if protocol == "http/json" else "http/protobuf")
        assert provider.resource.attributes["service.name"] == "llm-gateway"
    finally:
        provider.shutdown()


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({"OTEL_TRACES_EXPORTER": "zipkin-by-fax"}, id="unknown-exporter"),
        pytest.param({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"}, id="protocol"),
    ],
)
def test_tracer_provider_from_env_rejects_what_it_cannot_use(otel_env, environ):
    with pytest.raises(TelemetryConfigError):
        tracer_provider_from_env(environ)


def test_console_exporter_prints_the_spans(otel_env):
    provider = tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "console"})
    (console,) = exporters(provider)
    # its default output is the sys.stdout of import time (pytest's capture): point it here
    console.out = io.StringIO()
    provider.get_tracer("test").start_span("console-visible").end()
    provider.shutdown()
    assert '"name": "console-visible"' in console.out.getvalue()


def test_service_name_comes_from_otel_service_name(otel_env):
    otel_env.setenv("OTEL_SERVICE_NAME", "gw-test")
    provider = tracer_provider_from_env()
    assert provider.resource.attributes["service.name"] == "gw-test"


def test_service_name_comes_from_the_environ_passed_in(otel_env):
    provider = tracer_provider_from_env({"OTEL_SERVICE_NAME": "gw-test"})
    assert provider.resource.attributes["service.name"] == "gw-test"


def test_sampler_comes_from_the_environ_and_nothing_is_sampled_when_nothing_is_exported(otel_env):
    assert tracer_provider_from_env({"OTEL_TRACES_SAMPLER": "always_off"}).sampler is ALWAYS_OFF
    ratio = tracer_provider_from_env({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    assert ratio.sampler.get_description().startswith("ParentBased{root:TraceIdRatioBased{0.25}")
    with pytest.raises(TelemetryConfigError, match="OTEL_TRACES_SAMPLER"):
        tracer_provider_from_env({"OTEL_TRACES_SAMPLER": "sometimes"})
    unexported = tracer_provider_from_env({"GATEWAY_TRACES_PER_S": "0"})
    assert not unexported.get_tracer("t").start_span("x").is_recording()
    # ...but its spans still carry ids (for log lines): tracing was not turned off
    assert not roots_unsampled(unexported)
    assert roots_unsampled(tracer_provider_from_env({"OTEL_TRACES_SAMPLER": "always_off"}))
    assert roots_unsampled(tracer_provider_from_env({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}))


async def test_sampled_off_makes_no_span_unless_a_sampled_caller_trace_comes_in(tmp_path):
    seen: list[dict[str, str]] = []
    async with serve_app(header_recording_upstream(seen)) as upstream:
        config = {"providers": {"openai": {"type": "openai", "base_url": upstream, "api_key": "sk-upstream"}}}
        async with run_gateway(config, tmp_path, sampler=DEFAULT_OFF) as gw:
            await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
            assert gw.spans() == []
            assert "traceparent" not in seen[0]
            await gw.openai().chat.completions.create(
                model="gpt-4o-mini", messages=QUESTION, extra_headers={"traceparent": CALLER_TRACEPARENT}
            )
            spans = await settled(gw, 1)
    assert format(only(spans, kind=SpanKind.SERVER).context.trace_id, "032x") == CALLER_TRACE_ID
    assert seen[1]["traceparent"].split("-")[1] == CALLER_TRACE_ID


# -- export over OTLP, from `gateway run` --------------------------------------------------


def exported_spans(received: list[trace_service_pb2.ExportTraceServiceRequest]) -> list[tuple[dict[str, Any], Any]]:
    """(resource attributes, span) for every span the receiver got."""

    def plain(attributes: Any) -> dict[str, Any]:
        return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in attributes}

    return [
        (plain(resource_spans.resource.attributes), span)
        for request in received
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]


def assert_exported_a_chat_call(received: list[trace_service_pb2.ExportTraceServiceRequest], usage: tuple[int, int]):
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

    spans = exported_spans(received)
    assert spans, "the receiver got no span"
    assert {resource["service.name"] for resource, _ in spans} == {"gw-test"}
    servers = [span for _, span in spans if span.kind == SpanProto.SPAN_KIND_SERVER]
    clients = [span for _, span in spans if span.kind == SpanProto.SPAN_KIND_CLIENT]
    assert [span.name for span in servers] == ["POST /v1/chat/completions"]
    assert len(clients) == 1
    server, client = servers[0], clients[0]
    assert client.trace_id == server.trace_id and client.parent_span_id == server.span_id
    attributes = {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in client.attributes}
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == usage
    assert any(span.name == "accesslog complete" for _, span in spans)


@contextlib.asynccontextmanager
async def otlp_http_receiver() -> AsyncIterator[tuple[str, list[trace_service_pb2.ExportTraceServiceRequest]]]:
    received: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        if body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        received.append(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=reply, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    async with serve_app(app) as url:
        yield url, received


@contextlib.asynccontextmanager
async def otlp_json_receiver() -> AsyncIterator[tuple[str, list[trace_service_pb2.ExportTraceServiceRequest]]]:
    """OTLP/HTTP with JSON bodies, read with the OTLP field names (protobuf's JSON mapping,
    ids in hex as the OTLP specification has them), as a collector's receiver does."""
    received: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/json"
        body = await request.read()
        if body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        received.append(otlp_json_request(body))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    async with serve_app(app) as url:
        yield url, received


@contextlib.asynccontextmanager
async def otlp_grpc_receiver() -> AsyncIterator[tuple[str, list[trace_service_pb2.ExportTraceServiceRequest]]]:
    received: list[trace_service_pb2.ExportTraceServiceRequest] = []

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        async def Export(self, request, context):  # noqa: N802 (the gRPC method's name)
            received.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        await server.stop(None)


@pytest.mark.parametrize(
    ("protocol", "receiver"),
    [("http/protobuf", otlp_http_receiver), ("http/json", otlp_json_receiver), ("grpc", otlp_grpc_receiver)],
)
async def test_gateway_run_exports_server_and_client_spans_over_otlp(tmp_path, protocol, receiver):
    async with receiver() as (endpoint, received):
        env = child_env(
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
            OTEL_SERVICE_NAME="gw-test",
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        async with start_gateway(loopback_config(plugins=[{"use": "accesslog"}]), tmp_path, env=env) as gw:
            client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="sk-caller", max_retries=0)
            reply = await client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
            gw.send_signal()
            assert await gw.wait() == 0, "\n".join(gw.stderr)
        # the provider is flushed on shutdown: everything has arrived by the exit
        assert_exported_a_chat_call(received, (reply.usage.prompt_tokens, reply.usage.completion_tokens))


# -- JSON log lines --------------------------------------------------------------------------


async def test_gateway_run_log_lines_are_json_with_request_id_and_trace_id(tmp_path):
    async with start_gateway(loopback_config(plugins=[{"use": "accesslog"}]), tmp_path) as gw:
        client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="sk-caller", max_retries=0)
        await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=QUESTION,
            extra_headers={"x-request-id": "req-log-1", "traceparent": CALLER_TRACEPARENT},
        )
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=QUESTION, extra_headers={"x-request-id": "req-log-2"}
        )
        gw.send_signal()
        assert await gw.wait() == 0
        lines = gw.log_lines()  # every stderr line is one JSON object

    for line in lines:
        assert {"ts", "level", "logger", "message"} <= set(line)
    access = {line["request_id"]: line for line in lines if line["logger"] == "gateway.access"}
    assert set(access) == {"req-log-1", "req-log-2"}
    assert access["req-log-1"]["trace_id"] == CALLER_TRACE_ID
    assert HEX32.match(access["req-log-2"]["trace_id"]) and access["req-log-2"]["trace_id"] != CALLER_TRACE_ID
    for line in access.values():
        assert line["status"] == 200 and line["path"] == "/v1/chat/completions"
        assert re.match(r"^[0-9a-f]{16}$", line["span_id"])


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({}, {"gateway.plugin": "scan", "gateway.attempt": 2, "gateway.cost_usd": 0.5, "gateway.cached": True}),
        ({"max_span_attribute_length": 3}, {"gateway.plugin": "sca", "gateway.attempt": 2, "gateway.cost_usd": 0.5, "gateway.cached": True}),
        ({"max_span_attributes": 2}, {"gateway.cost_usd": 0.5, "gateway.cached": True}),  # the SDK drops the oldest
    ],
    ids=["fast-path", "value-length-limit", "attribute-count-limit"],
)
def test_the_gateways_own_span_attributes_keep_the_sdks_limits(limits, expected):
    """gateway.telemetry.start_span/set_attributes put the gateway's attributes straight
    into the SDK span's dict; with a limit set they take the SDK's own path, which applies it."""
    from opentelemetry.sdk.trace import SpanLimits
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from gateway.telemetry import set_attributes, start_span

    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=SpanLimits(**limits))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    span = start_span(provider.get_tracer("test"), "scan request", {"gateway.plugin": "scan", "gateway.attempt": 2})
    set_attributes(span, {"gateway.cost_usd": 0.5, "gateway.cached": True})
    span.end()
    (finished,) = exporter.get_finished_spans()
    assert dict(finished.attributes) == expected
    assert finished.dropped_attributes == (2 if "max_span_attributes" in limits else 0)
    provider.shutdown()
