"""Hardening, bad input: fuzzed bodies, odd request lines and headers, huge requests.

Every case ends in a clear error in the API's shape or a correct proxy, never a 500,
never a crash, and never a request anywhere but the configured upstream. Examples are
drawn by hypothesis once per run (derandomized: the same every run), then all sent
through one real gateway per chain, so the whole file stays within seconds.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import DataServer
from gateway.cors import SERVER
from gateway.exchange import Exchange
from gateway.mock_upstream import MockUpstream
from gateway.testing import run_gateway, serve_app

FULL_CHAIN = [
    {"use": "scan", "config": {"action": "block", "min_severity": "MEDIUM", "redact": ["secret", "pii"]}},
    {"use": "cache", "config": {"backend": "memory", "ttl_s": 60, "max_entries": 100, "scope": "client"}},
    {"use": "cascade", "config": {"draft_model": "gpt-4o-mini", "escalate_model": "gpt-4o"}},
    {"use": "cost", "config": {"budget_usd_per_day": 1000, "store": "STORE"}},
    {"use": "breaker", "config": {"failure_threshold": 1000, "recovery_s": 1, "retries": 0}},
]
PATHS = ["/v1/chat/completions", "/v1/messages", "/v1/embeddings", "/v1/models"]


class Recorder:
    """Upstreams on loopback that note every request they get (host and raw path)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def app(self, answer_with_mock: bool = True) -> web.Application:
        mock = MockUpstream()

        async def record(request: web.Request) -> web.StreamResponse:
            self.seen.append((request.method, request.host, request.raw_path))
            if not answer_with_mock:
                return web.json_response({"evil": True})
            return await mock._serve(request)

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", record)
        return app


def gateway_config(url: str, chain: bool, tmp_path: Any, **extra: Any) -> dict[str, Any]:
    plugins = []
    if chain:
        for entry in FULL_CHAIN:
            config = dict(entry["config"])
            if config.get("store") == "STORE":
                config["store"] = str(tmp_path / "usage.db")
            plugins.append({"use": entry["use"], "config": config})
    return {
        "providers": {"openai": {"type": "openai", "base_url": url, "api_key": "sk-provider", "timeout_s": 5}},
        "limits": {"max_body_bytes": 65536},
        "plugins": plugins,
        **extra,
    }


def nested(depth: int) -> bytes:
    inner = b"[" * depth + b"]" * depth
    return b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":' + inner + b"}]}"


_any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_wrong_message = st.one_of(
    _any_json,
    st.fixed_dictionaries({"role": _any_json, "content": _any_json}),
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool"]), "content": _any_json}),
)
_known_fields = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.sampled_from(["gpt-4o-mini", "gpt-4o", "claude-3-5-haiku"]), _any_json),
        "messages": st.one_of(st.lists(_wrong_message, max_size=3), _any_json),
        "stream": st.one_of(st.booleans(), st.sampled_from(["yes", "true", 1, 0, None]), _any_json),
        "max_tokens": st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.floats(), st.text(max_size=4)),
        "temperature": _any_json,
        "input": _any_json,
        "system": _any_json,
        "tools": _any_json,
        "stream_options": _any_json,
    },
)


def _encoded(document: Any) -> bytes:
    try:
        return json.dumps(document, allow_nan=True).encode()
    except (ValueError, OverflowError):
        return b"{}"


_bodies = st.one_of(
    _known_fields.map(_encoded),
    st.tuples(_known_fields.map(_encoded), st.integers(min_value=0, max_value=200)).map(lambda t: t[0][: t[1]]),
    st.binary(max_size=120),
    st.binary(max_size=60).map(lambda b: b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + b + b'"}]}'),
    st.sampled_from([10, 500, 5000, 20000]).map(nested),
)
_cases = st.tuples(_bodies, st.sampled_from(PATHS), st.sampled_from(["application/json", "text/plain", None]))


