"""The upstream hop's HTTP client alone: aiohttp's ``ClientSession`` against gateway/upstream.py.

    .venv/bin/python -m benchmarks.upstream_client          # REQUESTS=2000 WARMUP=100

Why: the gateway's own client replaced the session on the data path because of this
figure (docs/performance.md, "The upstream client"). Each client sends the same
chat completion, one at a time on one keep-alive connection, to the nginx upstream of
benchmarks/overhead.py, with the headers the gateway sends, and reads the answer's
headers into a multidict and its body; the client runs in a process of its own under
``valgrind --tool=callgrind`` (counting on only around the measured requests) and
again without it, for CPU time. Prints instructions and CPU microseconds per request.
Needs valgrind and nginx (Debian packages).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from benchmarks import overhead as oh
from benchmarks import peers as bench
from benchmarks.fixtures import REQUEST, compact

BODY = compact(REQUEST)
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench", "x-request-id": "0" * 32}
COLLECTED = re.compile(r"Collected : (\d+)")


async def with_session(url: str, count: int, warmup: int) -> float:
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


async def with_pool(url: str, count: int, warmup: int) -> float:
    from multidict import CIMultiDict

    from gateway.upstream import UpstreamPool

    pool = UpstreamPool(url, limit=100, timeout_s=60)

    async def one() -> None:
        await pool.request("POST", "/v1/chat/completions", CIMultiDict(HEADERS), BODY)

    try:
        return await measured(one, count, warmup)
    finally:
        await pool.close()


async def measured(one: object, count: int, warmup: int) -> float:
    for _ in range(warmup):
        await one()  # type: ignore[operator]
    counting = os.environ.get("UNDER_CALLGRIND") == "1"
    if counting:
        subprocess.run(["callgrind_control", "--instr=on", str(os.getpid())], check=True, capture_output=True)
    started = time.process_time()
    for _ in range(count):
        await one()  # type: ignore[operator]
    spent = time.process_time() - started
    if counting:
        subprocess.run(["callgrind_control", "--instr=off", str(os.getpid())], check=True, capture_output=True)
    return spent / count * 1e6


def child(client: str, url: str, count: int, warmup: int) -> None:
    import uvloop

    run = {"session": with_session, "gateway": with_pool}[client]
    print(f"CPU_US {uvloop.run(run(url, count, warmup)):.1f}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return 0
    count, warmup = bench.env_int("REQUESTS", 2000), bench.env_int("WARMUP", 100)
    knobs = oh.Knobs.from_env()
    oh.ensure_tools()
    processes = oh.Processes(knobs.run_dir)
    base = oh.Bench(knobs, processes)
    rows = []
    try:
        base.start_upstreams()
        for client in ("session", "gateway"):
            argv = [
                sys.executable,
                "-m",
                "benchmarks.upstream_client",
                "--child",
                client,
                base.upstream,
                str(count),
                str(warmup),
            ]
            timed = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
            log_file = knobs.run_dir / f"callgrind-{client}.log"
            subprocess.run(
                ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--log-file={log_file}",
                 f"--callgrind-out-file={knobs.run_dir / client}.callgrind", *argv[:-2], str(count // 4), str(warmup)],
                check=True, capture_output=True, env=dict(os.environ, UNDER_CALLGRIND="1"),
            )  # fmt: skip
            found = COLLECTED.search(log_file.read_text())
            instructions = int(found.group(1)) / (count // 4) if found else float("nan")
            cpu = float(timed.split("CPU_US ", 1)[1].split()[0])
            rows.append((client, instructions, cpu))
            oh.log(f"{client}: {instructions:,.0f} instructions, {cpu:.1f} us CPU a request")
    finally:
        processes.stop_all()
    print(
        f"\n### The upstream client alone ({count} requests one at a time, {count // 4} under callgrind; {oh.machine()})\n"
    )
    print("| client | instructions / request | CPU µs / request |")
    print("|---|---:|---:|")
    names = {"session": "aiohttp `ClientSession`", "gateway": "`gateway.upstream.UpstreamPool`"}
    for client, instructions, cpu in rows:
        print(f"| {names[client]} | {instructions:,.0f} | {cpu:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
