"""The ``cache`` plugin: identical LLM calls answered from a cache (see docs/cache.md).

* ``request`` decides whether the call may use the cache (path, ``Cache-Control``,
  temperature) and computes its key; the exchange says ``miss`` or ``bypass``.
* ``send`` answers a hit (so every plugin's ``request`` and ``complete`` still run,
  and cost records the hit at zero cost), follows an identical call already in
  flight, or leads: calls the upstream, shares the answer with followers and
  captures it (a stream as it passes).
* ``complete`` stores what was captured, once the caller has had the whole answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from aiohttp import web
from multidict import CIMultiDict
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from gateway import CallNext, Exchange, GatewayError, PluginConfigError, Response, StashKey, hookimpl
from gateway.exchange import SSEBuffer, StreamEvent, close_stream, usage_from
from gateway.redis import url_problem, when_written
from gateway_plugins.cache import formats
from gateway_plugins.cache.backends import Entry, LRUMemoryCache, RedisEntryCache
from gateway_plugins.cache.flight import BUFFERED, DONE, FAILED, STREAMING, Flight
from gateway_plugins.cache.keys import IGNORED_FIELDS, VARY_HEADERS, KeyRules, escape, key_prefix

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("gateway.plugins.cache")

DEFAULT_PATHS = ("/v1/chat/completions", "/v1/messages", "/v1/embeddings", "/v1/completions", "/v1/responses")
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
#: at most one log line per this many seconds about an unreachable backend
LOG_EVERY_S = 10.0
#: after a backend error, the cache stays away from it this long (misses meanwhile)
BACKEND_PAUSE_S = 1.0
_NAMESPACE = re.compile(r"^[A-Za-z0-9._-]+$")
#: the most content types whose headers are kept built (upstreams name them: few)
MAX_CONTENT_TYPES = 64
#: decisions kept by request body (see Cache._decide): how many, their bodies' bytes in all,
#: and the largest body kept (a bigger one is decoded and hashed every time)
MAX_DECISIONS = 1024
MAX_DECISION_BYTES = 4 << 20
MAX_DECISION_BODY = 64 << 10
_VARY_1, _VARY_2, _VARY_3 = VARY_HEADERS


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """```yaml
    - use: cache
      config: {ttl_s: 3600, max_entries: 10000, scope: client, backend: memory}
    ```"""

    #: ``memory`` (this process) or ``redis://[user:password@]host:port/db`` (shared by replicas)
    backend: str = "memory"
    ttl_s: Annotated[float, msgspec.Meta(gt=0)] = 3600
    max_entries: Annotated[int, msgspec.Meta(ge=1)] = 10000
    #: ``client``: the caller's identity is part of the key; ``shared``: callers share answers
    scope: Literal["client", "shared"] = "client"
    #: answers bigger than this (bytes; a stream: all its events) are not stored
    max_entry_bytes: Annotated[int, msgspec.Meta(ge=1)] = 1048576
    #: memory backend: the bound on all entries' bytes (least recently read out first)
    max_memory_bytes: Annotated[int, msgspec.Meta(ge=1)] = 268435456
    #: requests with a higher ``temperature`` are not cached (None: no bound)
    max_temperature: float | None = 1.0
    #: the POST paths whose answers are cached
    paths: tuple[str, ...] = DEFAULT_PATHS
    #: more body fields to leave out of the key (``user``, ``stream``... always are)
    ignore_fields: tuple[str, ...] = ()
    #: how long an identical request waits for one in flight before calling itself
    follow_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    #: Redis: the key prefix, and the bound on every command (a slower Redis is a miss)
    namespace: str = "gateway-cache"
    backend_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 0.25


class _Call(msgspec.Struct):
    """What ``request`` decided about one exchange, for ``send`` and ``complete``."""

    key: str
    read: bool
    write: bool
    kind: str | None
    wants_stream: bool
    include_usage: bool
    max_age_s: float | None
    #: the body's model when the key was made: a call for another model (an alias set after
    #: the cache's request hook, a cascade's draft before its send) needs a key of its own
    model: str | None = None
    #: the body the key was made from: while the exchange's is this one, so is its model
    body: bytes = b""
    #: the provider the key names: the core routes a model changed by a request hook (an alias
    #: before the cache) again after the last request hook, so by ``send`` it may be another
    provider: Any = None
    flight: Flight | None = None
    captured: Entry | None = None
    #: the task reading a streamed answer into the flight
    pump: asyncio.Task[None] | None = None
    #: the leader's ``complete`` has run (a pump still running lands the flight itself)
    completed: bool = False
    store_on_finish: bool = False
    #: Redis: the lookup, sent from ``request`` so it travels with the later plugins' calls
    lookup: asyncio.Future[Any] | None = None
    #: the leader's ``served_model`` once the upstream answered (kept with the entry)
    served_model: str | None = None


class _Decision(msgspec.Struct, frozen=True, gc=False):
    """What a request's body decides about its call, remembered for the same request again."""

    #: None: the call bypasses the cache (its temperature is above ``max_temperature``)
    key: str | None
    kind: str | None = None
    wants_stream: bool = False
    include_usage: bool = False
    model: str | None = None


