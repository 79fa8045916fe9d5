"""What the cost plugin adds per request, hook by hook, on this machine.

Why: the plugin runs on every call (request, response, complete, and chunk for each
streamed event); its budget is tens of microseconds per request. This script calls
the hooks in-process on exchanges built like the proxy builds them (no sockets,
no spans), the ledger writing to a real SQLite file on its own thread, and prints
microseconds per call (median of rounds). It asserts nothing.

    python benchmarks/cost.py            # ~40 s
    ROUNDS=5 N=20000 python benchmarks/cost.py

It also prints the ledger writer's CPU per record as the table grows (the thread shares
the gateway's core), with the schema as shipped and with an index on ``request_id``
added, the one the ledger used to create.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from gateway.exchange import Exchange, Response, StreamEvent, carries_usage, usage_details
from gateway_plugins.cost import Config, Cost
from gateway_plugins.cost.ledger import Ledger, connect, open_database

N = int(os.environ.get("N", "10000"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
BODY = msgspec.json.encode({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there, how are you?"}]})
ANSWER = msgspec.json.encode(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Fine."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 0}},
    }
)
CHUNK = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":" word"},"finish_reason":null}],"usage":null}\n\n'
USAGE_EVENT = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}\n\n'


class _Provider:
    name = "mock"
    type = "mock"


def exchange() -> Exchange:
    ex = Exchange(None, method="POST", path="/v1/chat/completions", headers={"Content-Type": "application/json"}, body=BODY, caller="bench")
    ex.provider = _Provider()  # type: ignore[assignment]
    ex.attempts = 1
    return ex


async def per_call_us(make: Callable[[], Awaitable[Any]]) -> float:
    rounds = []
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(N):
            await make()
        rounds.append((time.process_time() - started) / N * 1e6)
    return statistics.median(rounds)


async def main() -> None:
    directory = tempfile.mkdtemp(prefix="cost-bench-")
    results: list[tuple[str, float]] = []
    for label, options in (
        ("no budget", {}),
        ("budget (memory)", {"budget_usd_per_day": 1e9}),
    ):
        plugin = Cost(Config(store=os.path.join(directory, f"{len(results)}.db"), estimate=False, **options))
        await plugin.startup(type("G", (), {"tracer": None})())  # type: ignore[arg-type]

        async def buffered(plugin: Cost = plugin) -> None:
            ex = exchange()
            ex.json()  # decoded once per request by whoever asks first; not the plugin's cost
            await plugin.request(ex)
            response = Response(200, {"Content-Type": "application/json"}, ANSWER)
            await plugin.response(ex, response)
            ex.response = response
            await plugin.complete(ex)

        results.append((f"buffered call, request+response+complete, {label}", await per_call_us(buffered)))
        await plugin.shutdown(None)
    plugin = Cost(Config(store=os.path.join(directory, "stream.db"), estimate=False))
    await plugin.startup(type("G", (), {"tracer": None})())  # type: ignore[arg-type]
    ex = exchange()
    await plugin.request(ex)

    async def chunk() -> None:
        event = StreamEvent(CHUNK)
        if carries_usage(event.raw):
            ex.add_usage(*usage_details(event.json()))
        await plugin.chunk(ex, event)

    results.append(("chunk hook, one content event (with the core's usage check)", await per_call_us(chunk)))

    async def usage_event() -> None:
        event = StreamEvent(USAGE_EVENT)
        if carries_usage(event.raw):
            ex.add_usage(*usage_details(event.json()))

    results.append(("core: the final usage event decoded and read", await per_call_us(usage_event)))
    await plugin.shutdown(None)
    print(f"N={N} ROUNDS={ROUNDS} (median microseconds per call)\n")
    print("| what | us/call |\n|---|---:|")
    for label, value in results:
        print(f"| {label} | {value:.1f} |")
    ledger_growth(directory)


def ledger_growth(directory: str, steps: tuple[int, ...] = (50_000, 150_000)) -> None:
    """CPU per record of the writer thread, writing batches of 500 into a table of a
    growing size; the records' request ids are random, as x-request-id values are."""
    print("\n| ledger writer, CPU per record (us) | " + " | ".join(f"rows {sum(steps[:i])}-{sum(steps[: i + 1])}" for i in range(len(steps))) + " |")  # fmt: skip
    print("|---|" + "---:|" * len(steps))
    for label, index in (("schema as shipped", None), ("+ index on request_id", "CREATE INDEX r ON usage (request_id)")):
        path = os.path.join(directory, f"growth-{bool(index)}.db")
        open_database(path)
        if index:
            connection = connect(path)
            connection.execute(index)
            connection.close()
        ledger = Ledger(path, flush_interval_s=60, batch_size=10**9, max_pending=10**9)
        ledger.start()
        figures = []
        for count in steps:
            per_record = []
            for _batch in range(count // 500):
                for _ in range(500):
                    ledger.put((time.time(), "2026-12-02", os.urandom(16).hex(), "bench", "openai", "gpt-4o-mini",
                                "/v1/chat/completions", 200, 0, 0, 12, 3, 0, 0, 0, 1234, 0, 0, 0, 1.5))  # fmt: skip
                started = time.process_time()  # the loop waits: this is the writer's CPU
                ledger.flush(60)
                per_record.append((time.process_time() - started) / 500 * 1e6)
            figures.append(statistics.median(per_record))
        ledger.close()
        print(f"| {label} | " + " | ".join(f"{value:.1f}" for value in figures) + " |")


if __name__ == "__main__":
    asyncio.run(main())
