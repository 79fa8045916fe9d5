"""A bare Redis round trip from this process's core: the floor under a Redis chain's latency.

    taskset -c 0 .venv/bin/python -m benchmarks.redis_rtt --port 6379      # redis-server pinned elsewhere

One connection, one ``PING`` at a time, written as raw RESP (no client library: only
the round trip is timed), after an idle gap of 0 (back to back), 1 and 5 ms: on a VM
an idle vCPU is slow to wake, and a streamed request meets Redis after such a gap.
Prints one ``RTTJSON {...}`` line: per gap, p50 and p90 in µs.

Why: a full chain on Redis makes one pipelined round trip before it calls the
provider (benchmarks/peers.py ``redis`` counts them), so its time to first byte is
the memory chain's plus at least this. benchmarks/peers.py runs it from the gateway's
core (``GW_CPU``) to redis-server's (``LOAD_CPU``) after the streaming test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

GAPS_MS = (0.0, 1.0, 5.0)


async def measure(port: int, pings: int) -> dict[str, dict[str, float]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    figures = {}
    try:
        for gap_ms in GAPS_MS:
            took = []
            for _ in range(pings):
                if gap_ms:
                    await asyncio.sleep(gap_ms / 1000)
                started = time.perf_counter()
                writer.write(b"*1\r\n$4\r\nPING\r\n")
                if await reader.readline() != b"+PONG\r\n":
                    raise SystemExit("redis-server did not answer +PONG")
                took.append((time.perf_counter() - started) * 1e6)
            took.sort()
            figures[f"{gap_ms:g}"] = {"p50_us": round(took[len(took) // 2]), "p90_us": round(took[len(took) * 9 // 10])}
    finally:
        writer.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pings", type=int, default=300, help="round trips per gap")
    args = parser.parse_args()
    import uvloop

    print("RTTJSON " + json.dumps(uvloop.run(measure(args.port, args.pings))))


if __name__ == "__main__":
    main()
