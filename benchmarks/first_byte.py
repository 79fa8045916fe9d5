"""A stream's first byte through each plugin's chain, one request at a time: where the time goes.

    .venv/bin/python -m benchmarks.first_byte                  # empty, each plugin alone, the full chain
    .venv/bin/python -m benchmarks.first_byte empty scan full  # chains as in benchmarks/plugin_cost.py
    BACKEND=redis .venv/bin/python -m benchmarks.first_byte empty full

Why: the issue asks for a stream's time to first byte within 1 ms of the upstream's, and
benchmarks/peers.py measures it one request at a time: every request then finds its gateway
idle and its core's caches filled by whatever ran in between, so a chain costs there several
times what it costs at c=32 (docs/performance.md, "Time to first byte, one stream at a time").
This splits that figure by plugin.

How: each variant is a ``gateway run`` of that chain (benchmarks/plugin_cost.py's variants,
tracing sampled off) pinned to ``GW_CPU`` in front of the streaming upstream of
benchmarks/overhead.py; benchmarks/stream_client.py on ``LOAD_CPU`` sends ``STREAM_REQUESTS``
requests to each, one at a time and each to the next variant in turn, a new prompt every time.
Per variant: the median of the gateway's own time before the answer's headers (its
``Server-Timing: gateway;dur=``, which for a stream is the request side: the hooks before the
provider is called) and of the time to first content beyond the upstream's. Knobs:
``STREAM_REQUESTS`` (200), ``STREAM_WARMUP`` (20), ``BACKEND`` (memory | redis) and those of
benchmarks/overhead.py.
"""

from __future__ import annotations

import json
import os
import re
import sys

from benchmarks import overhead as oh
from benchmarks.plugin_cost import DEFAULT_VARIANTS, pinned_peers, start_variant

CHAT = "/v1/chat/completions"


def main() -> int:
    variants = sys.argv[1:] or list(DEFAULT_VARIANTS)
    peers = pinned_peers()
    knobs, processes = peers.knobs, peers.processes
    try:
        peers.base.start_upstreams()
        peers.start_redis()
        upstream = peers.base.stream_upstream
        targets = [f"direct={upstream}{CHAT}"]
        for variant in variants:
            _process, url = start_variant(peers, variant, "off", upstream)
            targets.append(f"{variant}={url}{CHAT}")
        argv = [sys.executable, "-m", "benchmarks.stream_client", "--unique", "--requests",
                str(knobs.stream_requests), "--warmup", str(knobs.stream_warmup), *targets]  # fmt: skip
        budget = (knobs.stream_requests + knobs.stream_warmup) * len(targets) * 2 + 60
        out = processes.run("stream-client", knobs.load_cpu, argv, timeout=budget)
    finally:
        processes.stop_all()
    results = {r["name"]: r for r in map(json.loads, re.findall(r"^STREAMJSON (.*)$", out, re.MULTILINE))}
    direct = results.get("direct", {}).get("ttfb_p50_ms")
    print(f"\n### A stream's first byte by chain ({knobs.stream_requests} streams each, one at a time, "
          f"{os.environ.get('BACKEND', 'memory')} backends; {oh.machine()})\n")  # fmt: skip
    print("| chain | gateway's time before the provider, p50 ms | TTFB p50 - direct, ms |")
    print("|---|---:|---:|")
    for variant in variants:
        result = results.get(variant)
        if not result or result["gateway_p50_ms"] is None or result["ttfb_p50_ms"] is None or direct is None:
            print(f"| {variant} | NOT MEASURED ({result['statuses'] if result else 'no result'}) | |")
            continue
        print(f"| {variant} | {result['gateway_p50_ms']:.3f} | {result['ttfb_p50_ms'] - direct:+.2f} |")
    print(f"\nraw data: {knobs.run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
