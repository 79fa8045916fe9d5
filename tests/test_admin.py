"""The admin listener: probes, chain, figures, token rule, plugin routes."""

from __future__ import annotations

import asyncio
import subprocess

import aiohttp
from aiohttp import web

from gateway import hookimpl
from gateway.testing import run_gateway, write_config

from helpers_lifecycle import child_env, gateway_command, loopback_config, start_gateway

CHAT = [{"role": "user", "content": "hello"}]


class Backend:
    """A plugin with a backend that can be down, figures and an admin route."""

    up = True

    @hookimpl
    def ready(self) -> bool:
        return Backend.up

    @hookimpl
    async def stats(self) -> dict:
        return {"hits": 3, "hit_rate": 0.75}

    @hookimpl
    def admin_routes(self, gateway):
        async def flush(request: web.Request) -> web.Response:
            return web.json_response({"flushed": True})

        return [web.delete("/backend", flush)]


async def _get(url, token=None, method="GET"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, headers=headers) as reply:
            text = await reply.text()
            return reply.status, (await reply.json() if reply.content_type == "application/json" else text)


async def test_probes_chain_stats_and_metrics(tmp_path):
    config = {"providers": {"mock": {"type": "mock"}}, "plugins": [{"use": "test_admin:Backend", "name": "backend"}]}
    async with run_gateway(config, tmp_path) as gw:
        await gw.openai().chat.completions.create(model="m", messages=CHAT)
        assert await _get(gw.admin_url + "/healthz") == (200, {"status": "ok"})
        assert await _get(gw.admin_url + "/readyz") == (200, {"status": "ready", "checks": {"backend": True}})
        Backend.up = False
        try:
            status, body = await _get(gw.admin_url + "/readyz")
        finally:
            Backend.up = True
        assert status == 503 and body["status"] == "backend unavailable"
        status, plugins = await _get(gw.admin_url + "/plugins")
        assert plugins["plugins"][0]["name"] == "backend"
        assert plugins["plugins"][0]["hooks"] == ["admin_routes", "stats", "ready"]
        status, stats = await _get(gw.admin_url + "/stats")
        assert stats["requests"] == 1 and stats["in_flight"] == 0
        assert stats["by_status"] == {"200": 1}
        assert stats["by_provider"] == {"mock": 1}
        assert stats["plugins"]["backend"] == {"failures": 0, "hits": 3, "hit_rate": 0.75}
        status, metrics = await _get(gw.admin_url + "/metrics")
        assert 'gateway_requests_total{model="m",provider="mock",route="/v1/chat/completions",status="200"} 1.0' in metrics
        assert "gateway_backend_hit_rate 0.75" in metrics
        assert await _get(gw.admin_url + "/backend", method="DELETE") == (200, {"flushed": True})


async def test_admin_token_guards_everything_but_probes_and_metrics(tmp_path):
    config = {
        "providers": {"mock": {"type": "mock"}},
        "admin": {"token": "adm-secret"},
        "plugins": [{"use": "test_admin:Backend"}],
    }
    async with run_gateway(config, tmp_path) as gw:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await _get(gw.admin_url + path))[0] == 200
        for path in ("/plugins", "/stats"):
            status, body = await _get(gw.admin_url + path)
            assert status == 401 and body["error"]["code"] == "invalid_api_key"
            assert (await _get(gw.admin_url + path, token="wrong"))[0] == 401
            assert (await _get(gw.admin_url + path, token="adm-secret"))[0] == 200
        assert (await _get(gw.admin_url + "/backend", method="DELETE"))[0] == 401
        assert (await _get(gw.admin_url + "/backend", token="adm-secret", method="DELETE"))[0] == 200
        async with aiohttp.ClientSession() as session:
            for header, status in (("bearer adm-secret", 200), ("Basic adm-secret", 401), ("adm-secret", 401)):
                async with session.get(gw.admin_url + "/stats", headers={"Authorization": header}) as reply:
                    assert reply.status == status, header


async def test_readyz_is_503_while_draining(tmp_path):
    async with run_gateway({"providers": {"mock": {"type": "mock"}}}, tmp_path) as gw:
        gw.gateway.draining = True
        status, body = await _get(gw.admin_url + "/readyz")
    assert (status, body["status"]) == (503, "draining")


