"""One gateway: built from a config with no I/O, started, served on two listeners, drained.

:class:`Gateway` is what ``gateway check`` builds (and throws away) and what
``gateway run`` serves. Plugins receive it in ``configure``, ``startup``,
``shutdown`` and ``admin_routes`` to reach the providers and the config.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import Any

from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from gateway import plugins as plugin_loader
from gateway.admin import admin_app
from gateway.chain import Chain
from gateway.config import GatewayConfig, LoadedConfig, load, parse_listen
from gateway.errors import StartupError
from gateway.exchange import Exchange
from gateway.logs import AccessLog
from gateway.metrics import Metrics
from gateway.plugins import PluginConfigError
from gateway.proxy import Provider, Proxy, Router, make_provider
from gateway.telemetry import get_tracer, requested_model, roots_unsampled, trace_buffer

log = logging.getLogger("gateway")

#: once the grace period is over, how long cancelled requests get to unwind
CANCEL_WAIT_S = 0.25
DRAIN_POLL_S = 0.02


class Gateway:
    """Config, providers, router and chain of one running gateway."""

    def __init__(self, loaded: LoadedConfig, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.config_path = loaded.path
        self.config: GatewayConfig = loaded.gateway
        self.providers: dict[str, Provider] = {
            name: make_provider(name, provider) for name, provider in self.config.providers.items()
        }
        self.router = Router(self.config, self.providers)
        self.tracer_provider = tracer_provider or trace.NoOpTracerProvider()
        self.tracer = get_tracer(self.tracer_provider)
        #: tasks that finish exchanges whose caller left; awaited on shutdown
        self.background: set[asyncio.Task[Any]] = set()
        self.proxy = Proxy(
            self.config, self.router, self.tracer, self.background, roots_unsampled=roots_unsampled(self.tracer_provider)
        )
        manager, chain = plugin_loader.load(loaded)
        self.chain = Chain(manager, chain, self.tracer, self.proxy.forward)
        self.proxy.chain = self.chain
        self.metrics = Metrics()
        self.access_log = AccessLog(self.config.log)
        #: the trace page's spans (None when tracing is off altogether)
        self.traces = trace_buffer(self.tracer_provider)
        if self.traces is not None:
            self.traces.on_hook = self.metrics.observe_hook
        self.proxy.finished = self._finished
        self.started = False
        self.draining = False
        self._configure()

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
        await self.chain.shutdown(self)
        for provider in self.providers.values():
            await provider.close()
        self.started = False
        if isinstance(self.tracer_provider, TracerProvider):
            await asyncio.to_thread(self.tracer_provider.force_flush)  # exporting may wait on the network

    def data_server(self) -> web.Server:
        """The data plane: aiohttp's low-level server, with the proxy as its only
        handler (no router, no middlewares: every path is proxied)."""
        max_body_bytes = self.config.limits.max_body_bytes

        def make_request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
            # aiohttp enforces the body limit itself while reading a chunked body.
            loop = asyncio.get_running_loop()
            return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=max_body_bytes)

        return web.Server(
            self.proxy.handle,
            request_factory=make_request,
            handler_cancellation=True,
            access_log=None,
            max_field_size=65536,
        )


async def serve(gateway: Gateway) -> None:
    """Run both listeners until SIGTERM or SIGINT, then drain and shut down."""
    config = gateway.config
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

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
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        log.info("stopped")


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
