"""What a cache hit costs and what it buys: hit latency and hit requests/s next to the pass-through.

Why: a hit must be cheaper than forwarding, or the cache only saves money. The
issue's targets: a memory hit adds under 0.2 ms at p50 (c=1) over an upstream that
answers instantly (nginx), and serves at least twice the pass-through's requests/s
(c=32). This script measures both on this machine with the overhead harness
(:mod:`benchmarks.overhead`: same pinning, nginx upstream, wrk, request), plus the
in-process figures: the key of a 4 KB body, and the cache's hooks on a hit and a miss.
It asserts nothing.

Targets (each a process pinned to ``GW_CPU``; wrk and nginx on ``LOAD_CPU``):

* ``direct``: nginx returning the fixed chat.completion (the instant upstream),
* ``pass-through``: :mod:`benchmarks.passthrough_proxy`, the floor of any aiohttp proxy,
* ``gateway empty``: ``plugins: []``,
* ``gateway cache hit``: ``plugins: [{use: cache}]``; wrk sends one body, so every
  request after the first is a memory hit,
* ``gateway cache miss``: the same with ``ttl_s: 1e-6``: each lookup misses, the
  upstream is called and the answer stored (at c=32 identical misses in flight
  coalesce, so read its c=1 row),
* ``gateway cache hit, no access log``: the hit with ``log: {access: false}``, as the
  pass-through (which writes nothing a request) and benchmarks/peers.py's gateways
  (``log.level: warning``); every other gateway writes its access line (the default).

Tracing is sampled off (``OTEL_TRACES_SAMPLER=always_off``) as in the headline of
docs/performance.md.

    .venv/bin/python -m benchmarks.cache_bench            # 3 rounds x (5 s at c=32 + 5 s at c=1), ~3 min
    QUICK=1 .venv/bin/python -m benchmarks.cache_bench    # 1 round of 3 s
    ROUNDS=0 .venv/bin/python -m benchmarks.cache_bench   # only the in-process figures

Knobs (env) as :mod:`benchmarks.overhead`: DURATION (here 5), ROUNDS, WARMUP (here 2),
CONC, LOW_CONC, GW_CPU, LOAD_CPU, READY_TIMEOUT, RUN_DIR, QUICK.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import sys
import time
from types import FrameType
from typing import Any

import msgspec
from multidict import CIMultiDict

from benchmarks.fixtures import REQUEST, compact, rotated
from benchmarks.overhead import (
    Bench,
    Knobs,
    Processes,
    Target,
    busy_share,
    ensure_tools,
    figures,
    log,
    machine,
    versions,
    wait_answers,
)

#: the hit again without the access line the gateway writes by default (log.access)
NO_ACCESS_LOG = "gateway cache hit, no access log"
CHAINS = {
    "gateway empty": [],
    "gateway cache hit": [{"use": "cache"}],
    "gateway cache miss": [{"use": "cache", "config": {"ttl_s": 1e-6}}],
}


def body_of_4kb() -> bytes:
    """A chat request of about 4 KB: a system prompt, three turns, a tool."""
    turns = [
        {"role": "system", "content": "You are a careful assistant for an operations team. " * 12},
        {"role": "user", "content": "Summarise the incident report below in five bullet points. " + "log line " * 196},
        {"role": "assistant", "content": "Here is the summary you asked for. " * 20},
        {"role": "user", "content": "Now list the follow-up actions with owners and dates. " * 10},
    ]
    tool = {
        "type": "function",
        "function": {
            "name": "create_ticket",
            "description": "Open a ticket in the tracker",
            "parameters": {"type": "object", "properties": {"title": {"type": "string"}, "owner": {"type": "string"}}},
        },
    }
    document = {"model": "gpt-4o-mini", "messages": turns, "tools": [tool], "temperature": 0.2, "max_tokens": 512}
    return msgspec.json.encode(document)


def per_call_us(function, repeat: int = 5, number: int = 2000) -> float:
    """Median over ``repeat`` runs of the CPU time per call of ``function()``, in microseconds.

    CPU time of this process (``time.process_time``), not wall time: on a shared
    machine the wall clock also counts the time other processes held the core."""
    runs = []
    for _ in range(repeat):
        started = time.process_time()
        for _ in range(number):
            function()
        runs.append((time.process_time() - started) / number * 1e6)
    return statistics.median(runs)


def in_process_figures() -> list[str]:
    """The key of a 4 KB body, and the cache's request+send hooks on a hit and a miss, without sockets."""
    from gateway import Response
    from gateway.exchange import Exchange
    from gateway_plugins.cache import Cache, Config
    from gateway_plugins.cache.keys import request_key

    body = body_of_4kb()
    document = msgspec.json.decode(body)

    def key() -> str:
        return request_key(
            "gateway-cache",
            path="/v1/chat/completions",
            provider="openai",
            api="openai",
            model="gpt-4o-mini",
            document=document,
            caller="frontend",
            headers={},
        )

    decode_us = per_call_us(lambda: msgspec.json.decode(body))
    key_us = per_call_us(key)

    class Provider:
        name = "openai"

    answer = Response.json_response({"id": "x", "object": "chat.completion", "choices": []})
    headers = CIMultiDict({"Content-Type": "application/json"})

    async def upstream(exchange: Exchange) -> Response:
        return answer

    # A miss is a new request each time (a repeated body is a look-up of the cache's decision).
    rounds = 2000
    misses = [body.replace(b"Now list", b"Now %d list" % index) for index in range(rounds)]

    def exchange_of(data: bytes) -> Exchange:
        exchange = Exchange(None, method="POST", path="/v1/chat/completions", headers=headers, body=data)
        exchange.provider = Provider()  # type: ignore[assignment]
        exchange.caller = "frontend"
        return exchange

    async def hooks(plugin: Cache, miss: bool) -> float:
        exchanges = [exchange_of(misses[index] if miss else body) for index in range(rounds)]
        started = time.process_time()
        for exchange in exchanges:
            await plugin.request(exchange)
            await plugin.send(exchange, upstream)
            if miss:
                await plugin.complete(exchange)
        assert all(exchange.cache_status == ("miss" if miss else "hit") for exchange in exchanges)
        return (time.process_time() - started) / rounds * 1e6

    async def measure() -> tuple[float, float]:
        hit_plugin = Cache(Config())
        first = exchange_of(body)  # a miss that stores the entry
        await hit_plugin.request(first)
        await hit_plugin.send(first, upstream)
        await hit_plugin.complete(first)
        hit = []
        miss = []
        for _ in range(5):
            hit.append(await hooks(hit_plugin, miss=False))
            miss.append(await hooks(Cache(Config()), miss=True))
        return statistics.median(hit), statistics.median(miss)

    hit_us, miss_us = asyncio.run(measure())
    return [
        "",
        f"### In process (CPU time of this process, no sockets; request body {len(body)} bytes)",
        "",
        "| what | us per request |",
        "|---|---:|",
        f"| decode the 4 KB body (msgspec; `exchange.json()`, once per request, shared by plugins) | {decode_us:.1f} |",
        f"| the key of the decoded body (drop fields, sorted-keys encoding, SHA-256 to 128 bits) | {key_us:.1f} |",
        f"| cache `request` + `send` on a memory hit: the decision remembered for this body, the lookup, "
        f"the answer (the exchange built beforehand) | {hit_us:.1f} |",
        "| cache `request` + `send` + `complete` on a miss, a new body each time: decode, key, lookup, "
        f"flight, capture, store (an upstream that answers at once) | {miss_us:.1f} |",
    ]


