"""Shared fixtures: a mock provider over real HTTP, example plugins, entry points."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from gateway.mock_upstream import MockUpstream
from gateway.testing import serve_app

from redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
# The example plugin is an ordinary module; tests import it as `model_aliases`.
sys.path.insert(0, str(ROOT / "examples" / "model_aliases"))


@pytest.fixture
async def mock_http_upstream():
    """The built-in mock provider served over loopback HTTP; yields its base URL."""
    async with serve_app(MockUpstream().web_app()) as url:
        yield url


@pytest.fixture
def entry_point(tmp_path, monkeypatch):
    """Install a plugin entry point for the test: a real .dist-info on sys.path."""

    def install(name: str, target: str) -> None:
        dist = tmp_path / "site" / f"test_plugin_{name.replace('-', '_')}-1.0.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: test-plugin-{name}\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(f"[gateway.plugins]\n{name} = {target}\n")
        monkeypatch.syspath_prepend(str(tmp_path / "site"))

    return install


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a free port, killed after the test; ``.url`` is redis://..."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def no_network(monkeypatch):
    """Every way out to the network refuses: for what must work offline (the scan models)."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted during an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
