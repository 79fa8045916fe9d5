"""One gateway: built from a config with no I/O, started, served on two listeners, drained, reloaded.

:class:`Gateway` is what ``gateway check`` builds (and throws away) and what
``gateway run`` serves. Plugins receive it in ``configure``, ``startup``,
``shutdown`` and ``admin_routes`` to reach the providers and the config.

A reload (SIGHUP, admin ``POST /reload``) builds and starts a whole new gateway from
the file, then swaps what a config makes (:data:`GENERATION`: config, providers,
routes, clients, the chain) into the running one at once; requests in flight finish
on the old parts, whose plugins are then shut down. Listeners, metrics and the
trace buffer stay.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    ContentEncodingError,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from gateway import plugins as plugin_loader
from gateway import redact
from gateway.admin import admin_app
from gateway.chain import Chain
from gateway.config import ConfigError, GatewayConfig, LoadedConfig, load, parse_listen
from gateway.cors import SECURITY_HEADERS
from gateway.errors import GatewayError, StartupError, error_body, invalid_request
from gateway.exchange import Exchange
from gateway.logs import AccessLog
from gateway.metrics import Metrics
from gateway.plugins import PluginConfigError
from gateway.proxy import Provider, Proxy, Router, make_provider, new_request_id, unreadable_body
from gateway.redis import DEFAULT_TIMEOUT_S, Redis
from gateway.telemetry import get_tracer, requested_model, roots_unsampled, trace_buffer

log = logging.getLogger("gateway")

#: what a config builds, swapped together by a reload
GENERATION = (
    "config_path", "config", "providers", "router", "proxy", "chain", "access_log", "admin_handlers", "redis_handles",
)  # fmt: skip

#: once the grace period is over, how long cancelled requests get to unwind
CANCEL_WAIT_S = 0.25
#: the least time a plugin's shutdown hook gets, whatever shutdown_grace_s says
MIN_SHUTDOWN_HOOK_S = 1.0
DRAIN_POLL_S = 0.02
#: objects allocated (net) before the young generation is collected (CPython: 700)
GC_YOUNG_THRESHOLD = 10_000
#: what aiohttp's HTTP parser accepts: a longer request line is 414, a longer header
#: (name and value) or more headers are 431. The two sizes differ, which tells the
#: parser's two LineTooLong errors apart.
MAX_REQUEST_LINE_BYTES = 8190
MAX_HEADER_BYTES = 65536
MAX_HEADERS = 128
#: the core failed in a way no other code covers (a bug): the details stay in the log
INTERNAL_ERROR = GatewayError(500, "internal_error", "The gateway failed to answer this request; see its log.")


class Gateway:
    """Config, providers, router and chain of one running gateway."""

    def __init__(
        self, loaded: LoadedConfig, tracer_provider: trace.TracerProvider | None = None, *, previous: Gateway | None = None
    ) -> None:
        """Build from ``loaded``; with ``previous`` (a reload), share its telemetry and counters."""
        self.config_path = loaded.path
        self.config: GatewayConfig = loaded.gateway
        redact.remember(redact.keys_of(self.config))  # before a plugin is built: it may log
        self.providers: dict[str, Provider] = {
            name: make_provider(name, provider) for name, provider in self.config.providers.items()
        }
        self.router = Router(self.config, self.providers)
        #: the addresses served (listen, admin.listen): the first configuration's, as a reload keeps them
        self.listening: tuple[str, str] = (
            previous.listening if previous is not None else (self.config.listen, self.config.admin.listen)
        )
        if previous is not None:
            self.tracer_provider, self.tracer = previous.tracer_provider, previous.tracer
            self.background, self.metrics, self.traces = previous.background, previous.metrics, previous.traces
        else:
            self.tracer_provider = tracer_provider or trace.NoOpTracerProvider()
            self.tracer = get_tracer(self.tracer_provider)
            #: tasks that finish exchanges whose caller left; awaited on shutdown
            self.background: set[asyncio.Task[Any]] = set()
            self.metrics = Metrics()
            #: the trace page's spans (None when tracing is off altogether)
            self.traces = trace_buffer(self.tracer_provider)
            if self.traces is not None:
                self.traces.on_hook = self.metrics.observe_hook
        self.proxy = Proxy(
            self.config, self.router, self.tracer, self.background, roots_unsampled=roots_unsampled(self.tracer_provider)
        )
        if previous is not None:  # /stats and the drain count every generation's requests
            self.proxy.answers, self.proxy.serving = previous.proxy.answers, previous.proxy.serving
        manager, chain = plugin_loader.load(loaded)
        self.chain = Chain(manager, chain, self.tracer, self.proxy.forward)
        self.proxy.chain = self.chain
        self.access_log = AccessLog(self.config.log)
        self.proxy.finished = self._finished
        #: exchanges over whose metrics and access line are not recorded yet (this loop iteration's)
        self._finished_exchanges: list[tuple[Exchange, int, trace.Span | None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = False
        self.draining = False
        #: the loop time the drain's grace period ends at, once a drain began
        self.drain_deadline: float | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._reloading = asyncio.Lock()
        #: the Redis handles this generation's plugins asked for; closed after their shutdown
        self.redis_handles: list[Redis] = []
        self._configure()
        if previous is not None:
            self.chain.adopt(previous.chain)
        #: the plugins' admin routes, by (method, path); the admin app calls the current ones
        self.admin_handlers: dict[tuple[str, str], Any] = {}
        for hook in self.chain.admin_routes_hooks:
            try:
                for route in hook.function(self):
                    self.admin_handlers[(route.method, route.path)] = route.handler
            except Exception as exc:
                raise plugin_loader.plugin_failed(self.config_path, hook.index, hook.label, "admin_routes failed", exc) from None

    def _finished(self, exchange: Exchange, status: int, span: trace.Span | None) -> None:
        """Once per exchange, when it is over (its answer sent): metrics and the access
        line, recorded with the other exchanges that end in this loop iteration, just
        after it. Recording them together, after aiohttp is done with the connections,
        costs the empty chain about 15 µs less a request at c=32 (docs/performance.md);
        a scrape or a log reader a moment later sees them all the same. They run in the
        context of the first of them: each line takes its request and trace ids from its
        own exchange and SERVER span (None: not traced), never from the context."""
        finished = self._finished_exchanges
        finished.append((exchange, status, span))
        if len(finished) == 1:
            loop = self._loop
            if loop is None:  # kept: on Python 3.11 every get_running_loop() is a getpid() system call
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._record_finished)

    def _record_finished(self) -> None:
        finished, self._finished_exchanges = self._finished_exchanges, []
        metrics, access_log = self.metrics, self.access_log
        for exchange, status, span in finished:
            try:
                model = requested_model(exchange)
                metrics.record(exchange, status, exchange.provider if exchange.attempts else None, model)
                access_log.write(exchange, status, model, span)
            except Exception:
                # its own ids: this runs in the context of the pass's first exchange
                ids = (exchange.request_id, span.get_span_context() if span is not None else None)
                log.exception("recording the metrics or access line of a request failed", extra={"_ids": ids})

    def _configure(self) -> None:
        for hook in self.chain.configure_hooks:
            try:
                hook.function(self)
            except PluginConfigError as exc:
                raise plugin_loader.plugin_config_error(self.config_path, hook.index, hook.label, exc) from None
            except Exception as exc:
                raise plugin_loader.plugin_failed(self.config_path, hook.index, hook.label, "configure failed", exc) from None

    def redis(self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Redis:
        """A handle on the process-wide, auto-pipelined connection to ``url`` (see
        :mod:`gateway.redis`), for a plugin's ``startup``. Plugins naming the same URL
        share it; the gateway waits for its queued calls and closes it after the
        plugins' ``shutdown`` hooks."""
        handle = Redis(url, timeout_s=timeout_s)
        self.redis_handles.append(handle)
        return handle

    async def start(self) -> None:
        for provider in self.providers.values():
            await provider.start()
        await self.chain.startup(self)
        self.started = True

    async def stop(self) -> None:
        """After the data plane drained: finish leftover exchanges, stop plugins, close pools."""
        if self.background:
            await self._finish_background()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        await self._shut(self.chain, self.providers, self.redis_handles)
        self._record_finished()
        self.started = False
        if isinstance(self.tracer_provider, TracerProvider):
            await asyncio.to_thread(self.tracer_provider.force_flush)  # exporting may wait on the network

    async def _finish_background(self) -> None:
        """Let the ``complete`` hooks still running finish until the drain's deadline (a
        grace period from now without a drain), then cancel them: a plugin whose hook
        never returns kept SIGTERM from ever ending the process."""
        loop = asyncio.get_running_loop()
        deadline = self.drain_deadline
        if deadline is None:
            deadline = loop.time() + self.config.shutdown_grace_s
        _, pending = await asyncio.wait(set(self.background), timeout=max(deadline - loop.time(), CANCEL_WAIT_S))
        if pending:
            log.warning(
                "grace period over, cancelling %d unfinished complete hook(s); their records may be lost", len(pending)
            )
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=CANCEL_WAIT_S)

    async def _shut(self, chain: Chain, providers: dict[str, Provider], redis_handles: list[Redis]) -> None:
        # Each shutdown hook gets the grace period (at least a second), then is cancelled.
        await chain.shutdown(self, max(self.config.shutdown_grace_s, MIN_SHUTDOWN_HOOK_S))
        # After the plugins' shutdown: the writes they queued (and any made while
        # shutting down) reach Redis before the connection closes.
        for handle in redis_handles:
            try:
                await handle.close()
            except Exception:
                log.exception("closing a Redis connection failed")
        redis_handles.clear()
        for provider in providers.values():
            await provider.close()

    async def reload(self) -> None:
        """Re-read the config file and swap everything it makes, at once.

        Raises :class:`ConfigError` (the file is invalid) or :class:`StartupError` (a
        plugin of the new chain failed to start); the running configuration then
        stays. Requests in flight finish on the old one, whose plugins shut down after.
        """
        async with self._reloading:
            loaded = load(self.config_path)
            fresh = Gateway(loaded, previous=self)
            try:
                await fresh.start()
            except BaseException:
                await fresh._shut(fresh.chain, fresh.providers, fresh.redis_handles)  # the plugins that did start let go of their pools
                raise
            # Against the addresses served, not the last file's: a reload that changed them
            # and one that changes them back both compare with what is really listening.
            wanted = (fresh.config.listen, fresh.config.admin.listen)
            for key, new, old in zip(("listen", "admin.listen"), wanted, self.listening, strict=True):
                if new != old:
                    log.warning("%s changed to %s: listen addresses stay %s until a restart", key, new, old)
            old_chain, old_providers, old_handles = self.chain, self.providers, self.redis_handles
            old_level = self.config.log.level
            in_flight = set(self.proxy.serving) | set(self.background)
            for name in GENERATION:
                setattr(self, name, getattr(fresh, name))
            if fresh.config.log.level != old_level:  # log.level is part of what a reload swaps
                logging.getLogger().setLevel(fresh.config.log.level.upper())
            task = asyncio.get_running_loop().create_task(self._retire(old_chain, old_providers, old_handles, in_flight))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            log.info("reloaded", extra={"config": self.config_path, "plugins": len(self.chain.plugins)})

    async def _retire(
        self,
        chain: Chain,
        providers: dict[str, Provider],
        redis_handles: list[Redis],
        in_flight: set[asyncio.Task[Any]],
    ) -> None:
        """Once the requests the old configuration was serving are done, shut it down."""
        if in_flight:
            await asyncio.wait(in_flight)
        await self._shut(chain, providers, redis_handles)

    def data_server(self) -> web.Server:
        """The data plane: aiohttp's low-level server, with the proxy as its only
        handler (no router, no middlewares: every path is proxied). Each request
        goes to the proxy of the configuration current when it arrives."""

        def make_request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
            # aiohttp enforces the body limit itself while reading a chunked body.
            limit = self.config.limits.max_body_bytes
            return web.BaseRequest(message, payload, protocol, writer, task, writer.loop, client_max_size=limit)

        def handle(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
            return self.proxy.handle(request)

        return DataServer(
            handle,
            request_factory=make_request,
            handler_cancellation=True,
            access_log=None,
            max_line_size=MAX_REQUEST_LINE_BYTES,
            max_field_size=MAX_HEADER_BYTES,
            max_headers=MAX_HEADERS,
            # aiohttp closes a connection idle this long, counted from when it opened
            # (or answered last) and not reset by partial data: a slow request head too.
            keepalive_timeout=self.config.limits.header_timeout_s,
        )


class DataConnection(RequestHandler):
    """aiohttp's handler of one data-plane connection, whose own answers (a request its
    HTTP parser refuses, a handler that raised) are the gateway's: JSON in the OpenAI
    shape, the security headers, no quote of the request, and the connection closed."""

    #: the body the parser is filling: the last request it delivered
    _filling: StreamReader | None = None

    def data_received(self, data: bytes) -> None:
        # A body that turns malformed (a bad chunk size) fails the parser, which queues an
        # error answer but leaves the body's reader waiting (until limits.body_timeout_s,
        # then aiohttp's lingering): hand the reader the error at once.
        messages = self._messages
        delivered = len(messages)
        super().data_received(data)
        for index in range(delivered, len(messages)):
            message, payload = messages[index]
            if isinstance(message, _ErrInfo):
                if self._filling is not None and not self._filling.is_eof():
                    self._filling.set_exception(message.exc)
                    self._filling.feed_eof()  # nothing more to read: no lingering after the answer
                self._filling = None
            else:
                self._filling = payload

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own logs the event (gateway.logs drops its quote of the request) and
        # raises when part of an answer already went out; its plain-text answer, which
        # quotes the offending line back, is replaced.
        super().handle_error(request, status, exc)
        if isinstance(exc, HttpProcessingError):
            error, api = refused_by_parser(exc), "openai"  # what was read of the path is not to be trusted
        elif isinstance(exc, RequestPayloadError):  # a body that failed while read, outside the proxy's read
            error, api = unreadable_body(exc), "openai"
        else:
            error = INTERNAL_ERROR
            api = "anthropic" if request.path.startswith("/v1/messages") else "openai"
        headers = {
            "Content-Type": "application/json",
            "Cache-Control": "no-store",
            # a new id, as on every answer (the caller's header was not read, or not trusted)
            "x-request-id": new_request_id(),
            **SECURITY_HEADERS,
        }
        response = web.Response(status=error.status, body=error_body(error, api), headers=headers)
        response.force_close()
        return response


class DataServer(web.Server):
    """aiohttp's low-level server, serving each connection with :class:`DataConnection`."""

    def __call__(self) -> RequestHandler:
        # web.Server offers no factory argument: this is its own __call__, with our class.
        return DataConnection(self, loop=self._loop, **self._kwargs)


def refused_by_parser(exc: HttpProcessingError) -> GatewayError:
    """The gateway's answer to a request aiohttp's HTTP parser refused.

    The message names what is wrong and never quotes the request: the offending bytes
    may be a key (aiohttp's own messages quote them)."""
    if isinstance(exc, LineTooLong):
        if exc.args[1:2] == (MAX_REQUEST_LINE_BYTES,):
            return GatewayError(414, "request_line_too_long", f"The request line is longer than the limit of {MAX_REQUEST_LINE_BYTES} bytes.")
        return GatewayError(431, "request_headers_too_large", f"A request header is longer than the limit of {MAX_HEADER_BYTES} bytes.")
    if isinstance(exc, BadHttpMethod):
        if "HTTPS" in exc.message:
            return invalid_request("TLS traffic on the gateway's plain-HTTP port: call it with http://.")
        return invalid_request("The request line does not start with a method the gateway accepts.")
    if isinstance(exc, BadStatusLine):
        return invalid_request("The request line is malformed: expected METHOD TARGET HTTP/1.x.")
    if isinstance(exc, InvalidURLError):
        return invalid_request("The request target is not a valid path.")
    if isinstance(exc, InvalidHeader):
        return invalid_request("A request header has an invalid name or value.")
    if isinstance(exc, ContentEncodingError):  # br or zstd without their decoder installed
        return invalid_request("The request body's Content-Encoding is not one the gateway can decode (use gzip or deflate).")
    if isinstance(exc, PayloadEncodingError):
        return invalid_request("The request body's framing (Content-Length, chunked encoding) is malformed.")
    if isinstance(exc, BadHttpMessage):
        # The parser's reason comes first, before any quote of the request ("reason:\n\n  b'...'").
        reason = exc.message.split(":\n", 1)[0].strip() if type(exc) is BadHttpMessage else ""
        if reason.startswith("Too many headers"):
            return GatewayError(431, "request_headers_too_large", f"The request has more than {MAX_HEADERS} headers.")
        if reason and "\n" not in reason:
            return invalid_request(f"The request's headers or framing are malformed: {reason.rstrip('.')}.")
    return invalid_request("The request's headers or framing are malformed.")


async def serve(gateway: Gateway) -> None:
    """Run both listeners until SIGTERM or SIGINT, then drain and shut down."""
    config = gateway.config
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def reload_on_sighup() -> None:
        task = loop.create_task(reload_logged(gateway))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload_on_sighup)

    admin_runner = web.AppRunner(admin_app(gateway), access_log=None)
    await admin_runner.setup()
    try:
        # The admin port comes first, so /readyz answers 503 while plugins start.
        admin_site = web.TCPSite(admin_runner, *parse_listen(config.admin.listen))
        await _listen(admin_site, "admin.listen", config.admin.listen)
        await gateway.start()
        gc.freeze()  # what startup built lives forever: keep it out of every collection
        # A request makes and drops hundreds of objects, nearly all freed by reference
        # counting; at the default threshold (700) the young generation was collected
        # every ~25 requests of the full chain, about a tenth of its CPU. Cycles still
        # get collected, 10,000 allocations later (benchmarks, docs/performance.md).
        gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
        data_runner = web.ServerRunner(gateway.data_server(), shutdown_timeout=CANCEL_WAIT_S)
        await data_runner.setup()
        try:
            data_site = web.TCPSite(data_runner, *parse_listen(config.listen))
            await _listen(data_site, "listen", config.listen)
            data_url, admin_url = _bound_url(data_runner), _bound_url(admin_runner)
            print(
                f"gateway ready on {data_url} (admin {admin_url}), "
                f"{len(gateway.chain.plugins)} plugin(s), config {gateway.config_path}",
                flush=True,
            )
            log.info("ready", extra={"listen": data_url, "admin": admin_url})
            await stop.wait()
            gateway.draining = True
            grace_s = gateway.config.shutdown_grace_s  # the current config's: a reload may have changed it
            log.info("draining", extra={"grace_s": grace_s, "in_flight": gateway.proxy.in_flight})
            await _drain(data_runner, gateway, grace_s)
        finally:
            await data_runner.cleanup()  # cancels whatever still runs
    finally:
        if gateway.started:
            await gateway.stop()
        await admin_runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        log.info("stopped")


