"""What each plugin of the full chain costs inside a real gateway, in CPU per request.

    .venv/bin/python -m benchmarks.plugin_cost                    # empty, each plugin alone, the full chain
    .venv/bin/python -m benchmarks.plugin_cost empty full scan+cache
    HIT=1 .venv/bin/python -m benchmarks.plugin_cost             # the fixed request: cache hits
    TRACING=on .venv/bin/python -m benchmarks.plugin_cost empty full   # always-on tracing, OTLP export
    .venv/bin/python -m benchmarks.plugin_cost empty empty@/tmp/old     # A/B: /tmp/old first on PYTHONPATH

Why: a plugin's micro-benchmark (benchmarks/cost.py, cache_bench.py...) times its hooks
in a hot loop; inside the server the same hooks cost two to three times that (the
proxy's own work evicts them from the CPU caches between requests), and that is what
requests per second pay. Each variant here is a ``gateway run`` process with the chain
of benchmarks/peers.py's memory+SQLite target reduced to the named plugins (``empty``:
none; ``full``: all; ``a+b``: those), pinned to ``GW_CPU`` in front of the same nginx
upstream. All variants run at once and are measured in interleaved rounds (wrk at
c=32 on ``LOAD_CPU``, a new prompt every request unless ``HIT=1``); the figure is the
process's CPU time (every thread: the cost ledger's writer too) per answer, the
figure another job on the machine disturbs least. A plugin's cost is its variant's
figure minus ``empty``'s. ``variant@DIR`` runs that chain with ``DIR`` first on
``PYTHONPATH`` (a directory holding ``gateway`` and ``gateway_plugins`` of another
commit), so a change is A/B-measured in the same interleaved rounds. Knobs: ``ROUNDS``
(4), ``SECONDS`` (4), ``BACKEND`` (memory | redis), ``TRACING`` (off | on | default | off,on:
each variant with tracing sampled off and/or always on, exported as in
benchmarks/peers.py; ``default``: no OTEL variable, as a gateway runs out of the box),
``OTLP_PROTOCOL`` and those of benchmarks/overhead.py.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import time
from typing import Any

from benchmarks import overhead as oh
from benchmarks import peers as bench
from benchmarks.fixtures import rotated

DEFAULT_VARIANTS = ("empty", "scan", "ratelimit", "cache", "cost", "breaker", "full")


def plugins_of(variant: str, full: list[dict]) -> list[dict]:
    if variant == "empty":
        return []
    if variant == "full":
        return full
    if variant == "answer":  # a plugin answering at once: the gateway's floor under a cache hit
        return [{"use": "benchmarks.trivial_plugin:FixedAnswer"}]
    wanted = set(variant.split("+"))
    unknown = wanted - {plugin["use"] for plugin in full}
    if unknown:
        raise SystemExit(f"not in the full chain: {', '.join(sorted(unknown))}")
    return [plugin for plugin in full if plugin["use"] in wanted]


def pinned_peers() -> bench.Peers:
    """The knobs from the environment, the tools checked, this script on ``LOAD_CPU``: what
    starts the upstreams, redis-server and the gateways (each on its ``start_*``)."""
    knobs = oh.Knobs.from_env()
    oh.ensure_tools()
    os.sched_setaffinity(0, {knobs.load_cpu})
    return bench.Peers(knobs, oh.Processes(knobs.run_dir))


def start_variant(peers: bench.Peers, variant: str, tracing: str, upstream: str) -> tuple[Any, str]:
    """A ``gateway run`` of ``variant``'s chain (``chain[@DIR]``) in front of ``upstream``, pinned to
    ``GW_CPU``: (its process, its URL) once it is ready."""
    knobs, processes = peers.knobs, peers.processes
    chain_name, _, code = variant.partition("@")
    name = f"variant-{re.sub(r'[^a-z0-9]+', '-', variant.lower())}-tracing-{tracing}"
    document = json.loads(oh.gateway_config(upstream, []))
    # its own ledger and Redis keys: a variant must not find another's (an old
    # checkout's schema, a budget already spent)
    full = bench.chain(os.environ.get("BACKEND", "memory"), knobs.run_dir, name, peers.redis_url)
    document["plugins"] = plugins_of(chain_name, full)
    document["log"] = {"level": "warning"}
    config = knobs.run_dir / f"{name}.yaml"
    config.write_text(json.dumps(document, indent=2) + "\n")
    env = bench.tracing_env(tracing, peers.upstream)
    # the checkout's code first; the repository root for benchmarks.trivial_plugin (``answer``)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [code, str(oh.ROOT), env.get("PYTHONPATH")]))
    process = processes.start(name, knobs.gw_cpu, [oh.gateway_command(), "run", "--config", str(config)], env)
    return process, processes.ready_url(name, process, time.monotonic() + knobs.ready_timeout)


def main() -> int:
    variants = sys.argv[1:] or list(DEFAULT_VARIANTS)
    rounds = bench.env_int("ROUNDS", 4)
    seconds = bench.env_int("SECONDS", 4)
    hit = os.environ.get("HIT") == "1"
    tracings = [part.strip() for part in os.environ.get("TRACING", "off").split(",") if part.strip()]
    if not tracings or set(tracings) - {"off", "on", "default"}:
        raise SystemExit("TRACING must list off, on and/or default")
    peers = pinned_peers()
    knobs, processes = peers.knobs, peers.processes
    try:
        peers.base.start_upstreams()
        peers.start_redis()
        targets = []
        for variant, tracing in [(variant, tracing) for variant in variants for tracing in tracings]:
            if variant == "pass-through":
                if tracing != tracings[0]:
                    continue
                argv = [sys.executable, "-m", "benchmarks.passthrough_proxy", "--upstream", peers.upstream]
                process = processes.start("pass-through", knobs.gw_cpu, argv)
                url = processes.ready_url("pass-through", process, time.monotonic() + knobs.ready_timeout)
                target = bench.Target(variant, kind="pass-through", unique=not hit, streams=False)
                target.url, target.process = url + "/v1/chat/completions", process
                targets.append(target)
                continue
            process, url = start_variant(peers, variant, tracing, peers.upstream)
            target = bench.Target(variant, tracing, kind="gateway", unique=not hit, streams=False)
            target.url, target.process = url + "/v1/chat/completions", process
            targets.append(target)
        for target in targets:
            peers.wrk(target, knobs.conc, knobs.warmup, "warmup")
        for index in range(rounds):
            for target in rotated(targets, index):
                result = peers.wrk(target, knobs.conc, seconds, f"round{index + 1}")
                if result is not None and "cpu_us" in result:
                    target.wrk.setdefault(knobs.conc, []).append(result)
    finally:
        processes.stop_all()
    base = next((t for t in targets if t.name == "empty" and t.tracing == "off" and t.wrk), None)
    base = base or next((t for t in targets if t.name == "empty" and t.wrk), None)
    base_cpu = statistics.median(r["cpu_us"] for r in base.wrk[knobs.conc]) if base else None
    floor = next((t for t in targets if t.kind == "pass-through" and t.wrk), None)
    floor_cpu = statistics.median(r["cpu_us"] for r in floor.wrk[knobs.conc]) if floor else None
    print(f"\n### CPU per request by chain ({'cache hits' if hit else 'cache misses'}, c={knobs.conc}, "
          f"{rounds} interleaved rounds of {seconds} s; {oh.machine()})\n")  # fmt: skip
    # At one saturated core, req/s is the inverse of CPU per request: the pass-through's
    # CPU over a chain's is the req/s ratio the chain would reach on an idle core.
    print(
        "| chain | CPU µs/req (median) | of which system | beyond the empty chain | x pass-through (by CPU) "
        "| per round | req/s (median) |"
    )
    print("|---|---:|---:|---:|---:|---|---:|")
    for target in targets:
        results = target.wrk.get(knobs.conc) or []
        if not results:
            print(f"| {target.label} | NOT MEASURED ||||||")
            continue
        cpu = statistics.median(r["cpu_us"] for r in results)
        beyond = (
            f"{cpu - base_cpu:+.0f}" if base_cpu is not None and target is not base and target is not floor else "-"
        )
        ratio = f"{floor_cpu / cpu:.2f}x" if floor_cpu is not None else "-"
        rounds_text = " ".join(f"{r['cpu_us']:.0f}" for r in results)
        rps = statistics.median(r["rps"] for r in results)
        system = statistics.median(r.get("sys_us", float("nan")) for r in results)
        print(f"| {target.label} | {cpu:.0f} | {system:.0f} | {beyond} | {ratio} | {rounds_text} | {rps:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