def draw_cases(count: int) -> list[tuple[bytes, str, str | None]]:
    """The same ``count`` examples on every run (derandomized, no example database)."""
    cases: list[tuple[bytes, str, str | None]] = []

    @settings(
        max_examples=count, derandomize=True, database=None, deadline=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(_cases)
    def collect(case: tuple[bytes, str, str | None]) -> None:
        cases.append(case)

    collect()
    return cases


def assert_clear_answer(status: int, body: bytes, case: Any) -> None:
    assert status != 500 and status < 600, (status, body[:300], case)
    if status >= 400:
        document = msgspec.json.decode(body)
        assert "error" in document, (status, body[:300], case)


@pytest.mark.parametrize("chain", [True, False], ids=["full-chain", "no-plugin"])
async def test_fuzzed_bodies_get_a_clear_answer_and_reach_only_the_upstream(tmp_path, chain):
    recorder = Recorder()
    cases = draw_cases(120)
    async with serve_app(recorder.app()) as url, run_gateway(gateway_config(url, chain, tmp_path), tmp_path) as gw:
        upstream_host = url.removeprefix("http://")
        async with aiohttp.ClientSession() as session:
            for body, path, content_type in cases:
                headers = {"Authorization": "Bearer sk-caller"}
                if content_type:
                    headers["Content-Type"] = content_type
                async with session.post(gw.url + path, data=body, headers=headers) as answer:
                    assert_clear_answer(answer.status, await answer.read(), (body[:200], path, content_type))
            # the gateway still serves ordinary traffic afterwards
            ok = await session.post(
                gw.url + "/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "still there?"}]},
            )
            assert ok.status == 200
    assert recorder.seen
    assert all(host == upstream_host for _, host, _ in recorder.seen)


@pytest.mark.parametrize("depth", [100, 5000, 100_000])
def test_deep_nesting_is_400_invalid_request_not_a_crash(depth):
    exchange = Exchange(None, method="POST", path="/v1/chat/completions", body=nested(depth))
    try:
        document = exchange.json()
    except Exception as error:  # noqa: BLE001 (the kind is what is checked)
        assert getattr(error, "status", None) == 400 and error.code == "invalid_request", error
    else:
        assert isinstance(document, dict)


async def test_a_deeply_nested_body_through_the_full_chain_is_400_in_the_api_shape(tmp_path):
    recorder = Recorder()
    async with serve_app(recorder.app()) as url, run_gateway(gateway_config(url, True, tmp_path), tmp_path) as gw:
        async with aiohttp.ClientSession() as session:
            for path in ("/v1/chat/completions", "/v1/messages"):
                answer = await session.post(gw.url + path, data=nested(30_000), headers={"Content-Type": "application/json"})
                body = await answer.json()
                assert answer.status == 400, body
                assert "nested too deeply" in json.dumps(body)
    assert recorder.seen == []


# -- request lines and headers a client library would normalise: raw sockets -----------------


async def raw_exchange(url: str, head: bytes, body: bytes = b"", timeout: float = 5) -> tuple[int | None, bytes]:
    """Send bytes exactly as written; the status (None if the gateway closed without one)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        data = b""
    finally:
        writer.close()
    if not data.startswith(b"HTTP/"):
        return None, data
    head_part, _, rest = data.partition(b"\r\n\r\n")
    return int(head_part.split()[1]), rest


@pytest.fixture
async def two_upstreams(tmp_path):
    """A gateway in front of a recording upstream, and an 'evil' one it must never call."""
    upstream, evil = Recorder(), Recorder()
    async with serve_app(upstream.app()) as url, serve_app(evil.app(answer_with_mock=False)) as evil_url:
        config = gateway_config(url, True, tmp_path, clients={"app": {"key": "sk-app"}})
        async with run_gateway(config, tmp_path) as gw:
            yield gw, upstream, evil, evil_url.removeprefix("http://")


ODD_TARGETS = [
    "GET http://{evil}/v1/models",
    "GET //{evil}/v1/models",
    "GET ///{evil}/v1/models",
    "GET /v1/models@{evil}/x",
    "GET /v1%2fmodels",
    "GET /v1/models%2f..%2f..%2f{evil}",
    "GET /%2e%2e%2f%2e%2e%2f{evil}/v1/models",
    "GET /v1/models/..;/..;/x",
    "GET /v1/models\\..\\..\\x",
    "GET *",
    "CONNECT {evil} ",
    "FOO /v1/models",
    "PROPFIND /v1/models",
    "TRACE /v1/models",
    "DELETE /v1/chat/completions",
    "OPTIONS *",
]


@pytest.mark.parametrize("line", ODD_TARGETS)
async def test_odd_request_lines_never_reach_another_host_nor_fail_with_500(two_upstreams, line):
    gw, upstream, evil, evil_host = two_upstreams
    request_line = line.format(evil=evil_host).rstrip()
    head = f"{request_line} HTTP/1.1\r\nHost: {evil_host}\r\nAuthorization: Bearer sk-app\r\nContent-Length: 0\r\n"
    status, body = await raw_exchange(gw.url, head.encode() + b"Connection: close\r\n\r\n")
    assert status is None or status < 500, (status, body[:300])
    if status is not None and status >= 400:
        # what the HTTP parser refuses too: the gateway answers it in the API's shape
        assert "error" in json.loads(body), body[:300]
    assert evil.seen == []
    for _, host, raw_path in upstream.seen:
        assert host == upstream_host_of(gw), host
        assert ".." not in raw_path and "%2e%2e" not in raw_path.lower()


def upstream_host_of(gw: Any) -> str:
    provider = gw.gateway.proxy.router.default_other
    return f"{provider.server_address}:{provider.server_port}"


CHAT_BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


@pytest.mark.parametrize(
    "headers",
    [
        f"Content-Length: {len(CHAT_BODY)}\r\nContent-Length: 5\r\n",
        f"Content-Length: {len(CHAT_BODY)}\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 1e3\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
    ],
    ids=["two-lengths", "length-and-chunked", "negative-length", "float-length", "te-gzip", "two-te"],
)
async def test_conflicting_framing_headers_are_refused_with_400(two_upstreams, headers):
    gw, upstream, evil, _ = two_upstreams
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-app\r\n{headers}Connection: close\r\n\r\n"
    status, _ = await raw_exchange(gw.url, head.encode(), CHAT_BODY)
    assert status == 400 or status is None
    assert upstream.seen == [] and evil.seen == []


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        (["Bearer sk-app", "Bearer sk-wrong"], {200}),
        (["Bearer sk-wrong", "Bearer sk-app"], {401}),
        (["Bearer sk-app", "Bearer sk-app"], {200}),
    ],
)
async def test_duplicate_authorization_is_judged_on_the_first_and_never_forwarded(two_upstreams, authorization, expected):
    gw, upstream, _, _ = two_upstreams
    seen_headers: list[str] = []
    lines = "".join(f"Authorization: {value}\r\n" for value in authorization)
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{lines}x-api-key: sk-other\r\nContent-Type: application/json\r\nContent-Length: {len(CHAT_BODY)}\r\nConnection: close\r\n\r\n"
    status, body = await raw_exchange(gw.url, head.encode(), CHAT_BODY)
    assert status in expected, body[:300]
    seen_headers.extend(raw_path for _, _, raw_path in upstream.seen)
    assert len(upstream.seen) == (1 if status == 200 else 0)


async def test_an_upstream_never_sees_the_callers_keys_even_duplicated(tmp_path):
    seen: list[list[tuple[str, str]]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(list(request.headers.items()))
        return web.json_response({"id": "x", "object": "chat.completion", "choices": [], "model": "m"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    async with serve_app(app) as url, run_gateway(gateway_config(url, False, tmp_path), tmp_path) as gw:
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-one\r\nAuthorization: Bearer sk-two\r\n"
            "x-api-key: sk-three\r\nx-api-key: sk-four\r\napi-key: sk-five\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(CHAT_BODY)}\r\nConnection: close\r\n\r\n"
        )
        status, _ = await raw_exchange(gw.url, head.encode(), CHAT_BODY)
    assert status == 200
    values = " ".join(value for name, value in seen[0])
    assert "sk-provider" in values
    for key in ("sk-one", "sk-two", "sk-three", "sk-four", "sk-five"):
        assert key not in values


@pytest.mark.parametrize(
    "extra",
    [
        "X-Big: " + "a" * 100_000 + "\r\n",
        "".join(f"X-Many-{i}: {'b' * 100}\r\n" for i in range(2000)),
        "X-Bad: \x00\x01nul\r\n",
        "X-Utf8: \xff\xfe\r\n",
        "X-No-Colon\r\n",
        " X-Folded: continued\r\n",
    ],
    ids=["one-huge", "thousands", "nul-bytes", "invalid-utf8", "no-colon", "obs-fold"],
)
async def test_huge_or_broken_headers_are_refused_without_a_crash(two_upstreams, extra):
    gw, upstream, evil, _ = two_upstreams
    head = f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-app\r\n{extra}Connection: close\r\n\r\n"
    status, body = await raw_exchange(gw.url, head.encode("latin-1"))
    assert status is None or status < 500 or status == 502, body[:200]
    assert evil.seen == []
    # and it still serves the next caller
    status, _ = await raw_exchange(gw.url, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-app\r\nConnection: close\r\n\r\n")
    assert status == 200


async def test_a_declared_huge_body_is_413_before_it_is_sent(two_upstreams):
    gw, upstream, _, _ = two_upstreams
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-app\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
    # only the head and a first few bytes go out: the answer must come without the rest
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + b'{"model":')
        answer_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(answer_head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        body = await asyncio.wait_for(reader.readexactly(length), 5)
    finally:
        writer.close()
    assert answer_head.startswith(b"HTTP/1.1 413")
    assert b'"request_too_large"' in body
    assert upstream.seen == []


async def test_a_chunked_body_over_the_limit_is_413_while_it_streams_in(two_upstreams):
    gw, upstream, _, _ = two_upstreams
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-app\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"a" * 8192
    sent = 0
    answer = asyncio.ensure_future(reader.read(12))
    try:
        for _ in range(1000):  # up to 8 MB, far past the 64 KiB limit, unless answered first
            if answer.done():
                break
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            try:
                await asyncio.wait_for(writer.drain(), 2)
            except (ConnectionResetError, BrokenPipeError):
                break
            sent += len(chunk)
            await asyncio.sleep(0.002)
        first = await asyncio.wait_for(answer, 5)
    finally:
        writer.close()
    assert first.startswith(b"HTTP/1.1 413"), first
    assert sent < 1_000_000
    assert upstream.seen == []


async def test_invalid_utf8_in_the_path_and_query_is_a_clear_answer(two_upstreams):
    gw, _, evil, _ = two_upstreams
    for target in (b"/v1/models/\xff\xfe", b"/v1/models?x=\xc3\x28", b"/v1/chat/completions%ff%fe"):
        head = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-app\r\nConnection: close\r\n\r\n"
        status, body = await raw_exchange(gw.url, head)
        assert status is None or status < 500, (target, status, body[:200])
    assert evil.seen == []


# -- what aiohttp's HTTP parser refuses (and a body that fails as it is read, which the proxy
# -- answers): in the API's shape, never quoted back ----------------------------------------------

FAKE_KEY = b"sk-proj-FAKEKEY0123456789abcdef"
GZIP_GARBAGE = b"\x1f\x8b\x08\x00\x00\x00\x00\x00garbage:" + FAKE_KEY
REFUSED = {
    "nul-in-authorization": (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + FAKE_KEY + b"\x00\r\n\r\n", 400, "invalid_request"),
    "header-over-64KiB": (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + FAKE_KEY + b"A" * 70_000 + b"\r\n\r\n", 431, "request_headers_too_large"),
    "too-many-headers": (b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-Key-%d: %s\r\n" % (i, FAKE_KEY) for i in range(200)) + b"\r\n", 431, "request_headers_too_large"),
    "request-line-over-8KiB": (b"GET /v1/models?key=" + FAKE_KEY + b"A" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "request_line_too_long"),
    "bad-method": (b"F(O /" + FAKE_KEY + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_request"),
    "bad-version": (b"GET /v1/models HTTP/9" + FAKE_KEY + b"\r\nHost: x\r\n\r\n", 400, "invalid_request"),
    "space-in-target": (b"GET /v1/mo dels" + FAKE_KEY + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_request"),
    "header-without-colon": (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBearer " + FAKE_KEY + b"\r\n\r\n", 400, "invalid_request"),
    "bad-header-name": (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-" + FAKE_KEY + b"(: 1\r\n\r\n", 400, "invalid_request"),
    "tls-on-plain-port": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + FAKE_KEY, 400, "invalid_request"),
    "two-content-lengths": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + FAKE_KEY + b"\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400, "invalid_request"),
    "bad-chunk-size": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz" + FAKE_KEY + b"\r\n{}\r\n0\r\n\r\n", 400, "invalid_request"),
    "undecodable-gzip-body": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-app\r\nContent-Type: application/json\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(GZIP_GARBAGE), GZIP_GARBAGE),
        400,
        "invalid_request",
    ),
}


async def refused_exchange(url: str, *parts: bytes) -> tuple[str, dict[str, str], bytes, bytes]:
    """Send ``parts`` (a pause between them) and read until the gateway closes; a reset fails
    the test. (status line, headers, body, every byte received)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for n, part in enumerate(parts):
            if n:
                await asyncio.sleep(0.2)  # the head is in the gateway's hands before the rest comes
            writer.write(part)
            await writer.drain()
        received = await asyncio.wait_for(reader.read(), 10)  # to EOF: the gateway closed the connection
    finally:
        writer.close()
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return status_line, headers, body, received


def assert_refused_in_the_api_shape(answer: tuple[str, dict[str, str], bytes, bytes], status: int, code: str) -> None:
    status_line, headers, body, received = answer
    assert status_line.split()[1] == str(status), received[:300]
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", code), error
    assert error["message"] and FAKE_KEY.decode() not in error["message"]
    assert FAKE_KEY not in received and b"FAKEKEY" not in received  # nothing of the request quoted back
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(body))
    assert (headers["x-content-type-options"], headers["x-frame-options"], headers["cache-control"]) == ("nosniff", "DENY", "no-store")
    assert headers.get("connection", "").lower() == "close" or status_line.startswith("HTTP/1.0")
    assert len(headers["x-request-id"]) == 32  # a new id, as on every answer: the one to quote in a report
    assert headers["server"] == SERVER  # no aiohttp or Python version


