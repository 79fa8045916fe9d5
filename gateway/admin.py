"""The admin listener: probes, the chain, figures, and routes plugins add.

With ``admin.token`` set, every call but the probes and ``/metrics`` needs
``Authorization: Bearer TOKEN`` (a plugin's routes included).
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from gateway import __version__, tracepage
from gateway.cors import SERVER
from gateway.redis import figures as redis_figures

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("gateway.admin")

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
#: the OpenAPI 3 description of this API (static: it lists the built-in plugins' routes)
OPENAPI_PATH = Path(__file__).with_name("openapi.json")


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def admin_app(gateway: Gateway) -> web.Application:
    started_at = time.time()

    @web.middleware
    async def require_token(request: web.Request, handler: Any) -> web.StreamResponse:
        token = gateway.config.admin.token  # read per call: a reload may change it
        if token and request.path not in OPEN_PATHS:
            scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
            # the scheme is case-insensitive (RFC 9110), the token is compared in constant time
            if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
                return _secured(
                    _error(401, "authentication_error", "invalid_api_key", "Admin calls need Authorization: Bearer <admin token>.")
                )
        return _secured(await handler(request))

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        checks: dict[str, bool] = {}
        for hook in gateway.chain.ready_hooks:
            try:
                checks[hook.label] = bool(await _maybe_await(hook.function()))
            except Exception as exc:
                log.warning("readiness check of %s failed: %r", hook.label, exc)
                checks[hook.label] = False
        if gateway.draining:
            status = "draining"
        elif not gateway.started:
            status = "starting"
        elif not all(checks.values()):
            status = "backend unavailable"
        else:
            status = "ready"
        return web.json_response({"status": status, "checks": checks}, status=200 if status == "ready" else 503)

    async def plugins(request: web.Request) -> web.Response:
        return web.json_response({"plugins": gateway.chain.describe()})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(await _stats(gateway, started_at))

    async def metrics(request: web.Request) -> web.Response:
        # Prometheus text 0.0.4 by default, OpenMetrics when the scraper asks for it.
        body, content_type = await _metrics(gateway, request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def traces_json(request: web.Request) -> web.Response:
        buffer = gateway.traces
        try:
            limit = int(request.query.get("limit", "")) if request.query.get("limit") else None
        except ValueError:
            return _bad_request("limit must be a whole number")
        return web.json_response({"traces": buffer.recent(limit) if buffer is not None else []})

    async def traces_html(request: web.Request) -> web.Response:
        buffer = gateway.traces
        key = request.query.get("id") or request.query.get("trace")
        if key:
            found = buffer.find(key) if buffer is not None else None
            text = tracepage.detail_page(found) if found is not None else tracepage.not_found_page(key)
            status = 200 if found is not None else 404
        else:
            traces = buffer.recent() if buffer is not None else []
            kept = buffer.max_traces if buffer is not None else 0
            text, status = tracepage.list_page(traces, kept, _sampling(gateway)), 200
        return web.Response(
            text=text,
            status=status,
            content_type="text/html",
            charset="utf-8",
            headers={
                "Content-Security-Policy": tracepage.CONTENT_SECURITY_POLICY,
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-store",
            },
        )

    async def reload(request: web.Request) -> web.Response:
        from gateway.app import reload_logged  # app imports this module

        problem = await reload_logged(gateway)
        if problem is not None:
            return _error(400, "invalid_request_error", "reload_refused", f"Reload refused, the running configuration stays: {problem}")
        return web.json_response({"status": "reloaded", "config": gateway.config_path, "plugins": gateway.chain.describe()})

    openapi = OPENAPI_PATH.read_bytes()

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=openapi, content_type="application/json")

    app = web.Application(middlewares=[require_token])
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/plugins", plugins)
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/traces", traces_html)
    app.router.add_get("/traces.json", traces_json)
    app.router.add_post("/reload", reload)
    # A plugin's routes are looked up in the current configuration at each call, so
    # after a reload they reach the new plugin instances.
    for method, path in gateway.admin_handlers:
        app.router.add_route(method, path, _current_handler(gateway, method, path))
    # A plugin a reload added: its routes with a fixed path are found here.
    app.router.add_route("*", "/{tail:.*}", _added_by_reload(gateway))
    return app


def _current_handler(gateway: Gateway, method: str, path: str) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        current = gateway.admin_handlers.get((method, path))
        if current is None:
            return _error(404, "not_found_error", "not_found", "No plugin of the running configuration serves this path.")
        return await _plugin_route(current, request)

    return handler


def _added_by_reload(gateway: Gateway) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        current = gateway.admin_handlers.get((request.method, request.path))
        if current is None:
            return _error(404, "not_found_error", "not_found", f"No admin route {request.method} {request.path}.")
        return await _plugin_route(current, request)

    return handler


async def _plugin_route(handler: Any, request: web.Request) -> web.StreamResponse:
    """A plugin's admin route; one that raises is a JSON 500 ``plugin_error`` (aiohttp's
    own answer is a plain-text page), its text in the log only."""
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except web.HTTPException:
        raise  # an answer, as aiohttp means it
    except Exception:
        log.exception("admin route %s %s of a plugin failed", request.method, request.path)
        return _error(500, "server_error", "plugin_error", "The plugin's admin route failed; see the gateway log.")


def _error(status: int, kind: str, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": code, "param": None}}, status=status)


def _secured(response: web.StreamResponse) -> web.StreamResponse:
    """The headers of a page a browser may open: no sniffing, no framing, no caching (and no versions)."""
    if not response.prepared:
        response.headers.setdefault("Server", SERVER)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Cache-Control", "no-store")
    return response


async def _plugin_stats(gateway: Gateway) -> dict[str, dict[str, Any]]:
    figures: dict[str, dict[str, Any]] = {
        plugin.label: {"failures": gateway.chain.failures[plugin.label]} for plugin in gateway.chain.plugins
    }
    for hook in gateway.chain.stats_hooks:
        try:
            figures[hook.label].update(await _maybe_await(hook.function()) or {})
        except Exception as exc:
            log.warning("stats of %s failed: %r", hook.label, exc)
    return figures


async def _stats(gateway: Gateway, started_at: float) -> dict[str, Any]:
    answers = gateway.proxy.answers
    by_status: Counter[str] = Counter()
    by_provider: Counter[str] = Counter()
    for (provider, status), count in answers.items():
        by_status[str(status)] += count
        if provider != "-":
            by_provider[provider] += count
    return {
        "uptime_s": round(time.time() - started_at, 3),
        "requests": sum(answers.values()),
        "in_flight": gateway.proxy.in_flight,
        "by_status": dict(by_status),
        "by_provider": dict(by_provider),
        "plugins": await _plugin_stats(gateway),
        # the shared Redis connections (gateway.redis): round trips are pipelines
        "redis": redis_figures(),
        # the event loop's unfinished tasks, this call's own included: flat under steady
        # load, back to its idle value after it (a leak shows as a climb)
        "runtime": {"tasks": len(asyncio.all_tasks())},
    }


def _bad_request(message: str) -> web.Response:
    return _error(400, "invalid_request_error", "invalid_request", message)


def _sampling(gateway: Gateway) -> str:
    sampler = getattr(gateway.tracer_provider, "sampler", None)
    if sampler is None:
        return "tracing off"
    root = getattr(sampler, "_root", None)  # ParentBased: callers' decisions are followed
    return f"new traces: {root.get_description()}, a caller's sampled trace always" if root is not None else sampler.get_description()


async def _metrics(gateway: Gateway, accept: str = "") -> tuple[bytes, str]:
    in_flight = GaugeMetricFamily("gateway_requests_in_flight", "Requests being served now.", value=gateway.proxy.in_flight)
    info = InfoMetricFamily("gateway_build", "The gateway's version.", value={"version": __version__})
    ready = GaugeMetricFamily("gateway_ready", "1 when started and not draining.", value=int(gateway.started and not gateway.draining))
    tasks = GaugeMetricFamily("gateway_asyncio_tasks", "Unfinished asyncio tasks of the gateway process.", value=len(asyncio.all_tasks()))
    extra: list[Any] = [in_flight, info, ready, tasks]
    shared = redis_figures()
    if shared:
        for name, key, text in (
            ("gateway_redis_pipelines", "pipelines", "Pipelines (round trips) sent on the shared Redis connection."),
            ("gateway_redis_commands", "commands", "Commands sent on the shared Redis connection."),
            ("gateway_redis_failed_pipelines", "failed_pipelines", "Pipelines that failed whole (connection, timeout)."),
        ):
            family = CounterMetricFamily(name, text, labels=["server"])
            for server, counts in shared.items():
                family.add_metric([server], counts[key])
            extra.append(family)
    return gateway.metrics.exposition(await _plugin_stats(gateway), extra=extra, accept=accept)
