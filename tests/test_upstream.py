"""The upstream hop's HTTP/1.1 client (gateway/upstream.py), through the gateway.

The upstreams here are raw loopback TCP servers that write exact bytes, so framing,
keep-alive, compression, interim answers and connection loss are what the test
says, not what a server framework chooses. Resets, garbage, half bodies, stalls,
backpressure and timeouts are in tests/test_proxy.py and tests/test_hardening_upstream.py.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import trustme

from gateway.testing import run_gateway
from gateway.upstream import UpstreamPool, UpstreamProtocolError

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
ANSWER = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
).encode()
STREAM = b"".join(
    b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                            "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}).encode() + b"\n\n"
    for word in ("one ", "two ", "three")
) + b"data: [DONE]\n\n"  # fmt: skip

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Upstream"], Awaitable[None]]


class Upstream:
    """A raw TCP server; counts connections and keeps every request head it read."""

    def __init__(self) -> None:
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.heads: list[bytes] = []
        self.url = ""

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request's head and body (Content-Length framed); None at the end of the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        self.heads.append(head)
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                await reader.readexactly(int(line.split(b":", 1)[1]))
        return head


@asynccontextmanager
async def raw_upstream(handler: Handler) -> AsyncIterator[Upstream]:
    upstream = Upstream()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream.connections += 1
        upstream.open += 1
        upstream.most_open = max(upstream.most_open, upstream.open)
        try:
            await handler(reader, writer, upstream)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            upstream.open -= 1
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield upstream
    finally:
        server.close()
        await server.wait_closed()


def answer(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    lines = [f"HTTP/1.1 {status}", "Content-Type: application/json", *headers]
    if not any(header.lower().startswith(("content-length", "transfer-encoding")) for header in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(body: bytes, size: int = 7) -> bytes:
    parts = [body[index : index + size] for index in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


def config_for(url: str, **provider: Any) -> dict[str, Any]:
    return {"providers": {"oa": {"type": "openai", "base_url": url, "api_key": "sk-provider", **provider}}}


async def post(gw: Any, body: Any = CHAT, **headers: str) -> tuple[int, bytes, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + "/v1/chat/completions", json=body, headers=headers) as reply:
            return reply.status, await reply.read(), reply.headers


async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: Upstream) -> None:
    while await upstream.read_request(reader) is not None:
        writer.write(answer(ANSWER))
        await writer.drain()


async def test_sequential_requests_share_one_kept_alive_connection(tmp_path):
    async with raw_upstream(keep_alive) as upstream, run_gateway(config_for(upstream.url), tmp_path) as gw:
        for _ in range(5):
            status, body, _ = await post(gw)
            assert (status, json.loads(body)["choices"][0]["message"]["content"]) == (200, "hello")
    assert upstream.connections == 1
    head = upstream.heads[0].decode()
    assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"\r\nHost: {upstream.url.split('//')[1]}\r\n" in head
    assert "\r\nAccept-Encoding: gzip, deflate\r\n" in head  # its own, not the caller's
    assert "\r\nContent-Length: " in head


async def test_an_answer_that_says_connection_close_is_not_reused(tmp_path):
    async def close_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: Upstream) -> None:
        if await upstream.read_request(reader) is not None:
            writer.write(answer(ANSWER, "Connection: close"))
            await writer.drain()

    async with raw_upstream(close_each) as upstream, run_gateway(config_for(upstream.url), tmp_path) as gw:
        for _ in range(3):
            assert (await post(gw))[0] == 200
    assert upstream.connections == 3


async def test_an_idle_connection_the_upstream_closed_is_replaced_not_failed(tmp_path):
    async def answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: Upstream) -> None:
        if await upstream.read_request(reader) is not None:
            writer.write(answer(ANSWER))  # says nothing of closing, then closes when idle
            await writer.drain()
            await asyncio.sleep(0.05)

    async with raw_upstream(answer_then_close) as upstream, run_gateway(config_for(upstream.url), tmp_path) as gw:
        for _ in range(3):
            assert (await post(gw))[0] == 200
            await asyncio.sleep(0.2)
    assert upstream.connections == 3


@pytest.mark.parametrize(("method", "status"), [("GET", 200), ("POST", 502)])
async def test_a_reused_connection_closed_as_it_is_used_is_retried_only_when_idempotent(tmp_path, method, status):
    """The keep-alive race: the upstream closes a kept connection just as a request goes
    out on it. Sending again is safe for GET; a POST may have been acted on, so it fails."""

    async def second_request_unanswered(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: Upstream
    ) -> None:
        if await upstream.read_request(reader) is None:
            return
        writer.write(answer(ANSWER))
        await writer.drain()
        await upstream.read_request(reader)  # and closes without a word

    async with (
        raw_upstream(second_request_unanswered) as upstream,
        run_gateway(config_for(upstream.url), tmp_path) as gw,
    ):
        async with aiohttp.ClientSession() as session:
            for expected in (200, status):
                async with session.request(method, gw.url + "/v1/chat/completions", json=CHAT) as reply:
                    assert reply.status == expected, await reply.text()
    assert upstream.connections == (2 if method == "GET" else 1)


async def test_max_connections_bounds_the_connections_open_at_once(tmp_path):
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: Upstream) -> None:
        while await upstream.read_request(reader) is not None:
            await asyncio.sleep(0.05)
            writer.write(answer(ANSWER))
            await writer.drain()

    async with raw_upstream(slow) as upstream, run_gateway(config_for(upstream.url, max_connections=2), tmp_path) as gw:
        statuses = await asyncio.gather(*(post(gw) for _ in range(12)))
    assert [status for status, _, _ in statuses] == [200] * 12
    assert upstream.most_open == 2
    assert upstream.connections == 2


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_compressed_answers_reach_the_caller_decoded(tmp_path, encoding, framing):
    if encoding == "gzip":
        packed = gzip.compress(ANSWER)
    elif encoding == "deflate":
        packed = zlib.compress(ANSWER)
    else:
        squeezer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        packed = squeezer.compress(ANSWER) + squeezer.flush()
    name = "deflate" if encoding == "raw-deflate" else encoding
    framed = (
        answer(packed, f"Content-Encoding: {name}")
        if framing == "length"
        else answer(chunked(packed), f"Content-Encoding: {name}", "Transfer-Encoding: chunked")
    )

    async def compressed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: Upstream) -> None:
        while await upstream.read_request(reader) is not None:
            writer.write(framed)
            await writer.drain()

    async with raw_upstream(compressed) as upstream, run_gateway(config_for(upstream.url), tmp_path) as gw:
        status, body, headers = await post(gw, **{"Accept-Encoding": "identity"})
    assert (status, body) == (200, ANSWER)
    assert "Content-Encoding" not in headers


async def test_a_gzipped_stream_is_decoded_event_by_event(tmp_path):
    squeezer = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    pieces = [
        squeezer.compress(STREAM[:100]) + squeezer.flush(zlib.Z_SYNC_FLUSH),
        squeezer.compress(STREAM[100:]) + squeezer.flush(),
    ]

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: Upstream) -> None:
        await upstream.read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with raw_upstream(stream) as upstream, run_gateway(config_for(upstream.url), tmp_path) as gw:
        words = [
            chunk.choices[0].delta.content
            async for chunk in await gw.openai().chat.completions.create(stream=True, **CHAT)
        ]
    assert "".join(word for word in words if word) == "one two three"


async def test_an_answer_framed_by_the_end_of_the_connection_is_whole(tmp_path):
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: Upstream) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + ANSWER[:40])
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(ANSWER[40:])

    async with raw_upstream(until_close) as upstream, run_gateway(config_for(upstream.url), tmp_path) as gw:
        for _ in range(2):
            assert (await post(gw))[:2] == (200, ANSWER)
    assert upstream.connections == 2


async def test_interim_answers_are_skipped(tmp_path):
    async def early_hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: Upstream) -> None:
        while await upstream.read_request(reader) is not None:
            writer.write(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + answer(ANSWER)
            )
            await writer.drain()

    async with raw_upstream(early_hints) as upstream, run_gateway(config_for(upstream.url), tmp_path) as gw:
        for _ in range(2):
            status, body, headers = await post(gw)
            assert (status, body) == (200, ANSWER)
            assert "Link" not in headers
    assert upstream.connections == 1


async def test_a_head_request_gets_the_head_and_the_connection_is_not_reused(tmp_path):
    async def head_then_more(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: Upstream) -> None:
        while await upstream.read_request(reader) is not None:
            # A HEAD's answer names the length of a body it does not carry.
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 608\r\n\r\n")
            await writer.drain()

    async with raw_upstream(head_then_more) as upstream, run_gateway(config_for(upstream.url), tmp_path) as gw:
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.head(gw.url + "/v1/models") as reply:
                    assert reply.status == 200
    assert upstream.connections == 2


async def test_an_encoding_the_gateway_did_not_ask_for_is_502(tmp_path):
    async def brotli(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: Upstream) -> None:
        while await upstream.read_request(reader) is not None:
            writer.write(answer(b"\x8b\x02\x80not really brotli", "Content-Encoding: br"))
            await writer.drain()

    async with raw_upstream(brotli) as upstream, run_gateway(config_for(upstream.url), tmp_path) as gw:
        status, body, _ = await post(gw)
        assert status == 502 and b"upstream_error" in body
        assert (await post(gw))[0] == 502  # and the next call is answered the same way, not hung


async def test_a_corrupt_gzip_body_is_502_not_garbage(tmp_path):
    async def corrupt(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: Upstream) -> None:
        while await upstream.read_request(reader) is not None:
            writer.write(answer(gzip.compress(ANSWER)[:12] + b"\xff" * 40, "Content-Encoding: gzip"))
            await writer.drain()

    async with raw_upstream(corrupt) as upstream, run_gateway(config_for(upstream.url), tmp_path) as gw:
        status, body, _ = await post(gw)
    assert status == 502 and b"upstream_error" in body


@pytest.mark.parametrize("kind", ["one-huge-header", "endless-header"])
async def test_an_answer_head_over_64_kib_is_502_and_never_relayed(tmp_path, kind):
    # Before: a 200 KB header was relayed (the caller's own client then refused the
    # answer), and a header that never ends grew the gateway's memory for as long as
    # bytes kept coming (each read resets the provider's timeout).
    sent = {"bytes": 0}

    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: Upstream) -> None:
        while await upstream.read_request(reader) is not None:
            if kind == "one-huge-header":
                writer.write(answer(ANSWER, "X-Huge: " + "a" * 200_000))
                await writer.drain()
                continue
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Endless: ")
            while sent["bytes"] < 50_000_000:  # stopped by the gateway closing the connection
                writer.write(b"a" * 16384)
                sent["bytes"] += 16384
                await writer.drain()
                await asyncio.sleep(0)

    async with raw_upstream(huge) as upstream, run_gateway(config_for(upstream.url), tmp_path) as gw:
        status, body, headers = await post(gw)
        assert status == 502 and b"upstream_error" in body
        assert "X-Huge" not in headers
        assert (await post(gw))[0] == 502  # the next call the same, not hung
    assert sent["bytes"] < 5_000_000


async def test_bytes_after_a_complete_answer_drop_the_connection(tmp_path):
    async def extra(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: Upstream) -> None:
        while await upstream.read_request(reader) is not None:
            writer.write(answer(ANSWER) + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra")
            await writer.drain()

    async with raw_upstream(extra) as upstream, run_gateway(config_for(upstream.url), tmp_path) as gw:
        for _ in range(2):
            assert (await post(gw))[:2] == (200, ANSWER)
            await asyncio.sleep(0.05)
    assert upstream.connections == 2  # the unasked-for answer is never served to the next request


async def test_a_header_with_a_line_break_never_reaches_the_wire():
    pool = UpstreamPool("http://127.0.0.1:9", limit=1, timeout_s=1)
    with pytest.raises(UpstreamProtocolError):
        await pool.request("POST", "/v1/chat/completions", {"x-a": "1\r\nx-injected: 2"}, b"{}")
    await pool.close()


@pytest.fixture
def tls_upstream_ca(tmp_path, monkeypatch):
    """A private CA the gateway trusts (SSL_CERT_FILE, as an operator would set it) and
    one it does not; yields both, to sign the loopback upstream's certificate."""
    trusted, untrusted = trustme.CA(), trustme.CA()
    bundle = tmp_path / "ca.pem"
    trusted.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    return trusted, untrusted