@pytest.mark.parametrize(("raw", "status", "code"), REFUSED.values(), ids=REFUSED.keys())
async def test_a_request_the_http_parser_refuses_is_answered_in_the_api_shape_without_quoting_it(two_upstreams, raw, status, code):
    gw, upstream, evil, _ = two_upstreams
    assert_refused_in_the_api_shape(await refused_exchange(gw.url, raw), status, code)
    assert upstream.seen == [] and evil.seen == []
    # the connection was closed cleanly (read to EOF, no reset), and the next caller is served
    status_line, _, _, _ = await refused_exchange(gw.url, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-app\r\nConnection: close\r\n\r\n")
    assert status_line.split()[1] == "200"


@pytest.mark.parametrize(
    "rest",
    [b"zz" + FAKE_KEY + b"\r\n{}\r\n0\r\n\r\n", b"5\r\n" + FAKE_KEY + b"\r\n0\r\n\r\n"],
    ids=["bad-chunk-size", "chunk-longer-than-its-size"],
)
async def test_a_chunked_body_that_turns_malformed_after_the_head_is_refused_at_once(two_upstreams, rest):
    """The parser fails after the proxy has the request: its body reader gets the error
    then, instead of waiting for limits.body_timeout_s (60 s here; the read allows 10)."""
    gw, upstream, evil, _ = two_upstreams
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-app\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{\"\r\n"
    )
    answer = await refused_exchange(gw.url, head, rest)
    assert_refused_in_the_api_shape(answer, 400, "invalid_request")
    assert "chunk" in json.loads(answer[2])["error"]["message"]
    assert upstream.seen == [] and evil.seen == []
    assert gw.gateway.proxy.in_flight == 0


GZIP_OF_CHAT = gzip.compress(CHAT_BODY)
#: bodies that fail while the proxy reads them: (what the head says, the rest sent after a pause)
FAILS_MID_READ = {
    "bad-chunk-size": (b"Transfer-Encoding: chunked\r\n", b'2\r\n{"\r\n', b"zz" + FAKE_KEY + b"\r\n{}\r\n0\r\n\r\n"),
    "chunk-longer-than-its-size": (b"Transfer-Encoding: chunked\r\n", b'2\r\n{"\r\n', b"5\r\n" + FAKE_KEY + b"\r\n0\r\n\r\n"),
    "gzip-that-does-not-decode": (b"Content-Encoding: gzip\r\nContent-Length: %d\r\n" % len(GZIP_GARBAGE), b"", GZIP_GARBAGE),
    "chunked-gzip-that-turns-bad": (
        b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        b"a\r\n%s\r\n" % GZIP_OF_CHAT[:10],
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(GZIP_GARBAGE), GZIP_GARBAGE),
    ),
}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
@pytest.mark.parametrize(("framing", "first", "rest"), FAILS_MID_READ.values(), ids=FAILS_MID_READ.keys())
async def test_a_body_that_fails_while_the_proxy_reads_it_is_a_400_in_the_routes_shape_and_counted_as_400(
    two_upstreams, caplog, path, framing, first, rest
):
    """The proxy answers it (not the connection handler): the route's API shape, and the
    gateway's records (/stats, /metrics, the access line) say 400, never status 0."""
    gw, upstream, evil, _ = two_upstreams
    caplog.set_level(logging.INFO, logger="gateway.access")
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-app\r\nContent-Type: application/json\r\n%s\r\n"
    status_line, headers, body, received = await refused_exchange(gw.url, head % (path.encode(), framing) + first, rest)
    assert status_line.split()[1] == "400", received[:300]
    assert received.count(b"HTTP/1.") == 1  # one answer, then the connection closed (read to EOF)
    assert headers["connection"].lower() == "close"
    assert (headers["content-type"], headers["cache-control"], headers["x-content-type-options"]) == ("application/json", "no-store", "nosniff")
    assert headers["content-length"] == str(len(body)) and "x-request-id" in headers
    assert FAKE_KEY not in received and b"FAKEKEY" not in received
    document = json.loads(body)
    if path == "/v1/messages":
        assert document["type"] == "error" and document["error"]["type"] == "invalid_request"
        message = document["error"]["message"]
    else:
        assert (document["error"]["type"], document["error"]["code"]) == ("invalid_request_error", "invalid_request")
        message = document["error"]["message"]
    assert ("Content-Encoding" in message) if b"gzip" in framing else ("chunk" in message)
    assert upstream.seen == [] and evil.seen == []
    assert gw.gateway.proxy.in_flight == 0

    async with aiohttp.ClientSession() as session:
        stats = await (await session.get(gw.admin_url + "/stats")).json()
        metrics = await (await session.get(gw.admin_url + "/metrics")).text()
    assert stats["by_status"] == {"400": 1}, stats
    requests = [line for line in metrics.splitlines() if line.startswith("gateway_requests_total{")]
    assert [line for line in requests if f'route="{path}"' in line and 'status="400"' in line and line.endswith(" 1.0")], requests
    assert not [line for line in requests if 'status="0"' in line], requests
    access = [record.args for record in caplog.records if record.name == "gateway.access"]
    assert access == [("POST", path, 400)], access


