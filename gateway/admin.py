"""The admin listener: probes, the chain, figures, and routes plugins add.

With ``admin.token`` set, every call but the probes and ``/metrics`` needs
``Authorization: Bearer TOKEN`` (a plugin's routes included).
"""

from __future__ import annotations

import hmac
import inspect
import logging
import re
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("gateway.admin")

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def admin_app(gateway: Gateway) -> web.Application:
    token = gateway.config.admin.token
    started_at = time.time()

    @web.middleware
    async def require_token(request: web.Request, handler: Any) -> web.StreamResponse:
        if token and request.path not in OPEN_PATHS:
            presented = request.headers.get("Authorization", "")
            if not hmac.compare_digest(presented.encode(), f"Bearer {token}".encode()):
                return web.json_response(
                    {"error": {"message": "Admin calls need Authorization: Bearer <admin token>.", "type": "authentication_error", "code": "invalid_api_key", "param": None}},
                    status=401,
                )
        return await handler(request)

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
        return web.Response(text=await _metrics(gateway), content_type="text/plain", charset="utf-8")

    app = web.Application(middlewares=[require_token])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/plugins", plugins)
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", metrics)
    for hook in gateway.chain.admin_routes_hooks:
        app.router.add_routes(list(hook.function(gateway)))
    return app


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
    }


_METRIC_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def _metrics(gateway: Gateway) -> str:
    lines = [
        "# HELP gateway_requests_total Requests answered, by provider and status (499: the caller left).",
        "# TYPE gateway_requests_total counter",
    ]
    for (provider, status), count in sorted(gateway.proxy.answers.items()):
        lines.append(f'gateway_requests_total{{provider="{_label(provider)}",status="{status}"}} {count}')
    lines += [
        "# HELP gateway_requests_in_flight Requests being served now.",
        "# TYPE gateway_requests_in_flight gauge",
        f"gateway_requests_in_flight {gateway.proxy.in_flight}",
        "# HELP gateway_plugin_stat Numeric figures plugins report in /stats.",
        "# TYPE gateway_plugin_stat gauge",
    ]
    labelled: list[str] = []
    for plugin, figures in (await _plugin_stats(gateway)).items():
        for name, value in figures.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                lines.append(f'gateway_plugin_stat{{plugin="{_label(plugin)}",stat="{_label(name)}"}} {value}')
            elif isinstance(value, dict) and "_by_" in name:
                # "detections_by_family": {"pii": 2} -> gateway_<plugin>_detections{family="pii"} 2
                figure, label = name.split("_by_", 1)
                metric = _METRIC_NAME.sub("_", f"gateway_{plugin}_{figure}")
                label = _METRIC_NAME.sub("_", label)
                for key, count in value.items():
                    if isinstance(count, (int, float)) and not isinstance(count, bool):
                        labelled.append(f'{metric}{{{label}="{_label(str(key))}"}} {count}')
    return "\n".join(lines + labelled) + "\n"
