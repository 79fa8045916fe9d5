"""The upstream hop's HTTP/1.1 client: keep-alive connections parsed by httptools.

Why not aiohttp's ``ClientSession``: the gateway sends one kind of request (a
body of bytes, headers it built itself) to one origin per provider, and reads one
kind of answer (buffered, or a server-sent event stream relayed as it arrives).
The session's generality (cookies, redirects, auth, signals, its request and
response objects) cost 357,000 instructions a call on this path, more than the rest
of the gateway's core together; this client, on the C parser uvicorn uses, costs
85,000 (``python -m benchmarks.clients``; docs/performance.md, "The upstream client").

What it does: one :class:`UpstreamPool` per provider holds up to ``limit``
connections (idle ones reused last-in first-out, dropped after
:data:`KEEPALIVE_S` idle or when the server closes them), ``timeout_s`` bounds the
connect and every wait for the upstream (its answer's headers, a buffered body, the
gap between two events of a stream, as aiohttp's ``sock_read`` did), gzip and deflate
answers are decoded (it asks for those and no other), a stream holds the upstream
back while the caller is slow (reading pauses above :data:`HIGH_WATER` bytes), and an
answer that is not HTTP, is cut short or breaks the connection raises an
:class:`UpstreamError`, a subclass of ``aiohttp.ClientError`` so that plugins catching
the latter keep working. An idempotent request that finds its reused connection
closed by the server before any answer byte is sent again once on a new connection.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httptools
from multidict import CIMultiDict
from yarl import URL

#: an idle connection older than this is closed instead of reused (aiohttp's keepalive_timeout)
KEEPALIVE_S = 15.0
#: a stream pauses reading from the upstream when this much is waiting for a slow caller
HIGH_WATER = 256 * 1024
#: the methods whose request may be sent again when a reused connection was closed under it
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: answers that never carry a body (RFC 9110 6.4.1)
BODILESS = frozenset({204, 304})
ACCEPT_ENCODING = "gzip, deflate"
#: the most an answer's head (status line and headers) may take: an upstream that sends
#: more (a header without end) is not HTTP the gateway can relay, and would grow its memory
MAX_HEAD_BYTES = 64 * 1024
SSE_CONTENT_TYPE = "text/event-stream"


class UpstreamError(aiohttp.ClientError):
    """The upstream connection failed: refused, reset, closed early, or not HTTP."""


class UpstreamDisconnected(UpstreamError):
    """The upstream closed the connection before its answer was complete."""


class UpstreamProtocolError(UpstreamError):
    """The upstream's bytes are not a valid HTTP/1.1 answer (or its encoding does not decode)."""


class _Stale(Exception):
    """A reused connection was closed by the server before it answered: send again."""


class Answer:
    """An upstream answer's head, and its body: ``body`` (buffered) or ``stream``."""

    __slots__ = ("status", "headers", "body", "stream")

    def __init__(self, status: int, headers: CIMultiDict[str]) -> None:
        self.status = status
        self.headers = headers
        self.body = b""
        self.stream: AsyncIterator[bytes] | None = None


