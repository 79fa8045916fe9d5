"""The floor for any aiohttp gateway: a reverse proxy that does nothing but relay bytes.

One shared keep-alive ``ClientSession``, uvloop, the request body read as bytes
and sent on, the answer's body (or its SSE stream, chunk by chunk as it arrives)
sent back with its status and content type. No routing, parsing, headers, auth,
logging or tracing: whatever the gateway costs beyond this is the gateway's own.
Prints one ready line (``pass-through ready on URL -> UPSTREAM``) once it listens.

    python -m benchmarks.passthrough_proxy --upstream http://127.0.0.1:18001 --port 0
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web
from yarl import URL

from benchmarks.fixtures import serve_until_signalled

SSE = "text/event-stream"


def make_app(upstream: str) -> web.Application:
    base = upstream.rstrip("/")
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def open_session(app: web.Application) -> None:
        # The gateway's provider pool: 100 keep-alive connections, no total timeout.
        connector = aiohttp.TCPConnector(limit=100)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=60)
        app[session_key] = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)

    async def close_session(app: web.Application) -> None:
        await app[session_key].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        url = URL(base + request.raw_path, encoded=True)
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        async with request.app[session_key].request(request.method, url, data=body, headers=headers) as upstream:
            content_type = upstream.headers.get("Content-Type", "application/octet-stream")
            if upstream.content_type != SSE:
                return web.Response(
                    status=upstream.status, body=await upstream.read(), headers={"Content-Type": content_type}
                )
            out = web.StreamResponse(status=upstream.status, headers={"Content-Type": content_type})
            await out.prepare(request)
            async for data in upstream.content.iter_any():
                await out.write(data)
            await out.write_eof()
            return out

    app = web.Application()
    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_route("*", "/{path:.*}", relay)
    return app


async def serve(upstream: str, port: int) -> None:
    await serve_until_signalled(
        make_app(upstream), port, lambda bound: f"pass-through ready on http://127.0.0.1:{bound} -> {upstream}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="base URL; the request's path and query are appended")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed in the ready line)")
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.upstream, args.port))


if __name__ == "__main__":
    main()
