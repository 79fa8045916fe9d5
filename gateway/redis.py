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
the server: one round trip), and while a pipeline is in flight the next one fills:
under load a round trip carries the commands of many requests. Commands leave in
the order they were issued (one pipeline at a time on one connection), so a write
queued before a read of the same key is seen by that read.

Each call returns an :class:`asyncio.Future` of its own reply (as Redis sends it in
RESP2: ``bytes``, ``int``, ``None``, lists, so ``HGETALL`` is a flat list; no decoding) or of its own error: a command's
error (``ResponseError``) reaches only its caller; a connection error or a timeout
fails every call of that pipeline with it. A call not answered within its
``timeout_s`` fails with :class:`redis.exceptions.TimeoutError`. A cancelled call
(its awaiting task was cancelled) is left out of a pipeline not yet sent, and its
reply dropped if it was. Awaiting the future is optional: a write whose reply
nobody needs is queued and forgotten (a done-callback still sees its failure), and
the gateway waits for every queued call before it closes the connection at
shutdown (after the plugins' ``shutdown`` hooks), so SIGTERM loses none.

Not for blocking commands (``BLPOP``...), ``MULTI``/``WATCH`` or pub/sub: one slow
command would hold every plugin's calls behind it.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis
from opentelemetry.trace import Span, Status, StatusCode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["ERRORS", "MAX_BATCH", "Redis", "Script", "connect", "figures", "when_written"]

#: what a call may raise when Redis is away, slow or confused
ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
#: at most this many commands in one pipeline; more wait for the next
MAX_BATCH = 512
DEFAULT_TIMEOUT_S = 0.5


class _Batch:
    """The commands of one pipeline, with each caller's future and timeout."""

    __slots__ = ("commands", "deadlines", "futures", "scripts", "timeouts", "timers", "wait_s")

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []
        self.futures: list[asyncio.Future[Any]] = []
        #: the script source of an EVALSHA (for its EVAL fallback), else None
        self.scripts: list[str | None] = []
        self.timeouts: list[float] = []
        #: when each call fails unless answered (loop time)
        self.deadlines: list[float] = []
        #: one timer per distinct timeout, at the earliest deadline of its calls not yet failed
        self.timers: dict[float, asyncio.TimerHandle] = {}
        #: the longest timeout of the batch: the bound on the whole round trip
        self.wait_s = 0.0


class _Pipe:
    """One URL's connection and the pipelines waiting for it (one per event loop)."""

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self.url = url
        self.loop = loop
        # The pool only parses the URL (redis://, rediss://, unix://) and makes the
        # connection; the pipe holds that one connection itself. No retries: a lost
        # reply may mean a script ran, and a retry would run it twice. The socket has
        # no timeout of its own: the whole round trip is bounded instead.
        self.pool = aioredis.ConnectionPool.from_url(
            url,
            socket_timeout=None,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            decode_responses=False,
            protocol=2,  # RESP2 unless the URL asks otherwise: the replies plugins parse stay the same
        )
        self.connection: Any = self.pool.make_connection()
        kwargs = self.pool.connection_kwargs
        self.attributes: dict[str, Any] = {
            "db.system": "redis",
            "db.system.name": "redis",
            "db.namespace": str(kwargs.get("db", 0)),
            "server.address": str(kwargs.get("host", kwargs.get("path", ""))),
        }
        if "port" in kwargs:
            self.attributes["server.port"] = int(kwargs["port"])
        self.handles = 0
        self.queue: deque[_Batch] = deque()
        self.open: _Batch | None = None
        self.sender: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        #: figures: pipelines sent, commands sent, pipelines failed whole
        self.pipelines = 0
        self.commands = 0
        self.failures = 0

    def widen(self, timeout_s: float) -> None:
        """A handle with a longer timeout: connecting may take that long too."""
        if timeout_s > self.connection.socket_connect_timeout:
            self.connection.socket_connect_timeout = timeout_s
            self.pool.connection_kwargs["socket_connect_timeout"] = timeout_s

    # -- queueing ----------------------------------------------------------------------

    def enqueue(
        self,
        command: tuple[Any, ...],
        timeout_s: float,
        script: str | None = None,
        future: asyncio.Future[Any] | None = None,
    ) -> asyncio.Future[Any]:
        if future is None:
            future = self.loop.create_future()
        batch = self.open
        if batch is None or len(batch.commands) >= MAX_BATCH:
            batch = self.open = _Batch()
            self.queue.append(batch)
            self.idle.clear()
        deadline = self.loop.time() + timeout_s
        batch.commands.append(command)
        batch.futures.append(future)
        batch.scripts.append(script)
        batch.timeouts.append(timeout_s)
        batch.deadlines.append(deadline)
        if timeout_s not in batch.timers:
            batch.timers[timeout_s] = self.loop.call_at(deadline, _expire, self.loop, batch, timeout_s)
            if timeout_s > batch.wait_s:
                batch.wait_s = timeout_s
        if self.sender is None:
            # Its first step runs in the next iteration of the loop: whatever else
            # this iteration queues joins the same pipeline.
            self.sender = self.loop.create_task(self._send_all())
        return future

    # -- sending -----------------------------------------------------------------------

    async def _send_all(self) -> None:
        try:
            while self.queue:
                batch = self.queue.popleft()
                if batch is self.open:
                    self.open = None
                try:
                    await self._send(batch)
                finally:
                    for timer in batch.timers.values():
                        timer.cancel()
        finally:
            self.sender = None
            if self.queue:  # cancelled with work left: fail it rather than leave callers hanging
                error = RedisConnectionError("the gateway's Redis connection was closed")
                while self.queue:
                    batch = self.queue.popleft()
                    _fail(batch, range(len(batch.futures)), error)
                self.open = None
            self.idle.set()

    async def _send(self, batch: _Batch) -> None:
        futures = batch.futures
        live = [index for index, future in enumerate(futures) if not future.done()]
        if not live:
            return
        connection = self.connection
        commands = batch.commands
        scripts = batch.scripts
        answered = 0
        self.pipelines += 1
        self.commands += len(live)
        try:
            async with asyncio.timeout(batch.wait_s):
                await connection.send_packed_command(
                    connection.pack_commands([commands[index] for index in live]), check_health=False
                )
                for index in live:
                    try:
                        reply = await connection.read_response(timeout=math.inf)
                    except NoScriptError as error:
                        answered += 1
                        source = scripts[index]
                        future = futures[index]
                        if source is not None and not future.done():
                            # Redis restarted (or SCRIPT FLUSH): EVAL runs it and caches it again.
                            _, _, *rest = commands[index]
                            left = batch.deadlines[index] - self.loop.time()
                            self.enqueue(("EVAL", source, *rest), max(left, 0.001), None, future)
                        elif not future.done():
                            future.set_exception(error)
                        continue
                    except ResponseError as error:
                        answered += 1
                        future = futures[index]
                        if not future.done():
                            future.set_exception(error)
                        continue
                    answered += 1
                    future = futures[index]
                    if not future.done():
                        future.set_result(reply)
        except BaseException as exc:
            # The connection is out of step with its replies: start over on a new one.
            try:
                await connection.disconnect(nowait=True)
            except BaseException:  # noqa: S110 - already failing; the error below is what counts
                pass
            self.failures += 1
            if isinstance(exc, TimeoutError) and not isinstance(exc, RedisError):
                error: BaseException = RedisTimeoutError(f"Redis did not answer within {batch.wait_s} s")
            elif isinstance(exc, OSError):
                error = RedisConnectionError(f"Redis connection failed: {exc}")
            else:
                error = exc
            _fail(batch, live[answered:], error)
            if not isinstance(exc, Exception):  # cancelled: the callers are failed, the task ends
                raise

    # -- waiting and closing -------------------------------------------------------------

    async def flush(self) -> None:
        """Until every call queued so far (and any EVAL fallback it caused) has its reply."""
        while not self.idle.is_set():
            await self.idle.wait()

    async def close(self) -> None:
        await self.flush()
        if self.sender is not None:  # pragma: no cover - flush() returned: nothing is left to send
            self.sender.cancel()
        try:
            await self.connection.disconnect()
        except ERRORS:
            pass
        await self.pool.disconnect()


def _expire(loop: asyncio.AbstractEventLoop, batch: _Batch, timeout_s: float) -> None:
    """The calls of ``batch`` with this timeout whose deadline has come fail now if still
    unanswered; the timer comes back for the next deadline (calls that joined the batch later)."""
    error: BaseException | None = None
    now = loop.time()
    later = math.inf
    for future, limit, deadline in zip(batch.futures, batch.timeouts, batch.deadlines, strict=True):
        if limit != timeout_s or future.done():
            continue
        if deadline <= now:
            if error is None:
                error = RedisTimeoutError(f"Redis did not answer within {timeout_s} s")
            future.set_exception(error)
        elif deadline < later:
            later = deadline
    if later < math.inf:
        batch.timers[timeout_s] = loop.call_at(later, _expire, loop, batch, timeout_s)


def _fail(batch: _Batch, indexes: Iterable[int], error: BaseException) -> None:
    futures = batch.futures
    for index in indexes:
        future = futures[index]
        if not future.done():
            future.set_exception(error)


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
        """A Lua script to call with ``keys`` and ``args``."""
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


def when_written(
    future: asyncio.Future[Any], span: Span | None, done: Callable[[BaseException | None], None]
) -> None:
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
