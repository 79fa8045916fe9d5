"""Every hook a plugin may implement, its contract in its docstring.

Pluggy checks the names and signatures; the gateway reads the implementations once
at startup and runs them itself, in config order (see :mod:`gateway.chain`), since
pluggy cannot ``await``. Implement only the hooks you need, with only the
arguments you use. The per-request hooks must be ``async def``; ``configure``,
``admin_routes``, ``stats`` and ``ready`` may be either.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.app import Gateway
    from gateway.exchange import Exchange, Response, StreamEvent

hookspec = pluggy.HookspecMarker("gateway")
hookimpl = pluggy.HookimplMarker("gateway")

#: What ``send`` receives as ``call_next``: the rest of the onion, down to the upstream.
CallNext = Callable[["Exchange"], Awaitable["Response"]]


@hookspec
def configure(gateway: Gateway) -> None:
    """Once, when the chain is built (``gateway check`` too), with no I/O.

    Check options against the rest of the config (providers, routes) and raise
    :class:`gateway.PluginConfigError` to reject them at startup.
    """


@hookspec
def adopt(previous: Any) -> None:
    """On a reload, before ``startup``: the previous configuration's instance of this
    plugin (same name, same class), to take its in-memory state over from (rate-limit
    counters, cache entries, breaker states) when the options allow it. The previous
    instance still serves the requests in flight and runs its ``shutdown`` after them:
    share its objects, do not close them. Not called on a first start."""


@hookspec
async def startup(gateway: Gateway) -> None:
    """Once, before the first request: open pools and connections. Raising stops startup."""


@hookspec
async def shutdown(gateway: Gateway) -> None:
    """Once, after the last in-flight request drained: close what ``startup`` opened."""


@hookspec
async def request(exchange: Exchange) -> Response | None:
    """Before the upstream call, in chain order.

    Return a :class:`Response` to answer now: later plugins' ``request`` hooks and
    the upstream call are skipped. Raise :class:`GatewayError` to answer with an error.
    """


@hookspec
async def send(exchange: Exchange, call_next: CallNext) -> Response:
    """Wraps the upstream call, onion style: the first plugin in the chain is outermost.

    Return ``await call_next(exchange)`` (perhaps more than once: retries, fallback
    to another ``exchange.provider``, a cascade's draft model), or a Response of
    your own. ``call_next`` raises :class:`GatewayError` for timeouts (504) and
    connection failures (502); an upstream's own error is a Response with its status.
    """


@hookspec
async def response(exchange: Exchange, response: Response) -> Response | None:
    """After the answer arrived, in reverse chain order, for plugins whose ``request`` ran.

    Runs on every Response (the upstream's, errors included, or a plugin's), not on
    errors the gateway makes. Return a Response to replace it; None keeps it. For a
    stream this runs before the first event is relayed.
    """


@hookspec
async def chunk(exchange: Exchange, event: StreamEvent) -> None:
    """For each server-sent event of a streamed answer, in reverse chain order.

    May :meth:`StreamEvent.replace` the data or set ``event.drop``; raising
    :class:`GatewayError` ends the stream with an error event in the API's shape.
    """


@hookspec
async def complete(exchange: Exchange) -> None:
    """After the caller has the whole answer (or left, or got an error), reverse chain order.

    Only for plugins whose ``request`` ran. ``exchange.usage`` holds the tokens used,
    also those of a stream the caller abandoned; ``exchange.error`` is set when the
    gateway answered with an error. Runs after the answer is sent: it adds no latency.
    """


@hookspec
def admin_routes(gateway: Gateway) -> Iterable[web.RouteDef]:
    """Routes to add to the admin listener (``web.get("/cache", handler)``...).

    They sit behind the admin token like every admin call.
    """


@hookspec
def stats() -> dict[str, Any]:
    """Figures for ``GET /stats`` under ``plugins.<name>`` (may be async)."""


@hookspec
def ready() -> bool:
    """Whether the plugin's backends are reachable now; ``/readyz`` is 503 while any is not (may be async)."""
