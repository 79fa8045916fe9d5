"""Gateways and mock upstreams run as real processes (``python -m gateway ...``).

The tests of the command line, the drain and the log and OTLP output need the
process a user runs, not an object inside the test: these helpers start it on free
loopback ports (``listen: "127.0.0.1:0"``), read the ready line to learn the bound
URLs, collect stdout and stderr as they come (so a full pipe never blocks the
gateway), and always reap the process.

The child's environment is the test's minus every ``OTEL_*`` and ``GATEWAY_*``
variable, so a developer's shell cannot steer what a test sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gateway.testing import write_config

READY_LINE = re.compile(
    r"^gateway ready on (?P<url>http://\S+) \(admin (?P<admin>http://\S+)\), "
    r"(?P<plugins>\d+) plugin\(s\), config (?P<config>.+)$"
)
MOCK_READY_LINE = re.compile(r"^mock upstream listening on (?P<url>http://\S+)$")
START_TIMEOUT_S = 15.0


def gateway_command(*args: str) -> list[str]:
    """``python -m gateway ARGS`` with the test's interpreter (the venv's)."""
    return [sys.executable, "-m", "gateway", *args]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "GATEWAY_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def loopback_config(**sections: Any) -> dict[str, Any]:
    """A config that binds free loopback ports and answers from the in-process mock."""
    config: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "providers": {"mock": {"type": "mock"}},
    }
    config.update(sections)
    return config


class Process:
    """A started child: its ready line, and its output so far."""

    def __init__(self, proc: asyncio.subprocess.Process, ready_line: str) -> None:
        self.proc = proc
        self.ready_line = ready_line
        #: stdout lines after the ready line, stderr lines, as they arrive
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers: list[asyncio.Task[None]] = []

    def _collect(self) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            asyncio.create_task(_read_lines(self.proc.stdout, self.stdout)),
            asyncio.create_task(_read_lines(self.proc.stderr, self.stderr)),
        ]

    def send_signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    async def wait(self, timeout_s: float = 10.0) -> int:
        """The exit status, once the process has exited and its output is read."""
        code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        await asyncio.wait_for(asyncio.gather(*self._readers), 5)
        return code

    def log_lines(self) -> list[dict[str, Any]]:
        """Every stderr line, decoded as JSON (fails on a line that is not JSON)."""
        return [json.loads(line) for line in self.stderr if line.strip()]

    async def _reap(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


class GatewayProcess(Process):
    def __init__(self, proc: asyncio.subprocess.Process, ready_line: str) -> None:
        super().__init__(proc, ready_line)
        match = READY_LINE.match(ready_line)
        assert match is not None, f"not a ready line: {ready_line!r}"
        self.url = match["url"]
        self.admin_url = match["admin"]
        self.plugin_count = int(match["plugins"])
        self.config_path = match["config"]
        self.port = int(self.url.rsplit(":", 1)[1])


async def _read_lines(stream: asyncio.StreamReader, into: list[str]) -> None:
    async for line in stream:
        into.append(line.decode(errors="replace").rstrip("\n"))


async def _start(command: list[str], env: dict[str, str] | None, cwd: Path, kind: type[Process]) -> Process:
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env() if env is None else env,
        cwd=cwd,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        first = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    if not first:
        errors = (await proc.stderr.read()).decode(errors="replace")
        await proc.wait()
        raise AssertionError(f"{command} exited {proc.returncode} before it was ready:\n{errors}")
    process = kind(proc, first.decode().rstrip("\n"))
    process._collect()
    return process


@contextlib.asynccontextmanager
async def start_gateway(
    config: dict[str, Any] | str, directory: Path, *, env: dict[str, str] | None = None
) -> AsyncIterator[GatewayProcess]:
    """``python -m gateway run --config FILE``, ready to serve; killed after the block if still alive."""
    path = write_config(config, directory)
    process = await _start(gateway_command("run", "--config", str(path)), env, directory, GatewayProcess)
    assert isinstance(process, GatewayProcess)
    try:
        yield process
    finally:
        await process._reap()


@contextlib.asynccontextmanager
async def start_mock_upstream(directory: Path, *args: str) -> AsyncIterator[tuple[Process, str]]:
    """``python -m gateway mock-upstream --port 0 ARGS``; yields the process and its URL."""
    process = await _start(gateway_command("mock-upstream", "--port", "0", *args), None, directory, Process)
    try:
        match = MOCK_READY_LINE.match(process.ready_line)
        assert match is not None, f"not a ready line: {process.ready_line!r}"
        yield process, match["url"]
    finally:
        await process._reap()


async def port_refuses_connections(port: int, within_s: float = 2.0) -> bool:
    """True once a new TCP connection to 127.0.0.1:PORT is refused (polled). A connect
    reset instead counts too: a connection still in the listener's backlog when it
    closes is reset by the kernel, and it was not accepted either."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except (ConnectionRefusedError, ConnectionResetError):
            return True
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
