"""What the ratelimit plugin costs per request: CPU for the memory backend, round trips for Redis.

Why: the plugin sits on every request, so its hooks must stay within the hot-path
budget (under 20 µs a request for the memory backend), and the Redis backend must
decide in exactly one round trip. This script measures both and prints Markdown
tables; it asserts nothing (see docs/ratelimit.md for a run).

* memory: the ``request`` and ``complete`` hooks called directly, as the chain
  calls them (sampling off), over prepared exchanges from 1000 callers, in CPU
  time of this process (wall time on a shared machine counts other processes' turns), for three
  configs: a request limit only; request and token limits with the body already
  decoded (a plugin before ratelimit read it); the same decoding the body itself.
* redis: the same hooks against a real redis-server (``--redis URL``, else one
  started in a temp dir when ``redis-server`` is on PATH), one decision after the
  other; the commands the server received are counted with ``INFO commandstats``
  (commands a script runs inside Redis are not round trips and are left out).

    python -m benchmarks.ratelimit_bench                 # ~20 s
    python -m benchmarks.ratelimit_bench --requests 20000 --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import msgspec

from gateway import Exchange, Usage
from gateway_plugins.ratelimit import Config, RateLimit

BODY = msgspec.json.encode(
    {
        "model": "gpt-4o-mini",
        "max_tokens": 256,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. " * 8},
            {"role": "user", "content": "Summarise the plot of Hamlet in three sentences, please. " * 4},
        ],
    }
)
HEADERS = {"Content-Type": "application/json"}
CALLERS = 1000
# Generous limits: every request is admitted, so the figures are the common path.
REQUESTS_ONLY = {"requests_per_minute": 10**9}
WITH_TOKENS = {"requests_per_minute": 10**9, "requests_per_hour": 10**10, "tokens_per_minute": 10**7}
# Commands a Lua script runs inside Redis: commandstats counts them, the wire never carries them.
INSIDE_SCRIPTS = {"time", "hmget", "hget", "hset", "pttl", "pexpire"}


def exchanges(count: int, decoded: bool) -> list[Exchange]:
    made = []
    for index in range(count):
        exchange = Exchange(
            None,
            method="POST",
            path="/v1/chat/completions",
            headers=HEADERS,
            body=BODY,
            caller=f"caller-{index % CALLERS}",
        )
        if decoded:
            exchange.json()
        made.append(exchange)
    return made


async def run_hooks(plugin: Any, batch: list[Exchange], clock: Any = time.process_time) -> float:
    """Seconds for request + complete over the batch (usage set as the core would).

    ``clock`` is the process's CPU time for the memory figures: on a shared machine
    wall time also counts the moments other processes had the core."""
    usage = Usage(input_tokens=60, output_tokens=120)
    started = clock()
    for exchange in batch:
        await plugin.request(exchange)
        exchange.usage = usage
        await plugin.complete(exchange)
    return clock() - started


class NoOp:
    """A plugin whose hooks do nothing: the cost of calling two hooks on this machine."""

    async def request(self, exchange: Exchange) -> None:
        return None

    async def complete(self, exchange: Exchange) -> None:
        return None


async def memory_figures(requests: int, rounds: int) -> list[tuple[str, float]]:
    rows = []
    for label, options, decoded in (
        ("(calibration: a plugin whose two hooks do nothing)", None, True),
        ("request limit only", REQUESTS_ONLY, True),
        ("requests + tokens, body already decoded", WITH_TOKENS, True),
        ("requests + tokens, decoding the body", WITH_TOKENS, False),
    ):
        plugin: Any = NoOp() if options is None else RateLimit(msgspec.convert(options, Config))
        await run_hooks(plugin, exchanges(2000, decoded))  # warm up
        best = float("inf")
        for _ in range(rounds):
            batch = exchanges(requests, decoded)
            gc.collect()
            gc.disable()
            try:
                best = min(best, await run_hooks(plugin, batch))
            finally:
                gc.enable()
        rows.append((label, best / requests * 1e6))
    return rows


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH: give --redis URL")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                directory,
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                    break
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.kill()
            process.wait()


async def command_counts(url: str) -> dict[str, int]:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        info = await client.info("commandstats")
    finally:
        await client.aclose()
    return {name.removeprefix("cmdstat_"): figures["calls"] for name, figures in info.items()}


class _Gateway:
    """What ``startup`` reads from the gateway: only its tracer."""

    from opentelemetry.trace import NoOpTracer

    tracer = NoOpTracer()


async def redis_figures(url: str, requests: int) -> list[tuple[str, float, dict[str, float]]]:
    rows = []
    for label, options in (("request limit only", REQUESTS_ONLY), ("requests + tokens", WITH_TOKENS)):
        plugin = RateLimit(msgspec.convert({**options, "backend": url, "probe_interval_s": 3600}, Config))
        await plugin.startup(_Gateway())
        try:
            await run_hooks(plugin, exchanges(200, True))  # warm up: connection, scripts
            batch = exchanges(requests, True)
            before = await command_counts(url)
            seconds = await run_hooks(plugin, batch, time.perf_counter)
            after = await command_counts(url)
        finally:
            await plugin.shutdown(_Gateway())
        wire = {
            name: (after.get(name, 0) - before.get(name, 0)) / requests
            for name in after
            if name not in INSIDE_SCRIPTS and name != "info" and after.get(name, 0) != before.get(name, 0)
        }
        rows.append((label, seconds / requests * 1e6, wire))
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000, help="requests per measurement (memory)")
    parser.add_argument("--redis-requests", type=int, default=3_000, help="requests per measurement (redis)")
    parser.add_argument("--rounds", type=int, default=5, help="memory rounds; the best is shown")
    parser.add_argument("--redis", help="a redis:// URL (default: start a redis-server in a temp dir)")
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args()
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {platform.system()}; loop {type(asyncio.get_running_loop()).__module__}"
    )
    print()
    print(
        f"### memory backend: request + complete hooks, {args.requests} requests from {CALLERS} callers, best of {args.rounds}"
    )
    print()
    print("| config | CPU µs per request |")
    print("|---|---|")
    for label, micros in await memory_figures(args.requests, args.rounds):
        print(f"| {label} | {micros:.2f} |")
    if args.no_redis:
        return
    with contextlib.ExitStack() as stack:
        url = args.redis or stack.enter_context(redis_server())
        rows = await redis_figures(url, args.redis_requests)
    print()
    print(f"### redis backend (loopback): {args.redis_requests} requests, one after the other")
    print()
    print("| config | µs per request (request + complete) | commands on the wire per request |")
    print("|---|---|---|")
    for label, micros, wire in rows:
        commands = ", ".join(f"{name} {per:.3f}" for name, per in sorted(wire.items())) or "none"
        print(f"| {label} | {micros:.0f} | {commands} |")


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    sys.exit(0)
