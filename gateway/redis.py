"""Redis shared by every plugin of the process, with automatic pipelining.

Part of the public plugin API (docs/plugins.md#redis). A plugin asks the gateway
for a handle in ``startup``::

    self.redis = gateway.redis("redis://127.0.0.1:6379/0", timeout_s=0.25)
    take = self.redis.script(LUA)
    ...
    reply = await take(keys=[key], args=[1, 2])      # EVALSHA, EVAL once after a Redis restart
    value = await self.redis.call("GET", key)        # any non-blocking command
    self.redis.call("SET", key, value).add_done_callback(self._written)  # write-behind

Every plugin that names the same URL gets a handle on the same connection. Every
command or script call issued within one event-loop iteration, by any request and
any plugin, goes out as **one non-transactional pipeline** (one write, one read on
the server: one round trip), written at the next iteration without waiting for the
replies of the pipelines before it: under load a round trip carries the commands of
many requests. Commands leave in the order they were issued and Redis answers in
that order, so a write queued before a read of the same key is seen by that read.

Each call returns an :class:`asyncio.Future` of its own reply (as Redis sends it in
RESP2: ``bytes``, ``int``, ``None``, lists, so ``HGETALL`` is a flat list; no decoding) or of its own error: a command's
error (``ResponseError``) reaches only its caller; a lost connection fails every call
waiting on it. A call not answered within its ``timeout_s`` fails with
:class:`redis.exceptions.TimeoutError` and keeps its place in line: its reply, when
it comes, is dropped. A cancelled call (its awaiting task was cancelled) is left out
of a pipeline not yet sent, and its reply dropped if it was. Awaiting the future is
optional: a write whose reply nobody needs is queued and forgotten (a done-callback
still sees its failure), and the gateway waits for every queued call before it closes
the connection at shutdown (after the plugins' ``shutdown`` hooks), so SIGTERM loses none.

The connection is the gateway's own (an asyncio protocol writing RESP, replies parsed
by hiredis in C); redis-py reads the URL (``redis://``, ``rediss://`` with its TLS
options, ``unix://``, credentials and db) and lends its exception classes. A script
call costs redis-py's asyncio client 282,000 instructions, this connection 60,000
(``python -m benchmarks.clients``; docs/performance.md, "The Redis connection").

Not for blocking commands (``BLPOP``...), ``MULTI``/``WATCH`` or pub/sub: one slow
command would hold every plugin's calls behind it.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from opentelemetry.trace import Span, Status, StatusCode
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["ERRORS", "MAX_BATCH", "Redis", "Script", "connect", "figures", "url_problem", "when_written"]

#: what a call may raise when Redis is away, slow or confused
ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
#: at most this many commands in one pipeline; more wait for the next
MAX_BATCH = 512
DEFAULT_TIMEOUT_S = 0.5


class _Call:
    """One queued command: its caller's future, and what its timeout and a NOSCRIPT need."""

    __slots__ = ("command", "future", "script", "timeout_s", "deadline")

    def __init__(
        self,
        command: tuple[Any, ...],
        future: asyncio.Future[Any],
        script: str | None,
        timeout_s: float,
        deadline: float,
    ) -> None:
        self.command = command
        self.future = future
        #: the script source of an EVALSHA (for its EVAL fallback), else None
        self.script = script
        self.timeout_s = timeout_s
        #: when the call fails unless answered (loop time)
        self.deadline = deadline


class _Connection(asyncio.Protocol):
    """One connection to Redis: RESP written by hiredis's packer or :func:`pack`, replies parsed by hiredis.

    Replies come in the order of the commands, so each is the first waiting call's."""

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=ResponseError)
        #: the calls written and not yet answered, oldest first
        self.waiting: deque[_Call] = deque()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiting = self.waiting
        try:
            reply = reader.gets()
            while reply is not False:
                self.pipe.answer(waiting.popleft(), reply)
                reply = reader.gets()
        except (hiredis.ProtocolError, IndexError):
            self.pipe.drop(self, RedisConnectionError("Redis sent a reply the client cannot read"))
            return
        if not waiting:
            self.pipe.settled_if_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost:
            self.pipe.drop(self, RedisConnectionError(f"Redis closed the connection{f': {exc}' if exc else ''}"))


