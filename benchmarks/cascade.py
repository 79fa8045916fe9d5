"""What a cascade saves and what it costs in latency, on a mixed workload through the mock.

Why: a cascade is worth it only if the draft answers most requests well enough and
the escalations (two calls instead of one) do not eat the saving. This script sends
a small mixed workload twice through an in-process gateway with the mock provider,
once with ``cascade`` in the chain and once without (every request to the strong
model), and prints acceptance rate, escalations by reason, cost against the
all-strong baseline (from the ``cost`` plugin's prices, when it is installed) and
the latency added, buffered and streamed (time to first token).

The workload: easy questions the draft answers well; questions on which the draft
fails the way small models do (refusing, truncated, broken JSON, unsure), steered
with the mock's ``x-mock-weak-model`` and ``x-mock-weak-answer`` headers; hard
questions the complexity estimate sends straight to the strong model; JSON-mode
requests. The mix is a knob (``--weak-share``), not a claim about real models.

    python -m benchmarks.cascade                 # 200 requests, ~20 s
    python -m benchmarks.cascade --requests 50 --weak-share 0.4

It asserts nothing; it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from gateway.plugins import available
from gateway.testing import run_gateway

DRAFT, STRONG = "gpt-4o-mini", "gpt-4o"
EASY = [
    "What is the capital of France?",
    "Translate 'good morning' into Spanish.",
    "Give me three synonyms for happy.",
    "How many days are there in a leap year?",
    "Write a one-line greeting for a birthday card.",
]
HARD = (
    "Prove step by step that the algorithm terminates, analyze its complexity, and compare the trade-offs "
    "of the two designs in depth. "
)
WEAKNESSES = ("refuse", "truncate", "unsure", "empty")


def workload(count: int, weak_share: float, hard_share: float, json_share: float, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    items = []
    for index in range(count):
        roll = rng.random()
        body: dict[str, Any] = {"model": STRONG, "messages": [{"role": "user", "content": rng.choice(EASY)}]}
        headers: dict[str, str] = {}
        kind = "easy"
        if roll < hard_share:
            body["messages"][0]["content"] = HARD + rng.choice(EASY)
            kind = "hard"
        elif roll < hard_share + json_share:
            body["response_format"] = {"type": "json_object"}
            kind = "json"
            if rng.random() < weak_share:
                headers = {"x-mock-weak-model": DRAFT, "x-mock-weak-answer": "bad-json"}
            else:
                headers = {"x-mock-reply": '{"answer": "ok", "confidence": "high"}'}
        elif rng.random() < weak_share:
            kind = "weak"
            headers = {"x-mock-weak-model": DRAFT, "x-mock-weak-answer": WEAKNESSES[index % len(WEAKNESSES)]}
        items.append({"kind": kind, "body": body, "headers": headers})
    return items


async def run(plugins: list[dict[str, Any]], items: list[dict[str, Any]], stream: bool, directory: Path) -> dict[str, Any]:
    config = {
        "providers": {"mock": {"type": "mock", "mock": {"latency_ms": 20, "ttft_ms": 10, "inter_token_ms": 2}}},
        "plugins": plugins,
    }
    latencies, first_tokens = [], []
    async with run_gateway(config, directory) as gw, aiohttp.ClientSession() as session:
        for item in items:
            body = {**item["body"], "stream": True} if stream else item["body"]
            started = time.perf_counter()
            async with session.post(f"{gw.url}/v1/chat/completions", json=body, headers=item["headers"]) as answer:
                assert answer.status == 200, await answer.text()
                async for _ in answer.content.iter_any():
                    first_tokens.append(time.perf_counter() - started)
                    break
                await answer.read()
            latencies.append(time.perf_counter() - started)
        stats = await (await session.get(f"{gw.admin_url}/stats")).json()
    return {"latencies": latencies, "first": first_tokens, "plugins": stats["plugins"]}


def ms(values: list[float], quantile: float) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(quantile * len(ordered)))] * 1000:.1f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--weak-share", type=float, default=0.25, help="share of requests the draft fails")
    parser.add_argument("--hard-share", type=float, default=0.1, help="share of hard questions")
    parser.add_argument("--json-share", type=float, default=0.15, help="share of JSON-mode requests")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    items = workload(args.requests, args.weak_share, args.hard_share, args.json_share, args.seed)
    with_cost = "cost" in available()
    cost = [{"use": "cost", "config": {"store": "${COST_STORE}"}}] if with_cost else []
    cascade = [{"use": "cascade", "config": {"draft_model": DRAFT, "escalate_model": STRONG}}]
    print(f"workload: {args.requests} requests, {dict(Counter(item['kind'] for item in items))}")
    rows = []
    with tempfile.TemporaryDirectory() as temp:
        os.environ["COST_STORE"] = f"{temp}/usage.db"
        for stream in (False, True):
            for label, plugins in (("strong only", cost), ("cascade", cascade + cost)):
                directory = Path(temp) / f"{label}-{stream}".replace(" ", "-")
                directory.mkdir()
                rows.append((label, stream, await run(plugins, items, stream, directory)))
    print()
    print("| chain | stream | p50 ms | p99 ms | first byte p50 ms | acceptance | escalations by reason | cost USD | all-strong USD |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, stream, result in rows:
        figures = result["plugins"].get("cascade", {})
        spent = result["plugins"].get("cost", {}).get("cost_usd")
        acceptance = f"{figures['acceptance_rate']:.2f}" if figures else "-"
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(figures.get("escalations_by_reason", {}).items())) or "-"
        baseline = f"{figures['baseline_cost_usd']:.6f}" if figures and with_cost else "-"
        print(
            f"| {label} | {'yes' if stream else 'no'} | {ms(result['latencies'], 0.5)} | {ms(result['latencies'], 0.99)} "
            f"| {ms(result['first'], 0.5)} | {acceptance} | {reasons} | {spent if spent is not None else '-'} | {baseline} |"
        )
    if not with_cost:
        print("\n(the cost plugin is not installed: no cost figures)")
    mean = {(label, stream): statistics.mean(result["latencies"]) for label, stream, result in rows}
    for stream in (False, True):
        added = (mean[("cascade", stream)] - mean[("strong only", stream)]) * 1000
        print(f"mean latency added by the cascade, {'streamed' if stream else 'buffered'}: {added:+.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
