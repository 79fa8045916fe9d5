"""The floor of any aiohttp answer: a bare low-level server returning a fixed chat.completion.

Why: a cache hit is the gateway answering without an upstream; this is what answering
costs aiohttp itself, with no gateway code at all (docs/performance.md compares a
hit's CPU per request with it).

    taskset -c 0 python -m benchmarks.static_server 18999 &
    WRK_BODY_FILE=RUN_DIR/request.json taskset -c 1 wrk -t1 -c32 -d5s -s benchmarks/wrk_peers.lua \\
        http://127.0.0.1:18999/v1/chat/completions
    # CPU per request: utime + stime of the server (/proc/PID/stat) over the requests wrk counted
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

from benchmarks.fixtures import CHAT_COMPLETION, compact

BODY = compact(CHAT_COMPLETION)


async def answer(request: web.BaseRequest) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


async def main(port: int) -> None:
    runner = web.ServerRunner(web.Server(answer))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"ready on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 18999))