class _Pipe:
    """One URL's connection and the calls waiting for it (one per event loop).

    Calls queued in one iteration of the loop are written together in the next (one
    pipeline); a pipeline does not wait for the previous one's replies."""

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self.url = url
        self.loop = loop
        # redis-py reads the URL (redis://, rediss://, unix://, credentials, db, TLS
        # options); the pipe makes and holds the connection itself. No retries: a lost
        # reply may mean a script ran, and a retry would run it twice.
        settings = parse_url(url)
        self.host: str = settings.get("host", "localhost")
        self.port: int = int(settings.get("port", 6379))
        self.path: str | None = settings.get("path")
        self.tls = _tls_context(settings) if url.startswith("rediss://") else None
        self.greeting = _greeting(settings)
        #: every script a handle made, by source: loaded on each new connection before any call
        self.scripts: dict[str, None] = {}
        self.connect_timeout_s = timeout_s
        #: the longest timeout of any call so far: a reply overdue by that much means a dead connection
        self.longest_s = timeout_s
        self.attributes: dict[str, Any] = {
            "db.system": "redis",
            "db.system.name": "redis",
            "db.namespace": str(settings.get("db", 0)),
            "server.address": self.path or self.host,
        }
        if self.path is None:
            self.attributes["server.port"] = self.port
        self.handles = 0
        self.connection: _Connection | None = None
        self.connecting: asyncio.Task[None] | None = None
        #: calls queued and not yet written (this iteration's, or all while connecting)
        self.queued: list[_Call] = []
        self.write_soon = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf
        self.flushed: list[asyncio.Future[None]] = []
        #: figures: pipelines sent, commands sent, pipelines failed whole
        self.pipelines = 0
        self.commands = 0
        self.failures = 0

    def widen(self, timeout_s: float) -> None:
        """A handle with a longer timeout: connecting may take that long too."""
        self.connect_timeout_s = max(self.connect_timeout_s, timeout_s)

    # -- queueing ----------------------------------------------------------------------

    def enqueue(
        self,
        command: tuple[Any, ...],
        timeout_s: float,
        script: str | None = None,
        future: asyncio.Future[Any] | None = None,
    ) -> asyncio.Future[Any]:
        loop = self.loop
        if future is None:
            future = loop.create_future()
        deadline = loop.time() + timeout_s
        if timeout_s > self.longest_s:
            self.longest_s = timeout_s
        self.queued.append(_Call(command, future, script, timeout_s, deadline))
        if deadline < self.timer_at:
            self._expire_at(deadline)
        if not self.write_soon:
            # Written in the next iteration of the loop: whatever else this iteration
            # queues, from any request and plugin, joins the same pipeline.
            self.write_soon = True
            loop.call_soon(self._write)
        return future

    # -- writing and answering -----------------------------------------------------------

    def _write(self) -> None:
        self.write_soon = False
        connection = self.connection
        if connection is None:
            if self.connecting is None and self.queued:
                self.connecting = self.loop.create_task(self._connect())
            return
        calls = [call for call in self.queued if not call.future.done()]
        self.queued = []
        if not calls:
            self.settled_if_idle()
            return
        assert connection.transport is not None
        for start in range(0, len(calls), MAX_BATCH):
            batch = calls[start : start + MAX_BATCH]
            try:
                data = _pack_batch(batch)
            except (TypeError, ValueError) as error:  # an argument Redis cannot take: the caller's mistake
                for call in batch:
                    if not call.future.done():
                        call.future.set_exception(DataError(str(error)))
                continue
            connection.waiting.extend(batch)
            connection.transport.write(data)
            self.pipelines += 1
            self.commands += len(batch)
        self.settled_if_idle()

    def answer(self, call: _Call, reply: Any) -> None:
        future = call.future
        if future.done():
            return  # timed out or cancelled: the reply is dropped
        if isinstance(reply, ResponseError):
            if str(reply).startswith("NOSCRIPT"):
                if call.script is not None:
                    # Redis restarted (or SCRIPT FLUSH): EVAL runs it and caches it again.
                    _, _, *rest = call.command
                    left = call.deadline - self.loop.time()
                    self.enqueue(("EVAL", call.script, *rest), max(left, 0.001), None, future)
                else:
                    future.set_exception(NoScriptError(str(reply)))
                return
            future.set_exception(reply)
            return
        future.set_result(reply)

    async def _connect(self) -> None:
        loop = self.loop
        connection = _Connection(self)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if self.path is not None:
                    await loop.create_unix_connection(lambda: connection, self.path)
                else:
                    await loop.create_connection(
                        lambda: connection, self.host, self.port, ssl=self.tls,
                        server_hostname=self.host if self.tls is not None else None,
                    )  # fmt: skip
        except BaseException as exc:
            self.connecting = None
            error = RedisConnectionError(f"Error connecting to Redis at {self.attributes['server.address']}: {exc!r}")
            calls, self.queued = self.queued, []
            for call in calls:
                if not call.future.done():
                    call.future.set_exception(error)
            self.settled_if_idle()
            if not isinstance(exc, Exception):
                raise
            return
        self.connecting = None
        self.connection = connection
        # Before any caller's command: AUTH and SELECT (a failure drops the connection),
        # then every known script, so that no EVALSHA meets an empty script cache after a
        # restart: its EVAL would go behind calls written after it and lose their order.
        setup = [(command, True) for command in self.greeting]
        setup += [(("SCRIPT", "LOAD", source), False) for source in self.scripts]
        if setup:
            for command, needed in setup:
                future = loop.create_future()
                if needed:
                    future.add_done_callback(lambda done, connection=connection: self._greeted(connection, done))
                else:  # a script that does not load fails at its own call (EVAL), not the connection
                    future.add_done_callback(_ignore_reply)
                connection.waiting.append(_Call(command, future, None, self.connect_timeout_s, math.inf))
            assert connection.transport is not None
            connection.transport.write(b"".join([pack(command) for command, _ in setup]))
        self._write()

    def _greeted(self, connection: _Connection, done: asyncio.Future[Any]) -> None:
        if not done.cancelled() and done.exception() is not None:
            self.drop(connection, RedisConnectionError(f"Redis refused the connection's setup: {done.exception()}"))

    def drop(self, connection: _Connection, error: BaseException) -> None:
        """The connection is lost or out of step: every call waiting on it fails with ``error``."""
        if connection.lost:
            return
        connection.lost = True
        if self.connection is connection:
            self.connection = None
        if connection.transport is not None:
            connection.transport.abort()
        if connection.waiting:  # calls in flight: a pipeline failed (theirs, or late replies never to come)
            self.failures += 1
        waiting = [call for call in connection.waiting if not call.future.done()]
        connection.waiting.clear()
        for call in waiting:
            call.future.set_exception(error)
        if self.queued and not self.write_soon:
            self.write_soon = True
            self.loop.call_soon(self._write)  # what was queued meanwhile goes on a new connection
        self.settled_if_idle()

    # -- timeouts ------------------------------------------------------------------------

    def _expire_at(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = when
        self.timer = self.loop.call_at(when, self._expire)

    def _expire(self) -> None:
        """Fail the calls whose deadline has come; come back at the next deadline. A call
        that timed out stays in line: its reply, when it comes, is dropped, so later
        replies still reach their own callers."""
        self.timer, self.timer_at = None, math.inf
        now = self.loop.time()
        later = math.inf
        errors: dict[float, BaseException] = {}
        waiting = self.connection.waiting if self.connection is not None else ()
        for call in (*waiting, *self.queued):
            if call.future.done():
                continue
            if call.deadline <= now:
                error = errors.get(call.timeout_s)
                if error is None:
                    error = errors[call.timeout_s] = RedisTimeoutError(
                        f"Redis did not answer within {call.timeout_s} s"
                    )
                call.future.set_exception(error)
            elif call.deadline < later:
                later = call.deadline
        connection = self.connection
        if connection is not None and connection.waiting and connection.waiting[0].future.done():
            # The next reply is overdue by more than any caller waits: the connection is
            # dead or its server gone (a failover behind the same name); start over.
            head = connection.waiting[0]
            stuck_at = head.deadline + self.longest_s  # one timeout is not yet a dead connection
            if now >= stuck_at:
                self.drop(connection, RedisTimeoutError(f"Redis did not answer within {self.longest_s} s"))
            elif stuck_at < later:
                later = stuck_at
        if later < math.inf:
            self._expire_at(later)
        elif errors and self.flushed and not self.busy():
            self._wake_flushed()  # nobody waits for a reply any more (Redis may never send them)

    # -- waiting and closing -------------------------------------------------------------

    def settled_if_idle(self) -> None:
        """Wake ``flush`` once nothing is queued, connecting or waiting for a reply."""
        if not self.queued and (self.connection is None or not self.connection.waiting) and self.connecting is None:
            self._wake_flushed()

    def _wake_flushed(self) -> None:
        if self.flushed:
            waiters, self.flushed = self.flushed, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def busy(self) -> bool:
        waiting = self.connection.waiting if self.connection is not None else ()
        return bool(self.queued or self.connecting is not None or any(not call.future.done() for call in waiting))

    async def flush(self) -> None:
        """Until every call queued so far (and any EVAL fallback it caused) has its reply."""
        while self.busy():
            waiter = self.loop.create_future()
            self.flushed.append(waiter)
            await waiter

    async def close(self) -> None:
        await self.flush()
        if self.timer is not None:
            self.timer.cancel()
            self.timer, self.timer_at = None, math.inf
        connection = self.connection
        if connection is not None:
            connection.lost = True
            self.connection = None
            if connection.transport is not None:
                connection.transport.close()


def _ignore_reply(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # looked at: asyncio does not log it as never retrieved


def pack(command: tuple[Any, ...]) -> bytes:
    """One command in RESP: an array of bulk strings (str as UTF-8, int and float as text).

    The definition of what is sent: a pipeline goes through hiredis's packer (C) when
    that packs the same bytes (:func:`_hiredis_packer`) and takes every argument, and
    through here when one is a subclass of str or int, a bytearray or a mistake. The
    common types are told apart by ``type``, in one step, rather than by a chain of
    ``isinstance`` calls per argument."""
    parts = [b"*%d\r\n" % len(command)]
    append = parts.append
    for argument in command:
        kind = type(argument)
        if kind is str:
            argument = argument.encode()
        elif kind is int:
            argument = b"%d" % argument
        elif kind is float:
            argument = repr(argument).encode()
        elif kind is not bytes:
            argument = _other_argument(argument)
        append(b"$%d\r\n%s\r\n" % (len(argument), argument))
    return b"".join(parts)


def _pack_batch(batch: list[_Call]) -> bytes:
    """The commands of a pipeline in RESP, each by hiredis's packer (C) when it takes every
    argument; a subclass of str or int, a bytearray (or a mistake, which raises) by :func:`pack`."""
    if _pack_command is not None:
        try:
            return b"".join([_pack_command(call.command) for call in batch])
        except TypeError:
            pass
    return b"".join([pack(call.command) for call in batch])


def _hiredis_packer() -> Callable[[tuple[Any, ...]], bytes] | None:
    """hiredis's ``pack_command`` (hiredis-py 2.1 and later), if it packs exactly as
    :func:`pack` does (floats as ``repr``, ints as decimal text, str as UTF-8)."""
    packer = getattr(hiredis, "pack_command", None)
    if packer is None:
        return None
    sample = ("EVALSHA", "é", b"\x00\r\n", 0, -7, 2**70, 0.1, 1 / 3, 1e22, -2.5e-8, float("inf"), "")
    try:
        if packer(sample) == pack(sample):
            return packer
    except Exception:  # an older hiredis that takes fewer types
        pass
    return None


def _other_argument(argument: Any) -> bytes | bytearray | memoryview:
    """A subclass of str, int, float or bytes, a bytearray or memoryview; anything else
    (a bool included: Redis has none) is the caller's mistake."""
    if isinstance(argument, str):
        return argument.encode()
    if isinstance(argument, (int, float)) and not isinstance(argument, bool):
        return repr(argument).encode() if isinstance(argument, float) else b"%d" % argument
    if isinstance(argument, (bytes, bytearray, memoryview)):
        return argument
    raise TypeError(f"a Redis argument must be str, bytes, int or float, not {type(argument).__name__}")


#: hiredis's packer, or None: every command packed by :func:`pack`
_pack_command = _hiredis_packer()


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a Redis connection (read as the connection reads it: a port
    that is not a number, an option that does not parse, a unix:// URL without a socket
    path), or None. No I/O: for config checks, so ``gateway check`` finds the mistake. The
    problem never quotes the URL, which may hold a password. (Plugin API 1.4.)"""
    try:
        settings = parse_url(url)
    except ValueError as exc:
        return f"not a usable Redis URL: {exc}"
    if url.startswith("unix://") and not settings.get("path"):
        return "not a usable Redis URL: unix:// needs the socket's path (unix:///run/redis.sock)"
    return None


def _greeting(settings: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The commands that set a new connection up: AUTH with the URL's credentials, SELECT its db."""
    commands: list[tuple[Any, ...]] = []
    password, username = settings.get("password"), settings.get("username")
    if password is not None:
        commands.append(("AUTH", username, password) if username else ("AUTH", password))
    if int(settings.get("db", 0)):
        commands.append(("SELECT", int(settings["db"])))
    return commands


def _tls_context(settings: dict[str, Any]) -> ssl.SSLContext:
    """TLS for ``rediss://``, with redis-py's URL options: ``ssl_cert_reqs`` (none,
    optional, required), ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``."""
    context = ssl.create_default_context(cafile=settings.get("ssl_ca_certs"))
    if settings.get("ssl_certfile"):
        context.load_cert_chain(settings["ssl_certfile"], settings.get("ssl_keyfile"))
    requirement = str(settings.get("ssl_cert_reqs", "required")).lower()
    check_hostname = str(settings.get("ssl_check_hostname", requirement == "required")).lower() in ("true", "1", "yes")
    context.check_hostname = check_hostname and requirement != "none"
    context.verify_mode = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL}.get(requirement, ssl.CERT_REQUIRED)
    return context


_pipes: dict[tuple[asyncio.AbstractEventLoop, str], _Pipe] = {}


def figures() -> dict[str, dict[str, int]]:
    """Per Redis server this process talks to (``host:port/db``, never the URL's
    credentials): pipelines and commands sent, and pipelines that failed whole."""
    loop = asyncio.get_running_loop()
    found: dict[str, dict[str, int]] = {}
    for (owner, _), pipe in _pipes.items():
        if owner is not loop:
            continue
        attributes = pipe.attributes
        server = attributes["server.address"]
        if "server.port" in attributes:
            server += f":{attributes['server.port']}"
        server += f"/{attributes['db.namespace']}"
        counts = found.setdefault(server, {"pipelines": 0, "commands": 0, "failed_pipelines": 0})
        counts["pipelines"] += pipe.pipelines
        counts["commands"] += pipe.commands
        counts["failed_pipelines"] += pipe.failures
    return found


class Script:
    """A Lua script bound to a handle: calling it queues ``EVALSHA`` (``EVAL`` once
    after Redis lost its script cache) and returns the future of its reply."""

    __slots__ = ("_redis", "sha", "source")

    def __init__(self, redis: Redis, source: str) -> None:
        self._redis = redis
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(
        self, keys: Sequence[Any] = (), args: Sequence[Any] = (), *, timeout_s: float | None = None
    ) -> asyncio.Future[Any]:
        redis = self._redis
        return redis._pipe().enqueue(
            ("EVALSHA", self.sha, len(keys), *keys, *args),
            redis.timeout_s if timeout_s is None else timeout_s,
            self.source,
        )


class Redis:
    """A plugin's handle on the process-wide, auto-pipelined connection to one Redis URL.

    Get one with ``gateway.redis(url)`` in ``startup`` (the gateway closes it after the
    plugin's ``shutdown``) or :func:`connect` (then ``await handle.close()``)."""

    def __init__(self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.url = url
        #: how long a call waits for its reply unless the call says otherwise
        self.timeout_s = timeout_s
        self._loop = asyncio.get_running_loop()
        key = (self._loop, url)
        pipe = _pipes.get(key)
        if pipe is None:
            pipe = _pipes[key] = _Pipe(url, self._loop, timeout_s)
        else:
            pipe.widen(timeout_s)
        pipe.handles += 1
        self._shared: _Pipe | None = pipe
        #: span attributes of a Redis call (OpenTelemetry database conventions)
        self.attributes: dict[str, Any] = dict(pipe.attributes)

    def _pipe(self) -> _Pipe:
        pipe = self._shared
        if pipe is None:
            raise RedisConnectionError("this Redis handle is closed")
        return pipe

    @property
    def closed(self) -> bool:
        return self._shared is None

    def call(self, *command: Any, timeout_s: float | None = None) -> asyncio.Future[Any]:
        """Queue one command (``call("GET", key)``); the future of its reply."""
        return self._pipe().enqueue(command, self.timeout_s if timeout_s is None else timeout_s)

    def script(self, source: str) -> Script:
        """A Lua script to call with ``keys`` and ``args`` (loaded on every new connection)."""
        self._pipe().scripts[source] = None
        return Script(self, source)

    async def ping(self) -> None:
        """Raise one of :data:`ERRORS` unless Redis answers."""
        await self.call("PING")

    async def flush(self) -> None:
        """Wait until every call queued on this URL so far has its reply (or its error)."""
        if self._shared is not None:
            await self._shared.flush()

    def stats(self) -> dict[str, int]:
        """Pipelines and commands sent so far on this URL (all plugins), and pipelines that failed whole."""
        pipe = self._pipe()
        return {"pipelines": pipe.pipelines, "commands": pipe.commands, "failures": pipe.failures}

    async def close(self) -> None:
        """Wait for this URL's queued calls; the last handle of a URL closes its connection.
        Closing twice is harmless."""
        pipe = self._shared
        if pipe is None:
            return
        self._shared = None
        pipe.handles -= 1
        await pipe.flush()
        if pipe.handles <= 0:
            if _pipes.get((self._loop, self.url)) is pipe:
                del _pipes[(self._loop, self.url)]
            await pipe.close()


def when_written(future: asyncio.Future[Any], span: Span | None, done: Callable[[BaseException | None], None]) -> None:
    """The bookkeeping of a write-behind call (queued, never awaited): once Redis has
    answered, end its span, marked failed with ``error.type`` when it failed, and call
    ``done`` with the error or None (``CancelledError`` when the call was dropped)."""

    def settled(future: asyncio.Future[Any]) -> None:
        error = asyncio.CancelledError() if future.cancelled() else future.exception()
        if span is not None:
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                span.set_attribute("error.type", type(error).__name__)
            span.end()
        done(error)

    future.add_done_callback(settled)


def connect(url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Redis:
    """A handle on the shared connection to ``url`` (in a running event loop); close it when done."""
    return Redis(url, timeout_s=timeout_s)