class UpstreamPool:
    """Keep-alive connections to one origin, at most ``limit`` at a time."""

    def __init__(self, base_url: str, *, limit: int, timeout_s: float) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = url.host
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl = (
            _tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
            if url.scheme == "https"
            else None
        )
        host = url.raw_host or ""
        host = f"[{host}]" if ":" in host else host  # an IPv6 literal
        self.host_header = host if url.is_default_port() else f"{host}:{self.port}"
        self.limit = limit if limit > 0 else 1 << 62  # 0: no limit
        self.timeout_s = timeout_s
        self._idle: list[_Connection] = []
        self._open = 0  # connections that exist or are being made: at most ``limit``
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._closed = False

    async def request(self, method: str, target: str, headers: Any, body: bytes) -> Answer:
        """Send one request; the answer's head, with its whole body unless it is a stream.

        ``target`` is the request target as sent (path and query, already encoded);
        ``headers`` a mapping (a multidict may repeat names). Raises
        :class:`UpstreamError`, ``OSError`` (connect) or ``TimeoutError``."""
        head = _request_head(method, target, self.host_header, headers, body)
        connection = await self._acquire()
        try:
            return await connection.exchange(method, head, body)
        except _Stale:
            pass  # the server closed it as it was reused: a new connection, once
        if method not in IDEMPOTENT:
            raise UpstreamDisconnected("The upstream closed a kept-alive connection before answering.")
        connection = await self._acquire(fresh=True)
        try:
            return await connection.exchange(method, head, body)
        except _Stale:
            raise UpstreamDisconnected("The upstream closed the connection before answering.") from None

    async def close(self) -> None:
        self._closed = True
        for connection in self._idle:
            connection.abort()
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamError("The provider is closing."))

    async def _acquire(self, fresh: bool = False) -> _Connection:
        if self._closed:
            raise UpstreamError("The provider is closed.")
        idle = self._idle
        while idle and not fresh:
            connection = idle.pop()
            # its loop's clock: asking get_running_loop() is a getpid() system call on Python 3.11
            if connection.loop.time() - connection.idle_since < KEEPALIVE_S and not connection.closed:
                return connection
            connection.abort()
        loop = asyncio.get_running_loop()
        while self._open >= self.limit:
            if idle:  # a fresh connection wanted, none free: make room
                idle.pop(0).abort()
                continue
            waiter: asyncio.Future[_Connection | None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # what it was handed goes to the next
                    handed = waiter.result()
                    if handed is not None:
                        self._release(handed)
                    else:
                        self._wake()
                raise
            if handed is not None and not fresh:
                return handed
            if handed is not None:
                handed.abort()  # frees its place, which this waiter takes
        self._open += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self, loop), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None,
                )  # fmt: skip
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        return connection

    def _release(self, connection: _Connection) -> None:
        """A connection whose answer is complete and that may be kept alive."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        if self._closed:
            connection.abort()
            return
        connection.idle_since = connection.loop.time()
        self._idle.append(connection)

    def _lost(self, connection: _Connection) -> None:
        """A connection is gone: its place is free for a waiter."""
        self._open -= 1
        if connection in self._idle:
            self._idle.remove(connection)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # None: make a connection of your own
                return


@functools.lru_cache(maxsize=4)
def _tls_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    """The verifying TLS context, shared: loading the CA bundle takes a quarter of a
    second, too long to repeat for every provider on every reload. Keyed by the
    variables that name the bundle, which ``load_default_certs`` reads."""
    return ssl.create_default_context()


def _request_head(method: str, target: str, host: str, headers: Any, body: bytes) -> bytes:
    lines = "\r\n".join([f"{name}: {value}" for name, value in headers.items()])
    # A CR or LF inside a name or value would start a header (or a request) of its own.
    if lines and (lines.count("\n") != len(headers) - 1 or lines.count("\r") != len(headers) - 1):
        raise UpstreamProtocolError("A request header holds a line break.")
    if body or method in ("POST", "PUT", "PATCH"):
        length = f"Content-Length: {len(body)}\r\n"
    else:
        length = ""
    separator = "\r\n" if lines else ""
    text = (
        f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nAccept-Encoding: {ACCEPT_ENCODING}\r\n"
        f"{length}{lines}{separator}\r\n"
    )
    return text.encode("utf-8", "surrogateescape")


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one exchange at a time, parsed by httptools."""

    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.used = 0  # exchanges begun on this connection (more than one: it was reused)
        # The exchange in flight
        self.active = False
        self.done = False
        self.head_only = False
        self.received = False
        self.keep_alive = False
        self.answer: Answer | None = None
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.waiter: asyncio.Future[Answer] | None = None
        self.parts: list[bytes] = []
        self.buffered = 0
        self.head_bytes = 0  # bytes received of the answer's head so far
        self.feeding = 0  # the size of the read being parsed
        self.stream: _Stream | None = None
        self.until_close = False
        self.error: BaseException | None = None
        self.decoder: Any = None
        self.paused = False
        self.last_read = 0.0
        self.timer: asyncio.TimerHandle | None = None

    # Protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.active or self.done:
            self.abort()  # bytes nobody asked for: the connection cannot be trusted
            return
        self.received = True
        self.last_read = self.loop.time()
        self.feeding = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, UpstreamError):
                self._fail(cause)
            else:
                self._fail(UpstreamProtocolError(f"The upstream's answer is not valid HTTP: {type(exc).__name__}."))
            return
        if self.answer is None:  # all of it was head (the parser holds a header until it ends)
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self._fail(_head_too_large())
                return
        if self.done and self.stream is None and self.active:
            self.finish()  # only now: bytes after the answer in the same read must be seen first

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        self.pool._lost(self)
        if not self.active or self.done:
            return
        if self.until_close and exc is None and self.answer is not None:
            self.on_message_complete()  # an answer framed by the end of the connection
            if self.stream is None:
                self.finish()
        elif not self.received and self.used > 1:
            self._fail(_Stale())
        else:
            self._fail(UpstreamDisconnected("The upstream closed the connection before its answer was complete."))

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.done:
            self.abort()  # a second answer to one request: the connection is out of step

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if not self.active:
            return
        status = self.parser.get_status_code()
        raw, self.raw_headers = self.raw_headers, []
        if self.head_bytes + self.feeding > MAX_HEAD_BYTES and sum([len(n) + len(v) for n, v in raw]) > MAX_HEAD_BYTES:
            raise _head_too_large()  # the parser's feed_data raises, with it as its context
        if status < 200:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        headers: CIMultiDict[str] = CIMultiDict(
            [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]
        )
        answer = self.answer = Answer(status, headers)
        self.keep_alive = self.parser.should_keep_alive()
        encoding = headers.get("Content-Encoding")
        if encoding is not None:
            self.decoder = _decoder(encoding)
        if self.head_only:  # the parser cannot know a HEAD's answer has no body: this connection ends here
            self.keep_alive = False
            self.on_message_complete()
            return
        if status in BODILESS:
            return  # the parser ends the message now
        if "Content-Length" not in headers and "chunked" not in headers.get("Transfer-Encoding", "").lower():
            self.until_close = True
        if headers.get("Content-Type", "").startswith(SSE_CONTENT_TYPE):
            self.stream = answer.stream = _Stream(self, self.used)
            self._resolve()

    def on_body(self, body: bytes) -> None:
        if not self.active:
            return
        if self.decoder is not None:
            body = self._decode(body)
            if not body:
                return
        self.parts.append(body)
        if self.stream is not None:
            self.buffered += len(body)
            if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
                self.paused = True
                self.transport.pause_reading()
            self._resolve()

    def on_message_complete(self) -> None:
        answer = self.answer
        if answer is None or self.done:
            return  # an interim answer ended
        if self.decoder is not None:
            tail = self.decoder.flush()
            if tail:
                self.parts.append(tail)
        self.done = True
        if self.stream is None:
            parts, self.parts = self.parts, []
            answer.body = parts[0] if len(parts) == 1 else b"".join(parts)
        self._resolve()  # a stream's reader takes the rest, then finishes

    # The exchange
    async def exchange(self, method: str, head: bytes, body: bytes) -> Answer:
        self.used += 1
        ticket = self.used
        self.active, self.done, self.received = True, False, False
        self.head_only = method == "HEAD"
        self.answer, self.stream, self.error, self.decoder = None, None, None, None
        self.until_close = False
        self.parts, self.buffered, self.head_bytes = [], 0, 0
        waiter = self.waiter = self.loop.create_future()
        transport = self.transport
        assert transport is not None
        if self.closed:
            self._fail(_Stale())
        elif body:
            transport.writelines((head, body))
        else:
            transport.write(head)
        self.last_read = self.loop.time()
        if self.timer is None:  # else the one still set from an earlier exchange comes and looks
            self.timer = self.loop.call_at(self.last_read + self.pool.timeout_s, self._check_timeout)
        try:
            return await waiter
        except BaseException:
            if self.used == ticket and (not self.done or self.stream is not None):
                self.abort()  # cancelled or failed half-way: nothing else may use it
            raise

    async def next_part(self) -> bytes | None:
        """The stream's bytes that arrived since the last call; None at its end."""
        while True:
            parts = self.parts
            if parts:
                self.parts, self.buffered = [], 0
                if self.paused and not self.done and self.transport is not None:
                    self.paused = False
                    self.last_read = self.loop.time()
                    self.transport.resume_reading()
                return parts[0] if len(parts) == 1 else b"".join(parts)
            if self.error is not None:
                raise self.error
            if self.done:
                self.finish()
                return None
            self.waiter = self.loop.create_future()
            await self.waiter

    def abort(self) -> None:
        self.active = False
        self.closed = True
        self._stop_timer()
        if self.transport is not None:
            self.transport.abort()

    def finish(self) -> None:
        """The answer is complete: back to the pool, or closed if the upstream said so."""
        self.active = False
        if self.until_close or not self.keep_alive or self.closed:
            self.abort()
        else:
            self.pool._release(self)

    def _resolve(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(self.answer)  # type: ignore[arg-type]

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if not isinstance(error, _Stale):
            self.abort()

    def _decode(self, data: bytes) -> bytes:
        try:
            return self.decoder.decompress(data)  # type: ignore[no-any-return]
        except zlib.error as exc:
            raise UpstreamProtocolError("The upstream's answer does not decode (Content-Encoding).") from exc

    # One timer per connection, moved on lazily: a read only notes its time, and an
    # answer's end leaves the timer to lapse (or to serve the next exchange).
    def _check_timeout(self) -> None:
        self.timer = None
        if not self.active or self.done:
            return
        now = self.loop.time()
        due = now + self.pool.timeout_s if self.paused else self.last_read + self.pool.timeout_s
        if self.paused or now < due:  # paused: the caller is slow, not the upstream
            self.timer = self.loop.call_at(due, self._check_timeout)
            return
        self._fail(TimeoutError())

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Stream:
    """A streamed answer's bytes as they arrive; closing it before its end drops the connection."""

    __slots__ = ("connection", "ticket", "over")

    def __init__(self, connection: _Connection, ticket: int) -> None:
        self.connection = connection
        self.ticket = ticket
        self.over = False

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> bytes:
        if self.over:
            raise StopAsyncIteration
        try:
            data = await self.connection.next_part()
        except BaseException:
            await self.aclose()
            raise
        if data is None:
            self.over = True
            raise StopAsyncIteration
        return data

    async def aclose(self) -> None:
        if not self.over:
            self.over = True
            connection = self.connection
            if connection.used == self.ticket and connection.active:
                connection.abort()


def _head_too_large() -> UpstreamProtocolError:
    return UpstreamProtocolError(f"The upstream's answer head is larger than {MAX_HEAD_BYTES} bytes.")


def _decoder(encoding: str) -> Any:
    """A decompressor for the answer's Content-Encoding (only what the request asked for)."""
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return _Deflate()
    if encoding in ("", "identity"):
        return None
    raise UpstreamProtocolError(
        f"The upstream's answer is in an encoding the gateway did not ask for ({encoding[:32]})."
    )


class _Deflate:
    """``deflate`` as servers send it: zlib-wrapped as the RFC says, or raw as some do."""

    def __init__(self) -> None:
        self._inner: Any = None

    def decompress(self, data: bytes) -> bytes:
        if self._inner is None:
            wrapped = len(data) > 0 and data[0] & 0x0F == 8  # a zlib header: compression method 8
            self._inner = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        return self._inner.decompress(data)

    def flush(self) -> bytes:
        return self._inner.flush() if self._inner is not None else b""
