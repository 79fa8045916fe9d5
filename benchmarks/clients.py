"""The gateway's two clients alone, each against the library client it replaced.

    .venv/bin/python -m benchmarks.clients            # REQUESTS=2000 WARMUP=100

Why: the upstream hop left aiohttp's ``ClientSession`` for gateway/upstream.py, and
the shared Redis connection left redis-py's connection for gateway/redis.py's own
protocol, because of these figures (docs/performance.md, "The upstream client" and
"The Redis connection"). Each client makes the same call, one at a time, in a process
of its own: a chat completion to the nginx upstream of benchmarks/overhead.py (the
gateway's headers; the answer's headers read into a multidict, its body read whole),
or a Lua script call (EVALSHA, one key, one argument) to a local redis-server. Each
runs once for CPU time and once under ``valgrind --tool=callgrind`` (counting on only
around the measured calls) for instructions. Needs valgrind, nginx and redis-server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from benchmarks import overhead as oh
from benchmarks import peers as bench
from benchmarks.fixtures import REQUEST, compact

BODY = compact(REQUEST)
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench", "x-request-id": "0" * 32}
SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
COLLECTED = re.compile(r"Collected : (\d+)")
CLIENTS = {
    "http-session": "HTTP: aiohttp `ClientSession`",
    "http-gateway": "HTTP: `gateway.upstream.UpstreamPool`",
    "redis-py": "Redis: `redis.asyncio.Redis` (script object, hiredis installed)",
    "redis-gateway": "Redis: `gateway.redis` handle",
}

Call = Callable[[], Awaitable[object]]


async def http_session(url: str, count: int, warmup: int) -> float:
    import aiohttp
    from multidict import CIMultiDict
    from yarl import URL

    connector = aiohttp.TCPConnector(limit=100, ttl_dns_cache=300, enable_cleanup_closed=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        target = URL(url + "/v1/chat/completions", encoded=True)

        async def one() -> None:
            reply = await session.request(
                "POST", target, data=BODY, headers=CIMultiDict(HEADERS), allow_redirects=False
            )
            CIMultiDict(reply.headers)
            await reply.read()
            reply.release()

        return await measured(one, count, warmup)


async def http_gateway(url: str, count: int, warmup: int) -> float:
    from multidict import CIMultiDict

    from gateway.upstream import UpstreamPool

    pool = UpstreamPool(url, limit=100, timeout_s=60)
    try:
        return await measured(
            lambda: pool.request("POST", "/v1/chat/completions", CIMultiDict(HEADERS), BODY), count, warmup
        )
    finally:
        await pool.close()


async def redis_py(url: str, count: int, warmup: int) -> float:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    script = client.register_script(SCRIPT)
    try:
        return await measured(lambda: script(keys=["bench"], args=[1]), count, warmup)
    finally:
        await client.aclose()


async def redis_gateway(url: str, count: int, warmup: int) -> float:
    from gateway import redis as shared

    handle = shared.connect(url, timeout_s=5)
    script = handle.script(SCRIPT)
    try:
        return await measured(lambda: script(keys=["bench"], args=[1]), count, warmup)
    finally:
        await handle.close()


async def measured(one: Call, count: int, warmup: int) -> float:
    """CPU microseconds a call over ``count`` calls; under callgrind, counting on around them."""
    for _ in range(warmup):
        await one()
    counting = os.environ.get("UNDER_CALLGRIND") == "1"
    if counting:
        subprocess.run(["callgrind_control", "--instr=on", str(os.getpid())], check=True, capture_output=True)
    started = time.process_time()
    for _ in range(count):
        await one()
    spent = time.process_time() - started
    if counting:
        subprocess.run(["callgrind_control", "--instr=off", str(os.getpid())], check=True, capture_output=True)
    return spent / count * 1e6


RUNS = {
    "http-session": http_session,
    "http-gateway": http_gateway,
    "redis-py": redis_py,
    "redis-gateway": redis_gateway,
}


def child(client: str, url: str, count: int, warmup: int) -> None:
    import uvloop

    print(f"CPU_US {uvloop.run(RUNS[client](url, count, warmup)):.1f}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return 0
    count, warmup = bench.env_int("REQUESTS", 2000), bench.env_int("WARMUP", 100)
    counted = max(count // 4, 1)  # under callgrind: fewer, each 50 times slower
    knobs = oh.Knobs.from_env()
    oh.ensure_tools()
    processes = oh.Processes(knobs.run_dir)
    peers = bench.Peers(knobs, processes)
    rows = []
    try:
        peers.base.start_upstreams()
        peers.start_redis()
        for client in CLIENTS:
            url = peers.base.upstream if client.startswith("http") else peers.redis_url
            argv = [sys.executable, "-m", "benchmarks.clients", "--child", client, url]
            timed = subprocess.run([*argv, str(count), str(warmup)], check=True, capture_output=True, text=True).stdout
            log_file = knobs.run_dir / f"callgrind-{client}.log"
            subprocess.run(
                ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--log-file={log_file}",
                 f"--callgrind-out-file={knobs.run_dir / client}.callgrind", *argv, str(counted), str(warmup)],
                check=True, capture_output=True, env=dict(os.environ, UNDER_CALLGRIND="1"),
            )  # fmt: skip
            found = COLLECTED.search(log_file.read_text())
            instructions = int(found.group(1)) / counted if found else float("nan")
            cpu = float(timed.split("CPU_US ", 1)[1].split()[0])
            rows.append((client, instructions, cpu))
            oh.log(f"{client}: {instructions:,.0f} instructions, {cpu:.1f} us CPU a call")
    finally:
        processes.stop_all()
    print(f"\n### The clients alone ({count} calls one at a time, {counted} under callgrind; {oh.machine()})\n")
    print("| client | instructions / call | CPU µs / call |")
    print("|---|---:|---:|")
    for client, instructions, cpu in rows:
        print(f"| {CLIENTS[client]} | {instructions:,.0f} | {cpu:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