@pytest.mark.parametrize("signer", ["trusted", "untrusted"])
async def test_an_https_upstream_is_verified_and_kept_alive(tmp_path, tls_upstream_ca, signer):
    ca = tls_upstream_ca[0] if signer == "trusted" else tls_upstream_ca[1]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    upstream = Upstream()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream.connections += 1
        try:
            await keep_alive(reader, writer, upstream)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    url = f"https://localhost:{server.sockets[0].getsockname()[1]}"
    try:
        async with run_gateway(config_for(url), tmp_path) as gw:
            replies = [await post(gw) for _ in range(3)]
    finally:
        server.close()
        await server.wait_closed()
    if signer == "trusted":
        assert [(status, body) for status, body, _ in replies] == [(200, ANSWER)] * 3
        assert upstream.connections == 1
        assert upstream.heads[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost:")
    else:  # a certificate the gateway cannot verify: no request is sent
        assert {status for status, _, _ in replies} == {502}
        assert upstream.heads == []


async def test_a_connection_idle_longer_than_the_keepalive_is_closed_not_reused(tmp_path, monkeypatch):
    monkeypatch.setattr("gateway.upstream.KEEPALIVE_S", 0.2)  # 15 s in service: too long to wait for here
    async with raw_upstream(keep_alive) as upstream, run_gateway(config_for(upstream.url), tmp_path) as gw:
        assert (await post(gw))[0] == 200
        assert (await post(gw))[0] == 200  # at once: the same connection
        await asyncio.sleep(0.4)
        assert (await post(gw))[0] == 200  # after the keep-alive: a new one
    assert upstream.connections == 2
