"""A test kit for the gateway and for plugin authors: real gateways on loopback.

```python
from gateway.testing import run_gateway

async def test_my_plugin(tmp_path):
    config = {"providers": {"mock": {"type": "mock"}}, "plugins": [{"use": "my_pkg:MyPlugin"}]}
    async with run_gateway(config, tmp_path) as gw:
        reply = await gw.openai().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert gw.spans_named("my-plugin request")
```

The config goes through a real file and :func:`gateway.config.load`, the gateway
serves both listeners on free loopback ports, and every span lands in an in-memory
exporter. The ``openai`` and ``anthropic`` SDKs are imported only when asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import DEFAULT_ON, Sampler

from gateway.admin import admin_app
from gateway.app import Gateway
from gateway.config import load


class RunningGateway:
    """A started gateway: its URLs, the Gateway object, and the spans it made."""

    def __init__(self, gateway: Gateway, url: str, admin_url: str, exporter: InMemorySpanExporter) -> None:
        self.gateway = gateway
        self.url = url
        self.admin_url = admin_url
        self.exporter = exporter
        self.clients: list[Any] = []

    def openai(self, api_key: str = "sk-caller", **kwargs: Any) -> Any:
        """An ``openai.AsyncOpenAI`` for this gateway (no retries), closed with it."""
        import openai

        client = openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, **kwargs)
        self.clients.append(client)
        return client

    def anthropic(self, api_key: str = "sk-ant-caller", **kwargs: Any) -> Any:
        """An ``anthropic.AsyncAnthropic`` for this gateway (no retries), closed with it."""
        import anthropic

        client = anthropic.AsyncAnthropic(base_url=self.url, api_key=api_key, max_retries=0, **kwargs)
        self.clients.append(client)
        return client

    async def close_clients(self) -> None:
        for client in self.clients:
            await client.close()

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def spans_named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans() if span.name == name]


def write_config(config: dict[str, Any] | str, directory: Path, name: str = "gateway.yaml") -> Path:
    """A config file from a dict (encoded as YAML) or from YAML text."""
    path = directory / name
    path.write_bytes(msgspec.yaml.encode(config) if isinstance(config, dict) else config.encode())
    return path


@contextlib.asynccontextmanager
async def run_gateway(
    config: dict[str, Any] | str | Path,
    directory: Path | None = None,
    *,
    environ: dict[str, str] | None = None,
    sampler: Sampler | None = None,
) -> AsyncIterator[RunningGateway]:
    """Serve a gateway for the body of the ``async with``; drain and stop it after.

    Every span is sampled (parentbased_always_on) unless ``sampler`` says otherwise."""
    if not isinstance(config, Path):
        if directory is None:
            raise ValueError("a config given as data needs a directory to write it to")
        config = write_config(config, directory)
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=sampler or DEFAULT_ON)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    gateway = Gateway(load(str(config), environ), tracer_provider)
    admin = TestServer(admin_app(gateway), host="127.0.0.1")
    await admin.start_server()
    data: web.ServerRunner | None = None
    try:
        await gateway.start()
        data = web.ServerRunner(gateway.data_server(), shutdown_timeout=gateway.config.shutdown_grace_s)
        await data.setup()
        await web.TCPSite(data, "127.0.0.1", 0).start()
        host, port = data.addresses[0][:2]
        running = RunningGateway(gateway, f"http://{host}:{port}", str(admin.make_url("")).rstrip("/"), exporter)
        try:
            yield running
        finally:
            await running.close_clients()
    finally:
        gateway.draining = True
        if data is not None:
            await data.cleanup()
        if gateway.started:
            await gateway.stop()
        await admin.close()
        tracer_provider.shutdown()


@contextlib.asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    """Serve any aiohttp app (a fake upstream) on a free loopback port; yields its base URL."""
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()
