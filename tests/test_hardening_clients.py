"""Hardening, slow and hostile clients: slowloris heads and bodies, callers that never
read a stream, and mass disconnects mid-stream (no task, socket or descriptor leak)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.testing import run_gateway, serve_app

CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true}'


def full_chain(tmp_path: Any) -> list[dict[str, Any]]:
    return [
        {"use": "scan", "config": {"action": "block", "min_severity": "MEDIUM", "scan_responses": True}},
        {"use": "cache", "config": {"backend": "memory", "ttl_s": 60, "max_entries": 100}},
        {"use": "cascade", "config": {"draft_model": "gpt-4o-mini", "escalate_model": "gpt-4o"}},
        {"use": "cost", "config": {"budget_usd_per_day": 1000, "store": str(tmp_path / "usage.db")}},
        {"use": "breaker", "config": {"failure_threshold": 1000, "recovery_s": 1, "retries": 0}},
    ]


def config_for(url: str, tmp_path: Any, *, chain: bool = True, **limits: Any) -> dict[str, Any]:
    return {
        "providers": {"oa": {"type": "openai", "base_url": url, "api_key": "sk-provider", "timeout_s": 10}},
        "limits": {"max_body_bytes": 65536, **limits},
        "plugins": full_chain(tmp_path) if chain else [],
    }


def chunk(text: str) -> bytes:
    return b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"' + text.encode() + b'"}}]}\n\n'


class StreamingUpstream:
    """An OpenAI-shaped upstream that streams ``events`` events, ``gap_s`` apart, and
    counts the streams in progress, finished, and cancelled (the caller's hop dropped)."""

    def __init__(self, events: int, gap_s: float, text: str = "tok ") -> None:
        self.events, self.gap_s, self.event = events, gap_s, chunk(text)
        self.active = self.cancelled = self.finished = 0
        self.sent = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.active += 1
        try:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for _ in range(self.events):
                await response.write(self.event)
                self.sent += len(self.event)
                if self.gap_s:
                    await asyncio.sleep(self.gap_s)
            await response.write(b"data: [DONE]\n\n")
            self.finished += 1
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled += 1
            raise
        finally:
            self.active -= 1

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        return app


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Whatever the gateway sent before closing the connection (raises if it did not)."""
    received = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = await asyncio.wait_for(reader.read(65536), max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            break
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data
    raise AssertionError(f"the connection was still open after {seconds} s (got {received[:100]!r})")


async def test_a_slowloris_request_head_is_cut_off_at_the_header_timeout(tmp_path):
    upstream = StreamingUpstream(1, 0)
    async with serve_app(upstream.app()) as url, run_gateway(config_for(url, tmp_path, header_timeout_s=1), tmp_path) as gw:
        reader, writer = await connect(gw.url)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()

        async def drip() -> None:  # a header byte every 100 ms, never the blank line
            for _ in range(100):
                writer.write(b"X")
                await writer.drain()
                await asyncio.sleep(0.1)

        dripping = asyncio.ensure_future(drip())
        try:
            await closed_within(reader, 5)
        finally:
            dripping.cancel()
            writer.close()
        assert time.monotonic() - started < 4
        # a silent connection is let go the same way
        reader, writer = await connect(gw.url)
        await closed_within(reader, 5)
        writer.close()
    assert upstream.active == upstream.finished == 0


async def test_a_slow_request_body_gets_408_at_the_body_timeout_and_is_never_forwarded(tmp_path):
    upstream = StreamingUpstream(1, 0)
    async with serve_app(upstream.app()) as url, run_gateway(config_for(url, tmp_path, body_timeout_s=1), tmp_path) as gw:
        for framing in (b"Content-Length: 5000\r\n", b"Transfer-Encoding: chunked\r\n"):
            reader, writer = await connect(gw.url)
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + framing + b"\r\n")
            writer.write(b'{"model":' if framing.startswith(b"Content") else b"9\r\n{\"model\":\r\n")
            started = time.monotonic()
            try:
                answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                length = int(answer.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                body = await asyncio.wait_for(reader.readexactly(length), 5)
            finally:
                writer.close()
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert b'"request_timeout"' in body
            assert time.monotonic() - started < 4
    assert upstream.sent == 0


async def test_a_caller_that_never_reads_a_stream_holds_the_upstream_back_through_the_full_chain(tmp_path):
    text = "word " * 3000  # ~15 KB an event
    upstream = StreamingUpstream(events=4000, gap_s=0, text=text)  # ~60 MB if nothing held it back
    async with serve_app(upstream.app()) as url, run_gateway(config_for(url, tmp_path), tmp_path) as gw:
        reader, writer = await connect(gw.url)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(CHAT), CHAT)
        )
        await writer.drain()
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # the answer started; now read nothing
        previous = -1
        for _ in range(30):  # until the upstream stalls (at most 3 s)
            await asyncio.sleep(0.1)
            if upstream.sent == previous:
                break
            previous = upstream.sent
        held_at = upstream.sent
        writer.transport.abort()
        for _ in range(50):
            if not upstream.active:
                break
            await asyncio.sleep(0.05)
    assert held_at < 16 * 1024 * 1024, f"the upstream sent {held_at} bytes to a caller that read none"
    assert upstream.cancelled == 1 and upstream.finished == 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fd_targets() -> list[str]:
    targets = []
    for name in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            pass
    return sorted(targets)


async def settled(condition: Any, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


@pytest.mark.parametrize("shared", [False, True], ids=["distinct-requests", "one-cache-flight"])
async def test_mass_disconnects_mid_stream_cancel_the_upstream_calls_and_leak_nothing(tmp_path, shared):
    callers = 24
    upstream = StreamingUpstream(events=400, gap_s=0.02)  # 8 s a stream unless cancelled
    async with serve_app(upstream.app()) as url, run_gateway(config_for(url, tmp_path), tmp_path) as gw:

        async def stream_then_vanish(n: int) -> None:
            # each caller asks something else: no shared cache flight, one upstream call each
            body = CHAT.replace(b'"hi"', b'"hi %d"' % (0 if shared and n >= 0 else n))
            reader, writer = await connect(gw.url)
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await reader.readuntil(b"data: ")  # the first event arrived
            writer.transport.abort()  # gone without a goodbye (RST)

        # one round first, so pools, caches and lazy imports are warm in the baseline
        await asyncio.wait_for(stream_then_vanish(-1), 5)
        assert await settled(lambda: upstream.active == 0)
        await asyncio.sleep(0.2)
        tasks_before, fds_before = len(asyncio.all_tasks()), open_fds()

        await asyncio.wait_for(asyncio.gather(*(stream_then_vanish(n) for n in range(callers))), 10)
        assert await settled(lambda: upstream.active == 0), f"{upstream.active} upstream calls still running"
        assert await settled(lambda: gw.gateway.proxy.in_flight == 0)
        # a leak per caller would show as 24 or more; a few are left for the loop's own
        # housekeeping on a loaded machine (a failure lists what is left)
        slack = callers // 4
        assert await settled(lambda: len(asyncio.all_tasks()) <= tasks_before + slack), [
            task.get_coro() for task in asyncio.all_tasks()
        ]
        assert await settled(lambda: open_fds() <= fds_before + slack), (fds_before, fd_targets())
        assert upstream.finished == 0
        assert upstream.cancelled == (2 if shared else callers + 1)

        # and the gateway serves the next caller as before
        async with aiohttp.ClientSession() as session:
            headers = {"Content-Type": "application/json"}
            async with session.post(f"{gw.url}/v1/chat/completions", data=CHAT, headers=headers) as reply:
                assert reply.status == 200
                await reply.content.readuntil(b"data: ")
