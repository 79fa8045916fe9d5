"""Browsers and odd paths: CORS answered by the gateway, security headers, dot segments never forwarded."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from gateway.config import ConfigError, load
from gateway.cors import SERVER
from gateway.testing import run_gateway, serve_app, write_config

APP = "https://app.example.com"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def recording_upstream(paths: list[str]) -> web.Application:
    """An OpenAI-shaped upstream that records every raw path it is asked for and
    answers with CORS headers of its own (which must not reach the caller)."""

    async def answer(request: web.Request) -> web.Response:
        paths.append(request.raw_path)
        return web.json_response(
            {"id": "x", "object": "chat.completion", "choices": [], "model": "m"},
            headers={"Access-Control-Allow-Origin": "*"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def config_for(url: str, **sections: object) -> dict[str, object]:
    return {"providers": {"openai": {"type": "openai", "base_url": url, "api_key": "sk-provider"}}, **sections}


async def raw_request(url: str, target: str, method: str = "GET") -> tuple[int, bytes]:
    """Send a request line exactly as written (no client-side normalisation)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_without_cors_a_preflight_is_refused_by_the_gateway_and_never_forwarded(tmp_path):
    paths: list[str] = []
    async with serve_app(recording_upstream(paths)) as url, run_gateway(config_for(url), tmp_path) as gw:
        async with aiohttp.ClientSession() as session:
            preflight = await session.options(
                f"{gw.url}/v1/chat/completions",
                headers={"Origin": APP, "Access-Control-Request-Method": "POST"},
            )
            actual = await session.post(f"{gw.url}/v1/chat/completions", json=CHAT, headers={"Origin": APP})
    assert preflight.status == 403
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert actual.status == 200
    assert "Access-Control-Allow-Origin" not in actual.headers  # the provider's own is dropped too
    assert paths == ["/v1/chat/completions"]


async def test_an_allowed_origin_gets_its_preflight_and_can_read_answers_and_streams(tmp_path):
    config = {"providers": {"mock": {"type": "mock"}}, "cors": {"allow_origins": [APP]}}
    async with run_gateway(config, tmp_path) as gw:
        async with aiohttp.ClientSession() as session:
            preflight = await session.options(
                f"{gw.url}/v1/chat/completions",
                headers={
                    "Origin": APP,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
                },
            )
            other = await session.options(
                f"{gw.url}/v1/chat/completions",
                headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
            )
            wrong_method = await session.options(
                f"{gw.url}/v1/chat/completions", headers={"Origin": APP, "Access-Control-Request-Method": "DELETE"}
            )
            stream = await session.post(
                f"{gw.url}/v1/chat/completions", json={**CHAT, "stream": True}, headers={"Origin": APP}
            )
            events = await stream.read()
            foreign = await session.post(f"{gw.url}/v1/chat/completions", json=CHAT, headers={"Origin": "https://evil.example"})
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == APP
    assert preflight.headers["Access-Control-Allow-Methods"] == "GET, POST"
    assert preflight.headers["Access-Control-Allow-Headers"] == "authorization, content-type, x-stainless-os"
    assert preflight.headers["Access-Control-Max-Age"] == "600"
    # the headers every answer carries (SPEC), a preflight's included
    assert preflight.headers["x-request-id"] and preflight.headers["Server-Timing"].startswith("gateway;dur=")
    assert (other.status, wrong_method.status) == (403, 403)
    assert stream.headers["Access-Control-Allow-Origin"] == APP
    assert "x-request-id" in stream.headers["Access-Control-Expose-Headers"]
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    assert stream.headers["X-Content-Type-Options"] == "nosniff"
    assert events.endswith(b"data: [DONE]\n\n")
    assert "Access-Control-Allow-Origin" not in foreign.headers


async def test_answers_carry_security_headers_and_gateway_errors_are_not_cacheable(tmp_path):
    config = {"providers": {"mock": {"type": "mock"}}, "clients": {"app": {"key": "app-key"}}}
    async with run_gateway(config, tmp_path) as gw:
        async with aiohttp.ClientSession() as session:
            ok = await session.post(
                f"{gw.url}/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer app-key"}
            )
            refused = await session.post(f"{gw.url}/v1/chat/completions", json=CHAT)
    for answer in (ok, refused):
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert answer.headers["Server"] == SERVER  # no aiohttp or Python version, on a gateway error too
    assert refused.status == 401
    assert refused.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/v1/models/../chat/completions", "/v1/chat/completions"),
        ("/v1/models/%2e%2e/chat/completions", "/v1/chat/completions"),
        ("/v1/./chat//completions", "/v1/chat/completions"),
        ("/v1/%2E%2e/v1/embeddings", "/v1/embeddings"),
    ],
)
async def test_dot_segments_are_removed_before_routing(tmp_path, target, forwarded):
    paths: list[str] = []
    async with serve_app(recording_upstream(paths)) as url, run_gateway(config_for(url), tmp_path) as gw:
        status, _ = await raw_request(gw.url, target, "POST")
    assert status == 200
    assert paths == [forwarded]


@pytest.mark.parametrize("target", ["/../etc/passwd", "/v1/../../etc/passwd", "/%2e%2e/admin", "/v1/%2e%2e/%2e%2e/x"])
async def test_a_path_that_climbs_above_the_root_is_400_and_never_forwarded(tmp_path, target):
    paths: list[str] = []
    async with serve_app(recording_upstream(paths)) as url, run_gateway(config_for(url), tmp_path) as gw:
        status, body = await raw_request(gw.url, target)
    assert status == 400
    assert b'"invalid_request"' in body
    assert paths == []


@pytest.mark.parametrize(
    ("cors", "key", "problem"),
    [
        ({"allow_origins": ["*"], "allow_credentials": True}, "cors.allow_credentials", "cannot be true"),
        ({"allow_origins": ["app.example.com"]}, "cors.allow_origins[0]", "scheme://host"),
    ],
)
def test_a_cors_mistake_is_a_config_error_naming_the_key(tmp_path, cors, key, problem):
    path = write_config({"providers": {"mock": {"type": "mock"}}, "cors": cors}, tmp_path)
    with pytest.raises(ConfigError) as raised:
        load(str(path))
    assert raised.value.key_path == key
    assert problem in raised.value.problem