async def test_readyz_is_503_until_the_gateway_has_started(tmp_path):
    from gateway.admin import admin_app
    from gateway.app import Gateway
    from gateway.config import load
    from gateway.testing import serve_app, write_config

    gateway = Gateway(load(str(write_config({"providers": {"mock": {"type": "mock"}}}, tmp_path))))
    async with serve_app(admin_app(gateway)) as admin_url:
        status, body = await _get(admin_url + "/readyz")
        assert (status, body["status"]) == (503, "starting")
        assert (await _get(admin_url + "/healthz"))[0] == 200  # alive while starting
        await gateway.start()
        try:
            assert (await _get(admin_url + "/readyz"))[0] == 200
        finally:
            await gateway.stop()


async def _runtime(admin_url: str) -> tuple[int, int]:
    """(in_flight, runtime.tasks) from /stats."""
    status, stats = await _get(admin_url + "/stats")
    assert status == 200
    return stats["in_flight"], stats["runtime"]["tasks"]


async def _settled(condition, within_s: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + within_s
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_stats_counts_the_processs_asyncio_tasks_up_while_requests_hang_and_back_down_after(tmp_path):
    # a process of its own, so the figure holds the gateway's tasks and none of the test's
    async with start_gateway(loopback_config(), tmp_path) as gw:
        in_flight, idle = await _runtime(gw.admin_url)
        assert in_flight == 0 and idle >= 1  # the call that reads it runs in a task too
        host, port = gw.url.removeprefix("http://").split(":")
        body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
        hung = []
        for _ in range(6):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"x-mock-hang: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            hung.append(writer)

        async def all_hanging() -> bool:
            return (await _runtime(gw.admin_url))[0] == 6

        assert await _settled(all_hanging)
        _, busy = await _runtime(gw.admin_url)
        assert busy >= idle + 6  # at least a task per request held open
        for writer in hung:
            writer.transport.abort()

        async def back_to_idle() -> bool:
            in_flight, tasks = await _runtime(gw.admin_url)
            return in_flight == 0 and tasks <= idle

        assert await _settled(back_to_idle), await _runtime(gw.admin_url)


async def test_metrics_carry_the_asyncio_task_count(tmp_path):
    async with run_gateway({"providers": {"mock": {"type": "mock"}}}, tmp_path) as gw:
        _, metrics = await _get(gw.admin_url + "/metrics")
    lines = [line for line in metrics.splitlines() if line.startswith("gateway_asyncio_tasks ")]
    assert len(lines) == 1 and float(lines[0].split()[1]) >= 1


class Broken:
    """A plugin whose admin route raises."""

    @hookimpl
    def admin_routes(self, gateway):
        async def explode(request: web.Request) -> web.Response:
            raise RuntimeError("the plugin's route is broken")

        return [web.get("/broken", explode)]


async def test_a_plugin_admin_route_that_raises_is_a_json_500_plugin_error(tmp_path):
    # Before: aiohttp's plain-text "500 Internal Server Error / Server got itself in trouble".
    config = {"providers": {"mock": {"type": "mock"}}, "plugins": [{"use": "test_admin:Broken"}]}
    async with run_gateway(config, tmp_path) as gw:
        status, body = await _get(gw.admin_url + "/broken")
        assert await _get(gw.admin_url + "/healthz") == (200, {"status": "ok"})
    assert status == 500
    assert body["error"]["code"] == "plugin_error" and "broken" not in body["error"]["message"]


FAILS_TO_START = """
from gateway import hookimpl


class FailsToStart:
    @hookimpl
    async def startup(self, gateway):
        raise RuntimeError(f"cannot log in with {gateway.config.providers['mock'].api_key}")
"""


def test_a_startup_failure_quoting_a_key_never_prints_it(tmp_path):
    # Before: the last line on stderr was "gateway: plugin ... failed to start: <its text>", key and all.
    key = "sk-provider-STARTUP-SECRET-1"
    (tmp_path / "fails_to_start.py").write_text(FAILS_TO_START)
    config = loopback_config(plugins=[{"use": "fails_to_start:FailsToStart"}])
    config["providers"]["mock"]["api_key"] = key
    path = write_config(config, tmp_path)
    done = subprocess.run(
        gateway_command("run", "--config", str(path)), cwd=tmp_path, env=child_env(), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "failed to start" in done.stderr and "[REDACTED]" in done.stderr
    assert key not in done.stderr + done.stdout
