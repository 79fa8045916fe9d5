"""Instructions per request, counted by callgrind: the CPU figure a busy machine does not move.

    .venv/bin/python -m benchmarks.instructions                          # pass-through, empty, cache, full
    .venv/bin/python -m benchmarks.instructions empty full scan+cache
    .venv/bin/python -m benchmarks.instructions full full@/path/to/checkout    # A/B of a change
    HIT=1 .venv/bin/python -m benchmarks.instructions cache full         # the fixed request: cache hits

Why: CPU time per request (benchmarks/plugin_cost.py) moves by 10 % and more when another
job shares the machine; the number of instructions the same code runs for the same
requests moves by well under 1 %, whatever else runs, so a change worth a few
microseconds shows. Instructions are not time (a cache miss costs more than an add):
compare versions of one path with this, state what a request costs in CPU time.

Each variant is a process under ``valgrind --tool=callgrind --instr-atstart=no`` in front
of the nginx upstream of benchmarks/overhead.py: ``WARMUP`` requests, then counting on for
``REQUESTS`` requests sent one at a time on one keep-alive connection, then off; the figure
is callgrind's count over them, per request (user-space only: the kernel's share of a
request, its socket calls, is not in it). Variants: ``pass-through``
(benchmarks/passthrough_proxy.py), ``empty``, ``full``, ``a+b`` (the chain of
benchmarks/peers.py reduced to those plugins, as in benchmarks/plugin_cost.py) and
``answer`` (one plugin answering every call at once: the floor under a cache hit), each
optionally ``@DIR``: the ``gateway`` package of another checkout (on PYTHONPATH; the
plugins stay this checkout's). Every request carries a new prompt (a cache miss and a
fresh scan) unless ``HIT=1``. Knobs: ``REQUESTS`` (300), ``WARMUP`` (50), ``BACKEND``
(memory | redis), ``TRACING`` (off | on: always on, exported over OTLP through the batch
processor to the nginx upstream, as in benchmarks/peers.py; the export thread's work is
counted too, callgrind counts every thread | default: no OTEL variable, as out of the
box), ``BY_THREAD=1`` (also each thread's share, from callgrind's ``--separate-threads``:
the event loop's and, traced, the export thread's), ``READY_TIMEOUT`` and the others of
benchmarks/overhead.py. Needs valgrind (Debian package ``valgrind``).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import overhead as oh
from benchmarks import peers as bench
from benchmarks.plugin_cost import plugins_of
from benchmarks.stream_client import letters  # a counter in letters: prompts stay words

DEFAULT_VARIANTS = ("pass-through", "empty", "cache", "full")
COLLECTED = re.compile(r"Collected : (\d+)")
THREAD_TOTAL = re.compile(r"^totals: (\d+)", re.M)


def send(url: str, body: bytes, count: int, unique: bool, start: int) -> None:
    """``count`` requests, one at a time on one connection; each must be answered 200."""
    address = url.split("//", 1)[1].split("/", 1)[0]
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        for index in range(start, start + count):
            payload = body.replace(b"#BENCHSEQ", f"callgrind {letters(index)}".encode()) if unique else body
            connection.request("POST", "/v1/chat/completions", payload, {"Content-Type": "application/json"})
            reply = connection.getresponse()
            reply.read()
            if reply.status != 200:
                raise RuntimeError(f"{url}: status {reply.status}")
    finally:
        connection.close()


def callgrind_control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True)


def main() -> int:
    variants = sys.argv[1:] or list(DEFAULT_VARIANTS)
    requests = bench.env_int("REQUESTS", 300)
    warmup = bench.env_int("WARMUP", 50)
    hit = os.environ.get("HIT") == "1"
    tracing = os.environ.get("TRACING", "off")
    by_thread = os.environ.get("BY_THREAD") == "1"
    knobs = oh.Knobs.from_env()
    oh.ensure_tools()
    if subprocess.run(["which", "valgrind", "callgrind_control"], capture_output=True).returncode:
        raise SystemExit("valgrind is missing: apt-get install -y valgrind")
    processes = oh.Processes(knobs.run_dir)
    peers = bench.Peers(knobs, processes)
    body = (peers.fixed_body if hit else peers.unique_body).read_bytes()
    figures: dict[str, float] = {}
    try:
        peers.base.start_upstreams()
        backend = os.environ.get("BACKEND", "memory")
        if backend == "redis":
            peers.start_redis()
        for variant in variants:
            chain, _, checkout = variant.partition("@")
            name = "instructions-" + re.sub(r"[^a-z0-9]+", "-", variant.lower()).strip("-")
            env = bench.tracing_env(tracing, peers.upstream)
            # the checkout's gateway first; the repository root for benchmarks.trivial_plugin
            code = str(Path(checkout).resolve()) if checkout else ""
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [code, str(oh.ROOT)]))
            if chain == "pass-through":
                command = [sys.executable, "-m", "benchmarks.passthrough_proxy", "--upstream", peers.upstream, "--port", "0"]
            else:
                document = json.loads(oh.gateway_config(peers.upstream, []))
                # its own ledger and Redis keys: a variant must not find another's (an old
                # checkout's schema, a budget already spent)
                document["plugins"] = plugins_of(chain, bench.chain(backend, knobs.run_dir, name, peers.redis_url))
                document["log"] = {"level": "warning"}
                config = knobs.run_dir / f"{name}.yaml"
                config.write_text(json.dumps(document, indent=2) + "\n")
                command = [sys.executable, oh.gateway_command(), "run", "--config", str(config)]
            valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                        f"--callgrind-out-file={knobs.run_dir / name}.callgrind"]  # fmt: skip
            if by_thread:
                valgrind.append("--separate-threads=yes")
            process = processes.start(name, knobs.gw_cpu, valgrind + command, env)
            url = processes.ready_url(name, process, time.monotonic() + max(knobs.ready_timeout, 120))
            send(url, body, warmup, not hit, 0)
            callgrind_control("--instr=on", process.pid)
            send(url, body, requests, not hit, warmup)
            callgrind_control("--instr=off", process.pid)
            processes.stop(process)
            if backend == "redis":
                peers.redis_cli("FLUSHALL")  # the next variant's prompts must miss, as this one's did
            found = COLLECTED.search((knobs.run_dir / f"{name}.log").read_text(errors="replace"))
            if found is None:
                oh.log(f"{variant}: callgrind gave no count")
                continue
            figures[variant] = int(found.group(1)) / requests
            oh.log(f"{variant}: {figures[variant]:,.0f} instructions per request")
            if by_thread:  # one file per thread: NAME.callgrind-01 (the event loop's), -02...
                for part in sorted(knobs.run_dir.glob(f"{name}.callgrind-*")):
                    total = THREAD_TOTAL.search(part.read_text(errors="replace"))
                    if total and int(total.group(1)):
                        thread = part.name.rsplit("-", 1)[1]
                        oh.log(f"{variant}: thread {thread}: {int(total.group(1)) / requests:,.0f} instructions per request")
    finally:
        processes.stop_all()
    floor = figures.get("pass-through")
    print(f"\n### Instructions per request ({'cache hits' if hit else 'a new prompt each'}, {requests} requests "
          f"one at a time, tracing {tracing}; {oh.machine()})\n")  # fmt: skip
    print("| variant | instructions / request | x the pass-through's |")
    print("|---|---:|---:|")
    for variant, count in figures.items():
        ratio = f"{count / floor:.2f}" if floor else "-"
        print(f"| {variant} | {count:,.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
