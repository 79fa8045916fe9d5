"""What the breaker plugin costs per request, in microseconds.

Two levels:

* the ``send`` hook alone, around a ``call_next`` that answers at once (no I/O):
  the closed path's overhead over calling ``call_next`` directly, the open
  breaker's short circuit (raising 503 ``circuit_open``), and an open primary
  falling back to a closed backup;
* through a whole gateway on loopback (in-process mock provider, one connection,
  sequential requests, tracing off): the median latency of an answer with and
  without the breaker in the chain, and of an open breaker's 503.

    python benchmarks/breaker_bench.py            # ~1 min
    N=200000 REQUESTS=3000 python benchmarks/breaker_bench.py

It asserts nothing; it prints a Markdown table.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from opentelemetry import trace

from gateway.app import Gateway
from gateway.config import load
from gateway.errors import GatewayError
from gateway.exchange import Exchange, Response
from gateway.testing import run_gateway, write_config

N = int(os.environ.get("N", "100000"))
REQUESTS = int(os.environ.get("REQUESTS", "2000"))
ROUNDS = 5
BODY = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
HEADERS = {"Content-Type": "application/json"}


def build(directory: Path, options: dict) -> tuple[Gateway, object]:
    config = {
        "providers": {"mock": {"type": "mock"}, "backup": {"type": "mock"}},
        "plugins": [{"use": "breaker", "config": options}],
    }
    gateway = Gateway(load(str(write_config(config, directory))), trace.NoOpTracerProvider())
    return gateway, gateway.chain.plugins[0].instance


def exchange_for(gateway: Gateway) -> Exchange:
    exchange = Exchange(None, method="POST", path="/v1/chat/completions", headers=HEADERS, body=BODY)
    exchange.provider = gateway.providers["mock"]
    return exchange


async def interleaved(runs: dict[str, object], n: int) -> dict[str, float]:
    """Median over rounds of the mean µs per ``await run()``; every round runs each in
    turn, so a change in the machine's load hits them all alike."""
    samples: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(ROUNDS):
        for label, run in runs.items():
            gc.collect()
            started = time.perf_counter()
            for _ in range(n):
                await run()  # type: ignore[operator]
            samples[label].append((time.perf_counter() - started) / n * 1e6)
    return {label: statistics.median(values) for label, values in samples.items()}


async def hook_figures(directory: Path) -> list[tuple[str, float]]:
    answer = Response(200, {"Content-Type": "application/json"}, b"{}")

    async def call_next(exchange: Exchange) -> Response:
        return answer

    def setup(options: dict, open_breakers: tuple[str, ...]) -> object:
        gateway, plugin = build(directory, options)
        for name in open_breakers:
            plugin.breakers[name].trip("benchmark")
        exchange = exchange_for(gateway)
        primary = gateway.providers["mock"]

        async def run() -> None:
            exchange.provider = primary
            try:
                await plugin.send(exchange, call_next)
            except GatewayError:
                pass

        return run

    direct_gateway, _ = build(directory, {})
    direct_exchange = exchange_for(direct_gateway)
    primary = direct_gateway.providers["mock"]

    async def direct() -> None:
        direct_exchange.provider = primary
        try:
            await call_next(direct_exchange)
        except GatewayError:
            pass

    fallbacks = {"fallbacks": {"mock": ["backup"]}}
    figures = await interleaved(
        {
            "floor": direct,
            "closed": setup(fallbacks, ()),
            "open": setup({}, ("mock",)),
            "fallback": setup(fallbacks, ("mock",)),
            "all open": setup(fallbacks, ("mock", "backup")),
        },
        N,
    )
    base = figures["floor"]
    return [
        ("`call_next` alone (the floor)", base),
        ("closed breaker: overhead over the floor", figures["closed"] - base),
        ("open breaker, no fallback: 503 `circuit_open` raised", figures["open"] - base),
        ("open primary, served by a closed fallback: overhead", figures["fallback"] - base),
        ("every candidate open (primary + fallback): 503 raised", figures["all open"] - base),
    ]


async def gateway_figures(directory: Path) -> list[tuple[str, float]]:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    plain = {"providers": {"mock": {"type": "mock"}}, "plugins": []}
    with_breaker = {"providers": {"mock": {"type": "mock"}}, "plugins": [{"use": "breaker"}]}
    (directory / "plain").mkdir()
    (directory / "breaker").mkdir()
    (directory / "open").mkdir()
    async with (
        run_gateway(plain, directory / "plain", sampler=ALWAYS_OFF) as gw_plain,
        run_gateway(with_breaker, directory / "breaker", sampler=ALWAYS_OFF) as gw_breaker,
        run_gateway(with_breaker, directory / "open", sampler=ALWAYS_OFF) as gw_open,
        aiohttp.ClientSession() as session,
    ):
        gw_open.gateway.chain.plugins[0].instance.breakers["mock"].trip("benchmark")
        targets = {
            "gateway, no plugin: 200 from the mock": (gw_plain.url, 200),
            "gateway, breaker in the chain: 200 from the mock": (gw_breaker.url, 200),
            "gateway, breaker in the chain: 503 from the open breaker": (gw_open.url, 503),
        }
        for url, status in targets.values():
            await latency(session, url, status, 100)  # warm up
        samples: dict[str, list[float]] = {label: [] for label in targets}
        batch = max(REQUESTS // 10, 1)
        for _ in range(10):
            for label, (url, status) in targets.items():
                samples[label] += await latency(session, url, status, batch)
    return [(label, statistics.median(values)) for label, values in samples.items()]


async def latency(session: aiohttp.ClientSession, url: str, expect: int, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        async with session.post(url + "/v1/chat/completions", data=BODY, headers=HEADERS) as answer:
            await answer.read()
            assert answer.status == expect, answer.status
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


async def main() -> None:
    logging.disable(logging.WARNING)  # the proxy's line per error answer would dominate the 503 figures
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        hooks = await hook_figures(directory)
        whole = await gateway_figures(directory)
    print(f"Python {sys.version.split()[0]}, N={N} hook calls x {ROUNDS} rounds, {REQUESTS} HTTP requests per row\n")
    print("| what | µs per request |")
    print("|---|---|")
    for label, value in hooks:
        print(f"| {label} | {value:.2f} |")
    print("\n| through a whole gateway (loopback, one connection) | median µs |")
    print("|---|---|")
    for label, value in whole:
        print(f"| {label} | {value:.0f} |")


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