_BYPASS = _Decision(None)


def _context(exchange: Exchange, provider: str, caller: str | None) -> tuple[str | None, ...]:
    """What a decision reads besides the body: route, provider, API shape, caller, the
    headers that shape an answer."""
    header = exchange.headers.get
    return exchange.path, provider, exchange.api, caller, header(_VARY_1), header(_VARY_2), header(_VARY_3)


CALL = StashKey[_Call]("cache.call")


class Cache:
    Config = Config

    def __init__(self, config: Config) -> None:
        backend = config.backend
        if backend != "memory" and not backend.startswith(("redis://", "rediss://")):
            raise PluginConfigError("backend", f"expected 'memory' or a redis:// URL, got {backend!r}")
        problem = url_problem(backend) if backend != "memory" else None
        if problem is not None:
            raise PluginConfigError("backend", problem)
        if not _NAMESPACE.match(config.namespace):
            raise PluginConfigError("namespace", "use letters, digits, '.', '_' and '-' only")
        for path in config.paths:
            if not path.startswith("/"):
                raise PluginConfigError("paths", f"{path!r} is not a path (it must start with /)")
        self.config = config
        self.paths = frozenset(config.paths)
        self.keys = KeyRules(config.namespace, IGNORED_FIELDS | frozenset(config.ignore_fields))
        self.shared = config.scope == "shared"
        self.max_temperature = config.max_temperature
        self.ttl_s = config.ttl_s
        self.namespace = config.namespace
        self.memory: LRUMemoryCache | None = None
        self.redis: RedisEntryCache | None = None
        if backend == "memory":
            self.memory = LRUMemoryCache(config.max_entries, self._evicted, config.max_memory_bytes)
        self.tracer: trace.Tracer = trace.NoOpTracer()
        self.flights: dict[str, Flight] = {}
        #: body -> (path, provider, api, caller, vary headers) and what they decided (see _decide)
        self.decisions: dict[bytes, tuple[tuple[str | None, ...], _Decision]] = {}
        self._decision_bytes = 0
        #: hashes of the bodies seen once (a body's decision is kept the second time)
        self._seen: set[int] = set()
        #: content type -> a hit's headers but ``Age`` (see _headers)
        self._built_headers: dict[str, CIMultiDict[str]] = {}
        #: pumps: tasks reading streamed answers into flights
        self._tasks: set[asyncio.Task[None]] = set()
        self.hits = self.misses = self.bypasses = self.coalesced = 0
        self.stores = self.evictions = self.too_large = self.backend_errors = 0
        self._paused_until = 0.0
        self._last_log = 0.0
        self._unlogged = 0

    # -- lifecycle -----------------------------------------------------------------

    @hookimpl
    def adopt(self, previous: Cache) -> None:
        # A reload with the same options keeps the memory store's entries.
        if self.memory is not None and previous.memory is not None and previous.config == self.config:
            self.memory = previous.memory
            self.memory.on_evict = self._evicted

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        self.tracer = gateway.tracer
        if self.memory is not None:
            return
        config = self.config
        self.redis = RedisEntryCache(
            config.backend,
            namespace=config.namespace,
            max_entries=config.max_entries,
            timeout_s=config.backend_timeout_s,
            on_evict=self._evicted,
        )
        self.redis.open(gateway)
        try:
            await self.redis.ping()
        except Exception as exc:  # the cache degrades to misses; serving goes on
            self._count_backend_error("ping", exc)

    @hookimpl
    async def shutdown(self, gateway: Gateway) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.close()

    # -- per request ---------------------------------------------------------------

    @hookimpl
    async def request(self, exchange: Exchange) -> None:
        call = self._decide(exchange)
        if call is None:
            self.bypasses += 1
            exchange.cache_status = "bypass"
            exchange.response_headers["x-gateway-cache"] = "bypass"
            return
        exchange.state[CALL] = call
        if self.redis is not None and call.read:
            call.lookup = self._prefetch(call.key)
        if not call.read:  # Cache-Control: no-cache: not looked up (the answer still refreshes the entry)
            self.bypasses += 1
        status = "miss" if call.read else "bypass"
        exchange.cache_status = status
        exchange.response_headers["x-gateway-cache"] = status

    def _decide(self, exchange: Exchange) -> _Call | None:
        """The call's key and what it may do, or None when it bypasses the cache."""
        if exchange.method != "POST" or exchange.path not in self.paths or exchange.provider is None:
            return None
        read = write = True
        max_age_s = None
        control = exchange.headers.get("Cache-Control")
        if control:
            for directive in control.lower().split(","):
                directive = directive.strip()
                if directive == "no-store":
                    return None
                if directive == "no-cache":
                    read = False
                elif directive.startswith("max-age="):
                    with contextlib.suppress(ValueError):
                        max_age_s = float(directive[8:])
        if not exchange.has_json_body:
            return None
        body = exchange.body
        caller = None if self.shared else exchange.caller
        provider = exchange.provider.name
        # The same request again (what a cache answers) is a look-up by its body, not a
        # decode and a hash of it; the rest the decision reads must match too.
        decision = None
        context = None
        remembered = self.decisions.get(body)
        if remembered is not None:
            context = _context(exchange, provider, caller)
            if remembered[0] == context:
                decision = remembered[1]
        if decision is None:
            decision = self._decision(exchange, provider, caller)
            if decision is None:
                return None  # not JSON: the upstream's to judge
            self._remember(exchange, provider, caller, context, decision)
        if decision.key is None:
            return None
        return _Call(
            decision.key, read, write, decision.kind, decision.wants_stream, decision.include_usage, max_age_s,
            decision.model, body, exchange.provider,
        )  # fmt: skip

    def _remember(
        self, exchange: Exchange, provider: str, caller: str | None, context: tuple[Any, ...] | None, decision: _Decision
    ) -> None:
        """Keep a body's decision from the second time it comes (most bodies come once: they
        cost a set of fingerprints, not a kept body); bounded, emptied when full."""
        body = exchange.body
        size = len(body)
        if size > MAX_DECISION_BODY:
            return
        if context is None:  # a body not kept yet
            fingerprint = hash(body)
            seen = self._seen
            if fingerprint not in seen:
                if len(seen) >= MAX_DECISIONS:
                    seen.clear()
                seen.add(fingerprint)
                return
            if len(self.decisions) >= MAX_DECISIONS or self._decision_bytes + size > MAX_DECISION_BYTES:
                self.decisions.clear()
                self._decision_bytes = 0
            self._decision_bytes += size
            context = _context(exchange, provider, caller)
        self.decisions[body] = (context, decision)  # (another caller's is replaced)

    def _decision(self, exchange: Exchange, provider: str, caller: str | None) -> _Decision | None:
        """What the body decides: its key, or a bypass for its temperature; None when it is not JSON."""
        try:
            document = exchange.json()
        except GatewayError:
            return None
        temperature = document.get("temperature")
        bound = self.max_temperature
        if bound is not None and isinstance(temperature, (int, float)) and temperature > bound:
            return _BYPASS
        model = document.get("model")
        model = model if isinstance(model, str) else None
        path = exchange.path
        kind = formats.KIND_BY_PATH.get(path)
        options = document.get("stream_options")
        key = self.keys.key(path, provider, exchange.api, model or "", document, caller, exchange.headers, kind is None)
        return _Decision(
            key,
            kind,
            document.get("stream") is True,
            isinstance(options, dict) and options.get("include_usage") is True,
            model,
        )

    @hookimpl
    async def send(self, exchange: Exchange, call_next: CallNext) -> Response:
        call = exchange.state.get(CALL)
        if call is None:
            return await call_next(exchange)
        if exchange.provider is not call.provider or (exchange.body is not call.body and exchange.model != call.model):
            # The body now asks another model than the key was made for: a plugin changed it
            # after the cache's request hook (an alias) or before the cache's send (a cascade's
            # draft, then its escalation); or the model a plugin before the cache set was routed
            # to another provider after the request hooks. The key must describe what is sent.
            if call.flight is not None or call.captured is not None or call.pump is not None:
                return await call_next(exchange)  # this exchange led a call already: the next goes by
            fresh = self._decide(exchange)
            if fresh is None:
                return await call_next(exchange)
            call = exchange.state[CALL] = fresh
            status = "miss" if call.read else "bypass"
            exchange.cache_status = status
            exchange.response_headers["x-gateway-cache"] = status
        if call.read:
            memory = self.memory
            entry = memory.peek(call.key) if memory is not None else await self._lookup(exchange, call.key, call.lookup)
            if entry is not None:
                age_s = time.time() - entry.stored_at
                if call.max_age_s is None or age_s <= call.max_age_s:
                    answer = self._answer_from(entry, call, age_s)
                    if answer is not None:
                        return self._hit(exchange, answer, entry.served_model)
            flight = self.flights.get(call.key)
            if flight is not None and flight.state != FAILED:
                waiting = time.perf_counter()
                answer = await self._follow(flight, call)
                # Waiting for the identical call's upstream answer is upstream time (Server-Timing).
                exchange.upstream_s += time.perf_counter() - waiting
                if answer is not None:
                    self.coalesced += 1
                    return self._hit(exchange, answer, flight.served_model)
            self.misses += 1
        if exchange.recording:
            trace.get_current_span().set_attribute("gateway.cache.status", exchange.cache_status or "miss")
        return await self._lead(exchange, call, call_next)

    def _hit(self, exchange: Exchange, answer: Response, served_model: str | None) -> Response:
        self.hits += 1
        if served_model is not None:  # the stored answer came from another model than asked
            exchange.served_model = served_model
        exchange.cache_status = "hit"
        exchange.response_headers["x-gateway-cache"] = "hit"
        if exchange.recording:
            trace.get_current_span().set_attribute("gateway.cache.status", "hit")
        return answer

    async def _lead(self, exchange: Exchange, call: _Call, call_next: CallNext) -> Response:
        """Call the upstream; share the answer with followers and capture it for ``complete``."""
        key = call.key
        flight = None
        drop_usage = False
        if call.read and key not in self.flights:
            drop_usage = self._ask_usage(exchange, call)
            flight = call.flight = self.flights[key] = Flight(call.include_usage or drop_usage)
        try:
            response = await call_next(exchange)
        except BaseException:
            self._land(key, flight, failed=True)
            raise
        served_model = call.served_model = exchange.served_model
        if flight is not None:
            flight.served_model = served_model
        storable = 200 <= response.status < 300 and "no-store" not in response.headers.get("Cache-Control", "")
        content_type = response.headers.get("Content-Type", "application/json")
        if response.stream is None:
            if not storable:
                self._land(key, flight, failed=True)
                return response
            if flight is not None:
                flight.answered(response.status, content_type, response.body)
            if len(response.body) <= self.config.max_entry_bytes:
                call.captured = Entry(
                    "json", response.status, content_type, response.body, time.time(), False, served_model
                )
            else:
                self.too_large += 1
            return response
        if not storable:
            self._land(key, flight, failed=True)
            return response
        if flight is None:
            response.stream = self._capture(exchange.path, response.status, content_type, response.stream, call)
            return response
        flight.streaming(response.status, content_type)
        pump = call.pump = asyncio.get_running_loop().create_task(
            self._pump(exchange, response.status, content_type, response.stream, call)
        )
        self._tasks.add(pump)
        pump.add_done_callback(self._tasks.discard)
        flight.on_idle = pump.cancel
        flight.followers += 1  # the leader's caller reads like a follower
        response.stream = flight.follow(drop_usage_chunk=drop_usage, original_error=True)
        return response

    @staticmethod
    def _ask_usage(exchange: Exchange, call: _Call) -> bool:
        """A streamed OpenAI chat answer carries its usage only when asked: ask for it
        (``stream_options.include_usage``), so that the stored stream can give a buffered
        caller its ``usage`` and a later streaming caller that asks its usage chunk. True
        when added: the usage-only chunk is then kept from a leader's caller that did not ask."""
        if call.kind != formats.CHAT or not call.wants_stream or call.include_usage or not call.write:
            return False
        document = exchange.json()
        options = document.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return False  # asked already (the cost plugin does, and strips it itself)
        if options is not None and not isinstance(options, dict):
            return False  # the upstream's to judge
        exchange.set_json({**document, "stream_options": {**(options or {}), "include_usage": True}})
        return True

    async def _capture(
        self, path: str, status: int, content_type: str, stream: AsyncIterator[bytes], call: _Call
    ) -> AsyncIterator[bytes]:
        """A stream nobody follows (``no-cache``), relayed untouched and kept for the store.
        Only a stream that ends with its API's closing event is kept."""
        chunks: list[bytes] = []
        try:
            async for data in stream:
                chunks.append(data)
                yield data
            body = b"".join(chunks)
            if formats.stream_is_whole(path, body):
                call.captured = self._stream_entry(status, content_type, body, call)
        finally:
            await close_stream(stream)

    async def _pump(
        self, exchange: Exchange, status: int, content_type: str, stream: AsyncIterator[bytes], call: _Call
    ) -> None:
        """Read the upstream's stream into the flight as it arrives; keep it if whole.

        Runs as a task of its own, so the leader's caller leaving (its handler is
        cancelled) does not cut the stream for the followers; cancelled when the last
        reader leaves. Usage is gathered into the leader's exchange here too (the
        relay's figures are the same: the latest wins), so the CLIENT span has it."""
        flight = call.flight
        assert flight is not None
        events = SSEBuffer()
        whole = False
        try:
            async for data in stream:
                flight.push(data)
                for raw in events.feed(data):
                    if b'"usage"' in raw:
                        exchange.add_usage(*usage_from(StreamEvent(raw).json()))
                await flight.room()  # paced by the callers: never read far ahead of them
            body = b"".join(flight.chunks)
            whole = flight.whole = formats.stream_is_whole(exchange.path, body)
            if whole:
                call.captured = self._stream_entry(status, content_type, body, call)
            flight.finished()
        except asyncio.CancelledError:
            flight.failed()
            raise
        except Exception as exc:  # the relay turns it into the usual error event
            flight.failed(exc)
        finally:
            await close_stream(stream)
            if call.completed:  # the leader's caller left before the end: store for it
                if call.store_on_finish and call.captured is not None:
                    self._store(None, call.key, call.captured)
                self._land(call.key, flight, failed=not whole)
            elif flight.state == FAILED:
                self._land(call.key, flight)

    def _stream_entry(self, status: int, content_type: str, body: bytes, call: _Call) -> Entry | None:
        if len(body) > self.config.max_entry_bytes:
            self.too_large += 1
            return None
        usage_chunk = call.kind == formats.CHAT and b'"choices":[]' in body
        return Entry("sse", status, content_type, body, time.time(), usage_chunk, call.served_model)

    def _land(self, key: str, flight: Flight | None, failed: bool = False) -> None:
        """The flight is over: followers are released (to call themselves when it failed)."""
        if flight is None:
            return
        if failed:
            flight.failed()
        if self.flights.get(key) is flight:
            del self.flights[key]

    async def _follow(self, flight: Flight, call: _Call) -> Response | None:
        """The answer of the identical call in flight, in the form this caller asked for;
        None when it failed or took longer than ``follow_timeout_s`` (then: call yourself)."""
        flight.followers += 1
        streaming = False
        try:
            async with asyncio.timeout(self.config.follow_timeout_s):
                state = await flight.until(BUFFERED, STREAMING, DONE)
                if state == FAILED:
                    return None
                if state == STREAMING and call.wants_stream:
                    drop_usage = call.kind == formats.CHAT and flight.include_usage and not call.include_usage
                    streaming = True  # the stream counts itself out when it ends
                    headers = {"Content-Type": flight.content_type, "Age": "0"}  # every hit carries Age
                    return Response(flight.status, headers, stream=flight.follow(drop_usage))
                if state == STREAMING:
                    state = await flight.until(DONE)
                    if state == FAILED or not flight.whole:
                        return None
        except TimeoutError:
            return None
        finally:
            if not streaming:
                flight.leave()
        if state == DONE and not flight.whole:
            return None  # cut short: not an answer to give anyone but the leader's caller
        if state == BUFFERED:
            entry = Entry("json", flight.status, flight.content_type, flight.body, time.time())
        else:
            usage_chunk = call.kind == formats.CHAT and flight.include_usage
            entry = Entry("sse", flight.status, flight.content_type, b"".join(flight.chunks), time.time(), usage_chunk)
        return self._answer_from(entry, call, 0.0)

    def _answer_from(self, entry: Entry, call: _Call, age_s: float) -> Response | None:
        """The stored answer in the form the caller asked for, or None if it cannot be."""
        if entry.form == "json":
            if not call.wants_stream:
                return Response(entry.status, self._headers(entry.content_type, age_s), entry.body)
            if call.kind is None:
                return None
            stream = formats.json_to_stream(call.kind, entry.body, call.include_usage)
            if stream is None:
                return None
            return Response(entry.status, self._headers(SSE_CONTENT_TYPE, age_s), stream=_once(stream))
        if call.wants_stream:
            body = entry.body
            if entry.has_usage_chunk and not call.include_usage:
                body = formats.drop_usage_chunk(body)
            return Response(entry.status, self._headers(entry.content_type, age_s), stream=_once(body))
        if call.kind is None:
            return None
        document = formats.stream_to_json(call.kind, entry.body)
        if document is None:
            return None
        return Response(entry.status, self._headers("application/json", age_s), document)

    def _headers(self, content_type: str, age_s: float) -> CIMultiDict[str]:
        """An answer's ``Content-Type`` and ``Age``: a copy of headers built once per
        content type, which costs half of building them anew."""
        built = self._built_headers.get(content_type)
        if built is None:
            if len(self._built_headers) >= MAX_CONTENT_TYPES:
                self._built_headers.clear()
            built = self._built_headers[content_type] = CIMultiDict({"Content-Type": content_type})
        headers = built.copy()
        headers.add("Age", str(int(age_s)) if age_s > 0 else "0")
        return headers

    @hookimpl
    async def complete(self, exchange: Exchange) -> None:
        call = exchange.state.get(CALL)
        if call is None:
            return
        call.completed = True
        if call.captured is None and call.flight is None and call.pump is None:
            return  # a hit, a follower or an answer not kept: nothing to store or land
        error = exchange.error
        # An answer the upstream gave whole is kept even if the caller left; not one a
        # plugin refused (a scan of responses) or one that broke.
        storable = call.write and (error is None or error.status == 499)
        pump = call.pump
        if pump is not None and not pump.done():
            call.store_on_finish = storable  # followers still read it: the pump stores and lands
            return
        try:
            if storable and call.captured is not None:
                self._store(exchange, call.key, call.captured)
        finally:
            # A flight not over by now (a response hook replaced the stream) fails its followers.
            flight = call.flight
            self._land(call.key, flight, failed=flight is not None and flight.state not in (BUFFERED, DONE))

    # -- the backend ---------------------------------------------------------------

    def _prefetch(self, key: str) -> asyncio.Future[Any] | None:
        """Send the Redis lookup now, not awaited: it joins the pipeline of this loop
        iteration, with the calls the next plugins' ``request`` hooks make (cost's reserve),
        instead of a round trip of its own in ``send``. None while the backend is paused."""
        redis = self.redis
        if redis is None or time.monotonic() < self._paused_until:
            return None
        try:
            future = redis.fetch_later(key)
        except Exception:
            return None  # the lookup in send meets the error and counts it
        future.add_done_callback(_quiet)  # a request refused before send never awaits it
        return future

    async def _lookup(self, exchange: Exchange, key: str, sent: asyncio.Future[Any] | None = None) -> Entry | None:
        """The Redis lookup (a memory one is a plain ``peek`` in ``send``)."""
        redis = self.redis
        if redis is None or time.monotonic() < self._paused_until:
            return None
        try:
            if exchange is None or not exchange.recording:  # no span, and no context manager for none
                return redis.decode(await sent) if sent is not None else await redis.fetch(key)
            with self._span(exchange, "GET"):
                if sent is not None:
                    return redis.decode(await sent)
                return await redis.fetch(key)
        except Exception as exc:
            self._count_backend_error("GET", exc)
            return None

    def _store(self, exchange: Exchange | None, key: str, entry: Entry) -> None:
        if self.memory is not None:
            self.memory.put(key, entry, self.ttl_s)
            self.stores += 1
            return
        redis = self.redis
        if redis is None or time.monotonic() < self._paused_until:
            return
        # Write-behind: nobody waits for the store; it joins the next pipeline (with the
        # other plugins' writes of the moment) and the callback counts how it went.
        span = None
        if exchange is not None and exchange.recording:
            span = self.tracer.start_span("cache SET", kind=SpanKind.CLIENT, attributes=self._attributes("SET"))
        try:
            stored = redis.store(key, entry, self.ttl_s)
        except Exception as exc:
            if span is not None:
                span.end()
            self._count_backend_error("SET", exc)
            return
        when_written(stored, span, self._stored)

    def _stored(self, error: BaseException | None) -> None:
        if error is None:
            self.stores += 1
        else:
            self._count_backend_error("SET", error)

    def _attributes(self, operation: str) -> dict[str, Any]:
        redis = self.redis
        return {**(redis.attributes if redis is not None else {}), "db.operation.name": operation}

    @contextlib.contextmanager
    def _span(self, exchange: Exchange | None, operation: str) -> Iterator[None]:
        if exchange is None or not exchange.recording:
            yield
            return
        attributes = self._attributes(operation)
        with self.tracer.start_as_current_span(f"cache {operation}", kind=SpanKind.CLIENT, attributes=attributes):
            yield

    def _count_backend_error(self, operation: str, exc: BaseException) -> None:
        """Count the error, pause the backend briefly (the shared connection starts over
        on its next call), and log at most every LOG_EVERY_S."""
        self.backend_errors += 1
        now = time.monotonic()
        self._paused_until = now + BACKEND_PAUSE_S
        if now - self._last_log < LOG_EVERY_S:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more errors since the last line)" if self._unlogged else ""
        log.warning(
            "cache backend unreachable on %s, answering as a miss: %s%s",
            operation,
            type(exc).__name__,
            more,
            extra={"plugin": "cache"},
        )
        self._last_log = now
        self._unlogged = 0

    def _evicted(self, count: int) -> None:
        self.evictions += count

    # -- figures and admin ---------------------------------------------------------

    @hookimpl
    async def stats(self) -> dict[str, Any]:
        size: int | None
        memory_bytes = None
        if self.memory is not None:
            size = len(self.memory)
            memory_bytes = self.memory.bytes
        elif self.redis is not None and time.monotonic() >= self._paused_until:
            try:
                size = await self.redis.size()
            except Exception as exc:
                self._count_backend_error("ZCOUNT", exc)
                size = None
        else:
            size = None
        lookups = self.hits + self.misses
        figures: dict[str, Any] = {
            "hits": self.hits,
            "misses": self.misses,
            "bypasses": self.bypasses,
            "coalesced": self.coalesced,
            "stores": self.stores,
            "evictions": self.evictions,
            "too_large": self.too_large,
            "backend_errors": self.backend_errors,
            "in_flight": len(self.flights),
            "hit_rate": round(self.hits / lookups, 4) if lookups else 0.0,
        }
        if size is not None:
            figures["size"] = size
        if memory_bytes is not None:
            figures["bytes"] = memory_bytes
        return figures

    @hookimpl
    def admin_routes(self, gateway: Gateway) -> list[web.RouteDef]:
        return [web.delete("/cache", self._delete), web.get("/cache", self._describe)]

    async def _delete(self, request: web.Request) -> web.Response:
        """``DELETE /cache``: every entry, or those of ``?provider=`` and/or ``?model=``."""
        provider = request.query.get("provider")
        model = request.query.get("model")
        backend = self.memory if self.memory is not None else self.redis
        if backend is None:
            return web.json_response({"deleted": 0})
        if provider is not None:
            prefix, model_filter = key_prefix(self.namespace, provider, model), None
        else:
            prefix, model_filter = key_prefix(self.namespace), None if model is None else escape(model)
        try:
            deleted = await backend.delete_prefix(prefix, model_filter)
        except Exception as exc:
            self._count_backend_error("DEL", exc)
            return web.json_response(
                {
                    "error": {
                        "message": f"The cache backend is unreachable: {type(exc).__name__}.",
                        "type": "server_error",
                        "code": "backend_unavailable",
                        "param": None,
                    }
                },
                status=503,
            )
        return web.json_response({"deleted": deleted, "provider": provider, "model": model})

    async def _describe(self, request: web.Request) -> web.Response:
        """``GET /cache``: the options in force and the figures."""
        config = self.config
        backend = "memory" if self.memory is not None else "redis"
        options = {
            "backend": backend,
            "ttl_s": config.ttl_s,
            "max_entries": config.max_entries,
            "scope": config.scope,
            "max_entry_bytes": config.max_entry_bytes,
            "max_memory_bytes": config.max_memory_bytes,
            "max_temperature": config.max_temperature,
            "paths": list(config.paths),
            "follow_timeout_s": config.follow_timeout_s,
        }
        return web.json_response({"options": options, "stats": await self.stats()})


def _quiet(future: asyncio.Future[Any]) -> None:
    """Mark a failed prefetch's error as seen (the lookup in ``send`` counts it, if it runs)."""
    if not future.cancelled():
        future.exception()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
