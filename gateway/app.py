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
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from gateway import plugins as plugin_loader
from gateway.admin import admin_app
from gateway.chain import Chain
from gateway.config import ConfigError, GatewayConfig, LoadedConfig, load, parse_listen
from gateway.errors import StartupError
from gateway.exchange import Exchange
from gateway.logs import AccessLog
from gateway.metrics import Metrics
from gateway.plugins import PluginConfigError
from gateway.proxy import Provider, Proxy, Router, make_provider
from gateway.telemetry import get_tracer, requested_model, roots_unsampled, trace_buffer

log = logging.getLogger("gateway")

#: what a config builds, swapped together by a reload
GENERATION = ("config_path", "config", "providers", "router", "proxy", "chain", "access_log", "admin_handlers")

#: once the grace period is over, how long cancelled requests get to unwind
CANCEL_WAIT_S = 0.25
DRAIN_POLL_S = 0.02


class Gateway:
    """Config, providers, router and chain of one running gateway."""

    def __init__(
        self, loaded: LoadedConfig, tracer_provider: trace.TracerProvider | None = None, *, previous: Gateway | None = None
    ) -> None:
        """Build from ``loaded``; with ``previous`` (a reload), share its telemetry and counters."""
        self.config_path = loaded.path
        self.config: GatewayConfig = loaded.gateway
        self.providers: dict[str, Provider] = {
            name: make_provider(name, provider) for name, provider in self.config.providers.items()
        }
        self.router = Router(self.config, self.providers)
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
        self.started = False
        self.draining = False
        self._retiring: set[asyncio.Task[None]] = set()
        self._reloading = asyncio.Lock()
        self._configure()
        #: the plugins' admin routes, by (method, path); the admin app calls the current ones
        self.admin_handlers: dict[tuple[str, str], Any] = {}
        for hook in self.chain.admin_routes_hooks:
            for route in hook.function(self):
                self.admin_handlers[(route.method, route.path)] = route.handler

    def _finished(self, exchange: Exchange, status: int) -> None:
        """Once per exchange, when it is over: metrics and the access line."""
        try:
            model = requested_model(exchange)
            self.metrics.record(exchange, status, exchange.provider if exchange.attempts else None, model)
            self.access_log.write(exchange, status, model)
        except Exception:
            log.exception("recording the metrics or access line of a request failed")

    def _configure(self) -> None:
        for hook in self.chain.configure_hooks:
            try:
                hook.function(self)
            except PluginConfigError as exc:
                raise plugin_loader.plugin_config_error(self.config_path, hook.index, hook.label, exc) from None

    async def start(self) -> None:
        for provider in self.providers.values():
            await provider.start()
        await self.chain.startup(self)
        self.started = True

    async def stop(self) -> None:
        """After the data plane drained: finish leftover exchanges, stop plugins, close pools."""
        if self.background:
            await asyncio.gather(*self.background, return_exceptions=True)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        await self._shut(self.chain, self.providers)
        self.started = False
        if isinstance(self.tracer_provider, TracerProvider):
            await asyncio.to_thread(self.tracer_provider.force_flush)  # exporting may wait on the network

    async def _shut(self, chain: Chain, providers: dict[str, Provider]) -> None:
        await chain.shutdown(self)
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
                await fresh._shut(fresh.chain, fresh.providers)  # the plugins that did start let go of their pools
                raise
            for key, new, old in (("listen", fresh.config.listen, self.config.listen), ("admin.listen", fresh.config.admin.listen, self.config.admin.listen)):
                if new != old:
                    log.warning("%s changed to %s: listen addresses stay %s until a restart", key, new, old)
            old_chain, old_providers = self.chain, self.providers
            in_flight = set(self.proxy.serving) | set(self.background)
            for name in GENERATION:
                setattr(self, name, getattr(fresh, name))
            task = asyncio.get_running_loop().create_task(self._retire(old_chain, old_providers, in_flight))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            log.info("reloaded", extra={"config": self.config_path, "plugins": len(self.chain.plugins)})

    async def _retire(self, chain: Chain, providers: dict[str, Provider], in_flight: set[asyncio.Task[Any]]) -> None:
        """Once the requests the old configuration was serving are done, shut it down."""
        if in_flight:
            await asyncio.wait(in_flight)
        await self._shut(chain, providers)

    def data_server(self) -> web.Server:
        """The data plane: aiohttp's low-level server, with the proxy as its only
        handler (no router, no middlewares: every path is proxied). Each request
        goes to the proxy of the configuration current when it arrives."""

        def make_request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
            # aiohttp enforces the body limit itself while reading a chunked body.
            loop = asyncio.get_running_loop()
            limit = self.config.limits.max_body_bytes
            return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=limit)

        def handle(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
            return self.proxy.handle(request)

        return web.Server(
            handle,
            request_factory=make_request,
            handler_cancellation=True,
            access_log=None,
            max_field_size=65536,
            # aiohttp closes a connection idle this long, counted from when it opened
            # (or answered last) and not reset by partial data: a slow request head too.
            keepalive_timeout=self.config.limits.header_timeout_s,
        )


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
            log.info("draining", extra={"grace_s": config.shutdown_grace_s, "in_flight": gateway.proxy.in_flight})
            await _drain(data_runner, gateway, config.shutdown_grace_s)
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
        problem = str(exc)
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
    deadline = loop.time() + grace_s
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
