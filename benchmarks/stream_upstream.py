"""A cheap streaming upstream: waits FIRST_BYTE_MS, then sends the fixed SSE answer.

Every POST gets ``text/event-stream``: after ``--first-byte-ms`` the 9
chat.completion.chunk events of :func:`benchmarks.fixtures.sse_events` and
``data: [DONE]``, ``--chunk-ms`` apart, so that time to first content and total
time through a proxy can be compared with the same figures taken directly.
Prints one ready line (``stream upstream ready on URL``) once it listens.

    python -m benchmarks.stream_upstream --port 0 --first-byte-ms 20 --chunk-ms 5
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

from benchmarks.fixtures import serve_until_signalled, sse_events


def make_app(first_byte_s: float, chunk_s: float) -> web.Application:
    events = sse_events()

    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await out.prepare(request)
        await asyncio.sleep(first_byte_s)
        for index, event in enumerate(events):
            if index:
                await asyncio.sleep(chunk_s)
            await out.write(event)
        await out.write_eof()
        return out

    app = web.Application()
    app.router.add_route("POST", "/{path:.*}", stream)
    return app


async def serve(port: int, first_byte_s: float, chunk_s: float) -> None:
    await serve_until_signalled(
        make_app(first_byte_s, chunk_s), port, lambda bound: f"stream upstream ready on http://127.0.0.1:{bound}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed in the ready line)")
    parser.add_argument("--first-byte-ms", type=float, default=20.0)
    parser.add_argument("--chunk-ms", type=float, default=5.0)
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.port, args.first_byte_ms / 1000, args.chunk_ms / 1000))


if __name__ == "__main__":
    main()