async def test_a_broken_body_closes_its_connection_and_the_next_caller_is_served(two_upstreams):
    """What follows the bad bytes is never read as a request; the gateway keeps serving."""
    gw, upstream, _, _ = two_upstreams
    smuggled = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-app\r\n\r\n"
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-app\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
    _, _, _, received = await refused_exchange(gw.url, head % len(GZIP_GARBAGE), GZIP_GARBAGE + smuggled)
    assert received.startswith(b"HTTP/1.1 400") and received.count(b"HTTP/1.") == 1
    assert upstream.seen == []
    status_line, _, _, _ = await refused_exchange(gw.url, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-app\r\nConnection: close\r\n\r\n")
    assert status_line.split()[1] == "200"
    assert [path for _, _, path in upstream.seen] == ["/v1/models"]


async def test_an_exception_escaping_the_handler_is_a_json_500_in_the_routes_shape_without_its_text():
    """The last net under the proxy: aiohttp's plain-text 500 becomes the gateway's."""

    async def broken(request: web.BaseRequest) -> web.StreamResponse:
        raise RuntimeError("a bug holding " + FAKE_KEY.decode())

    runner = web.ServerRunner(DataServer(broken, handler_cancellation=True, access_log=None))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        answers = {}
        for path in ("/v1/chat/completions", "/v1/messages"):
            request = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}" % path.encode()
            answers[path] = await refused_exchange(f"http://{host}:{port}", request)
    finally:
        await runner.cleanup()
    for status_line, headers, _, received in answers.values():
        assert status_line.split()[1] == "500" and FAKE_KEY not in received
        assert (headers["content-type"], headers["x-content-type-options"], headers["connection"]) == ("application/json", "nosniff", "close")
    openai = json.loads(answers["/v1/chat/completions"][2])["error"]
    assert (openai["type"], openai["code"]) == ("server_error", "internal_error")
    anthropic = json.loads(answers["/v1/messages"][2])
    assert (anthropic["type"], anthropic["error"]["type"]) == ("error", "internal_error")