async def reload_logged(gateway: Gateway) -> str | None:
    """Reload; a failure is a log line naming file, key and problem, returned, and the
    running configuration keeps serving."""
    try:
        await gateway.reload()
    except ConfigError as exc:
        problem = f"config error: {exc}"
    except StartupError as exc:
        problem = redact.redact(str(exc))  # a plugin's exception, quoted: the admin answer carries it too
    else:
        return None
    log.error("reload refused, the running configuration stays: %s", problem)
    return problem


async def _listen(site: web.TCPSite, key: str, address: str) -> None:
    try:
        await site.start()
    except OSError as exc:
        raise StartupError(f"cannot listen on {address} ({key}): {exc.strerror or exc}") from None


async def _drain(runner: web.BaseRunner, gateway: Gateway, grace_s: float) -> None:
    """Stop accepting, let in-flight requests and streams finish for up to ``grace_s``.

    aiohttp's own shutdown would wait its timeout twice (once for the handler, once
    after asking it to stop); waiting here keeps the whole drain within the grace.
    """
    for site in list(runner.sites):
        await site.stop()
    if runner.server is not None:
        runner.server.pre_shutdown()  # keep-alive connections close after their current request
    loop = asyncio.get_running_loop()
    deadline = gateway.drain_deadline = loop.time() + grace_s
    while gateway.proxy.in_flight and loop.time() < deadline:
        await asyncio.sleep(DRAIN_POLL_S)
    leftovers = list(gateway.proxy.serving)
    if leftovers:
        log.warning("grace period over, cancelling %d request(s)", len(leftovers))
        for task in leftovers:
            task.cancel()
        await asyncio.wait(leftovers, timeout=CANCEL_WAIT_S)


def _bound_url(runner: web.BaseRunner) -> str:
    """The URL the runner listens on (with the real port when the config said :0)."""
    host, port = runner.addresses[0][:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def build(path: str | None, tracer_provider: trace.TracerProvider | None = None) -> Gateway:
    """Load the config and build the gateway; raise ConfigError with file, key and problem."""
    return Gateway(load(path), tracer_provider)