def start(bench: Bench, processes: Processes, knobs: Knobs) -> list[Target]:
    """nginx, the pass-through and the gateways, each checked before it is measured."""
    bench.start_upstreams()
    chat = "/v1/chat/completions"
    targets = [Target("direct", url=bench.upstream + chat), Target("pass-through")]
    targets += [Target(name, "off", chain=chain) for name, chain in CHAINS.items()]
    # As the pass-through, which writes nothing a request (and as benchmarks/peers.py's gateways):
    targets.append(Target(NO_ACCESS_LOG, "off", chain=CHAINS["gateway cache hit"], log={"access": False}))
    deadline = time.monotonic() + knobs.ready_timeout
    launched = []
    for target in targets[1:]:
        argv, env = bench.command(target, target.slug, bench.upstream)
        launched.append((target, processes.start(target.slug, knobs.gw_cpu, argv, env)))
    for target, process in launched:
        try:
            target.url = processes.ready_url(target.slug, process, deadline) + chat
            target.process = process
        except RuntimeError as error:
            target.problem = str(error)
    for target in targets:
        if target.problem is None:
            expect = "x-gateway-cache" if target.chain else None
            target.problem = wait_answers(target.url, deadline, stream=False, expect_header=expect)
        if target.problem:
            log(f"{target.label}: NOT MEASURED: {target.problem}")
    return targets


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc; 0 when unreadable)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(bench: Bench, knobs: Knobs, targets: list[Target]) -> None:
    """wrk rounds; for each proxy, also the CPU time its process spent per request
    (immune to other work on the machine, unlike latency: the figure to read on a busy box)."""
    live = [target for target in targets if target.problem is None]
    for target in live:
        bench.wrk(target, knobs.conc, knobs.warmup, "warmup")
    for round_index in range(knobs.rounds):
        log(f"round {round_index + 1}/{knobs.rounds}")
        for target in rotated(live, round_index):
            for conc, seconds in ((knobs.conc, knobs.duration), (knobs.low_conc, knobs.low_duration)):
                before = cpu_seconds(target.process.pid) if target.process else 0.0
                result = bench.wrk(target, conc, seconds, f"round{round_index + 1}")
                if result is not None:
                    if target.process and result["requests"]:
                        spent = cpu_seconds(target.process.pid) - before
                        result["cpu_us"] = spent / result["requests"] * 1e6
                    target.wrk.setdefault(conc, []).append(result)