# -- the admin API: its OpenAPI description, and schemathesis against it -------------------------

ADMIN_TOKEN = "admin-secret"


async def test_the_admin_api_describes_itself_at_openapi_json_with_every_route(tmp_path):
    async with serve_app(Recorder().app()) as url:
        config = gateway_config(url, True, tmp_path, admin={"token": ADMIN_TOKEN})
        async with run_gateway(config, tmp_path) as gw, aiohttp.ClientSession() as session:
            # behind the token, as every admin call but the probes and /metrics (SPEC.md)
            refused = await session.get(gw.admin_url + "/openapi.json")
            answer = await session.get(gw.admin_url + "/openapi.json", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            document = await answer.json()
    assert refused.status == 401
    assert answer.status == 200 and answer.headers["Server"] == SERVER
    assert document["openapi"].startswith("3.")
    for path in (
        "/healthz", "/readyz", "/metrics", "/plugins", "/stats", "/traces", "/traces.json", "/reload",
        "/scan", "/cache", "/breakers", "/breakers/{provider}/reset", "/usage", "/usage/quota", "/openapi.json",
    ):  # fmt: skip
        assert path in document["paths"], path


def _fuzz_admin_api(admin_url: str, examples: int) -> list[str]:
    """Every operation of /openapi.json with ``examples`` generated calls each: the
    problems found (a 5xx, or an answer that does not conform to the description)."""
    import schemathesis
    from hypothesis import Phase

    schema = schemathesis.openapi.from_path(str(Path(gateway_dir()) / "openapi.json"))
    problems: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=examples, derandomize=True, database=None, deadline=None,
            phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @given(operation.as_strategy())
        def call(case: Any) -> None:
            response = case.call(base_url=admin_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
            if response.status_code >= 500 and not (case.path == "/usage/quota" and response.status_code == 503):
                problems.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}")
                return
            try:
                case.validate_response(response)
            except (Exception, BaseExceptionGroup) as error:  # noqa: BLE001 (collected, reported together)
                problems.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {str(error)[:300]}")

        call()
    return problems


def gateway_dir() -> str:
    import gateway

    return str(Path(gateway.__file__).parent)


async def test_schemathesis_finds_no_5xx_and_no_nonconforming_answer_on_the_admin_api(tmp_path):
    pytest.importorskip("schemathesis")
    async with serve_app(Recorder().app()) as url:
        config = gateway_config(url, True, tmp_path, admin={"token": ADMIN_TOKEN})
        async with run_gateway(config, tmp_path) as gw:
            problems = await asyncio.wait_for(asyncio.to_thread(_fuzz_admin_api, gw.admin_url, 8), 60)
    assert problems == []
