"""Single-flight: concurrent identical misses make one upstream call.

The first request for a key leads: it calls the upstream and publishes what comes
back on a :class:`Flight`. Requests for the same key that arrive meanwhile follow:
they wait for the leader's answer instead of calling. A buffered answer reaches
followers when it arrives; a streamed one event batch by event batch, as the
leader's caller receives it, so a follower's first token is not held back until
the end. A leader that fails before answering sets followers free to call the
upstream themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from gateway.errors import upstream_error
from gateway.exchange import SSEBuffer

PENDING, BUFFERED, STREAMING, DONE, FAILED = range(5)


class Flight:
    """One upstream call that identical requests share while it runs."""

    __slots__ = (
        "state",
        "status",
        "content_type",
        "body",
        "chunks",
        "include_usage",
        "started_at",
        "followers",
        "_changed",
    )

    def __init__(self, include_usage: bool) -> None:
        self.state = PENDING
        self.status = 0
        self.content_type = ""
        self.body = b""
        #: the raw stream so far, as the upstream sent it
        self.chunks: list[bytes] = []
        #: whether the leader's stream carries a usage-only chunk (OpenAI include_usage)
        self.include_usage = include_usage
        self.started_at = time.monotonic()
        self.followers = 0
        self._changed: asyncio.Future[None] | None = None

    # -- the leader publishes ------------------------------------------------------

    def answered(self, status: int, content_type: str, body: bytes) -> None:
        self.status, self.content_type, self.body = status, content_type, body
        self._set(BUFFERED)

    def streaming(self, status: int, content_type: str) -> None:
        self.status, self.content_type = status, content_type
        self._set(STREAMING)

    def push(self, data: bytes) -> None:
        self.chunks.append(data)
        self._notify()

    def finished(self) -> None:
        self._set(DONE)

    def failed(self) -> None:
        if self.state not in (DONE, BUFFERED):
            self._set(FAILED)

    def _set(self, state: int) -> None:
        self.state = state
        self._notify()

    def _notify(self) -> None:
        changed = self._changed
        if changed is not None:
            self._changed = None
            if not changed.done():
                changed.set_result(None)

    # -- followers read ------------------------------------------------------------

    async def changed(self) -> None:
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._changed)

    async def until(self, *states: int) -> int:
        """Wait until the flight is in one of ``states`` or failed; its state then."""
        while self.state not in states and self.state != FAILED:
            await self.changed()
        return self.state

    async def follow(self, drop_usage_chunk: bool) -> AsyncIterator[bytes]:
        """The leader's stream, from its first byte, as it arrives. A leader whose
        stream breaks ends this one with an error event (raised as upstream_error)."""
        index = 0
        events = SSEBuffer() if drop_usage_chunk else None
        while True:
            chunks = self.chunks
            while index < len(chunks):
                data = chunks[index]
                index += 1
                if events is not None:
                    data = b"".join(
                        event for event in events.feed(data) if not (b'"choices":[]' in event and b'"usage":{' in event)
                    )
                if data:
                    yield data
            if self.state == DONE:
                return
            if self.state == FAILED:
                raise upstream_error("The upstream stream this answer shared ended early.")
            await self.changed()