def cpu_us(target: Target, conc: int) -> float | None:
    values = [result["cpu_us"] for result in target.wrk.get(conc, []) if "cpu_us" in result]
    return statistics.median(values) if values else None


def hit_targets(
    hit: Target, floor_high: dict[str, Any] | None, direct_low: dict[str, Any] | None, hi: int, lo: int
) -> list[str]:
    """The issue's targets for one hit row: added p50, req/s against the pass-through, CPU at c=lo."""
    hit_high, hit_low = figures(hit, hi), figures(hit, lo)
    if not (hit_high and hit_low and floor_high and direct_low):
        return []
    added = hit_low["p50"] - direct_low["p50"]
    ratio = hit_high["rps"] / floor_high["rps"]
    lines = [
        "",
        f"{hit.label}:",
        f"* memory hit, p50 added at c={lo} over the instant upstream: {added:+.3f} ms "
        f"(target < 0.2 ms: {'met' if added < 0.2 else 'NOT met'})",
        f"* memory hit req/s at c={hi}: {ratio:.2f}x the pass-through's (target >= 2x: {'met' if ratio >= 2 else 'NOT met'})",
    ]
    hit_cpu = cpu_us(hit, lo)
    if hit_cpu is not None:
        lines.append(
            f"* memory hit, gateway CPU per request at c={lo}: {hit_cpu:.0f} us, the latency it adds on an idle "
            f"core (target < 200 us: {'met' if hit_cpu < 200 else 'NOT met'})"
        )
    return lines


def table(knobs: Knobs, targets: list[Target]) -> list[str]:
    hi, lo = knobs.conc, knobs.low_conc
    by_name = {target.name: target for target in targets}
    direct_low = figures(by_name["direct"], lo)
    floor_high = figures(by_name["pass-through"], hi)
    lines = [
        "",
        f"### Over sockets: req/s at c={hi}, latency at c={lo} (median of rounds; ms)",
        "",
        f"| target | req/s c={hi} | x pass-through | p50 c={lo} | p99 c={lo} | added p50 vs direct | "
        f"CPU us/request c={hi} | CPU us/request c={lo} | req/s per round |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for target in targets:
        high, low = figures(target, hi), figures(target, lo)
        if target.problem or high is None or low is None:
            lines.append(f"| {target.label} | NOT MEASURED: {target.problem or 'no wrk result'} ||||||||")
            continue
        ratio = f"{high['rps'] / floor_high['rps']:.2f}x" if floor_high and target.name != "direct" else "-"
        added = f"+{low['p50'] - direct_low['p50']:.3f}" if direct_low and target.name != "direct" else "-"
        per_round = " ".join(f"{result['rps']:.0f}" for result in target.wrk[hi])
        cpu = " | ".join("-" if value is None else f"{value:.0f}" for value in (cpu_us(target, hi), cpu_us(target, lo)))
        lines.append(
            f"| {target.label} | {high['rps']:.0f} | {ratio} | {low['p50']:.3f} | {low['p99']:.3f} | {added} | "
            f"{cpu} | {per_round} |"
        )
    for name in ("gateway cache hit", NO_ACCESS_LOG):
        lines += hit_targets(by_name[name], floor_high, direct_low, hi, lo)
    lines += [
        "",
        "direct: wrk and nginx share one core, so its req/s is the box's, not comparable to a proxy's.",
    ]
    return lines


def main() -> int:
    os.environ.setdefault("DURATION", "5")
    os.environ.setdefault("WARMUP", "2")
    knobs = Knobs.from_env()
    started = time.monotonic()
    lines = [f"## Cache benchmark ({time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC)", "", f"machine: {machine()}"]
    lines += in_process_figures()
    if knobs.rounds:
        ensure_tools()
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setaffinity(0, {knobs.load_cpu})
        busy = busy_share((knobs.gw_cpu, knobs.load_cpu))
        if busy > 0.05:
            log(f"WARNING: the benchmark's cpus are already {busy:.0%} busy: other work will add noise")
        processes = Processes(knobs.run_dir)
        bench = Bench(knobs, processes)

        def interrupted(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, interrupted)
        try:
            targets = start(bench, processes, knobs)
            measure(bench, knobs, targets)
        except KeyboardInterrupt:
            log("interrupted")
            return 130
        finally:
            processes.stop_all()
        lines[2:3] = [
            f"machine: {machine()}; its cpus were {busy:.0%} busy before the run",
            f"proxies pinned to cpu {knobs.gw_cpu}, wrk -t1 and nginx on cpu {knobs.load_cpu}; {versions()}",
            f"{knobs.rounds} round(s) x ({knobs.duration} s at c={knobs.conc} + {knobs.low_duration} s at "
            f"c={knobs.low_conc}), warm-up {knobs.warmup} s; request {len(compact(REQUEST))} bytes; "
            f"tracing sampled off; raw data: {knobs.run_dir}",
        ]
        lines += table(knobs, targets)
    lines.append(f"\n({(time.monotonic() - started) / 60:.1f} min)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
