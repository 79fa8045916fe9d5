"""Single-flight: concurrent identical misses make one upstream call.

The first request for a key leads: it calls the upstream and publishes what comes
back on a :class:`Flight`. Requests for the same key that arrive meanwhile follow:
they wait for the leader's answer instead of calling. A buffered answer reaches
followers when it arrives. A streamed one is read from the upstream by a task of
its own (the pump) into the flight, and the leader's caller reads it from there
like every follower, as it arrives: so a follower's first token is not held back
until the end, and the leader's caller leaving does not cut the stream its
followers are reading (the pump stops only when nobody reads any more). A leader
that fails before answering sets followers free to call the upstream themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from gateway.errors import upstream_error
from gateway.exchange import SSEBuffer

PENDING, BUFFERED, STREAMING, DONE, FAILED = range(5)

#: how far (bytes) the pump may read the upstream's stream ahead of its furthest
#: reader: the callers' pace holds the upstream back, as without the cache
READ_AHEAD_BYTES = 256 * 1024


class Flight:
    """One upstream call that identical requests share while it runs."""

    __slots__ = (
        "state",
        "status",
        "content_type",
        "body",
        "chunks",
        "include_usage",
        "served_model",
        "followers",
        "error",
        "whole",
        "on_idle",
        "pumped",
        "read",
        "_changed",
        "_moved",
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
        #: the leader's ``served_model`` (x-gateway-model), for its followers
        self.served_model: str | None = None
        #: readers waiting for or reading the answer now (a streamed leader's caller too);
        #: the pump stops when the last one leaves before the end
        self.followers = 0
        #: why the stream broke (re-raised to the leader's caller, so it gets the usual error event)
        self.error: BaseException | None = None
        #: the stream ended with its API's closing event (a stream may end cleanly but cut short)
        self.whole = False
        #: called when the last reader leaves before the end (the pump is stopped)
        self.on_idle: Callable[[], None] | None = None
        #: bytes of the stream pushed so far, and read so far by the furthest reader
        self.pumped = 0
        self.read = 0
        self._changed: asyncio.Future[None] | None = None
        self._moved: asyncio.Future[None] | None = None

    # -- the leader publishes ------------------------------------------------------

    def answered(self, status: int, content_type: str, body: bytes) -> None:
        self.status, self.content_type, self.body = status, content_type, body
        self._set(BUFFERED)

    def streaming(self, status: int, content_type: str) -> None:
        self.status, self.content_type = status, content_type
        self._set(STREAMING)

    def push(self, data: bytes) -> None:
        self.chunks.append(data)
        self.pumped += len(data)
        self._notify()

    async def room(self) -> None:
        """Wait until the furthest reader is within ``READ_AHEAD_BYTES`` of the pump."""
        while self.pumped - self.read > READ_AHEAD_BYTES:
            if self._moved is None:
                self._moved = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._moved)

    def _advanced(self, position: int) -> None:
        if position > self.read:
            self.read = position
            moved = self._moved
            if moved is not None and self.pumped - position <= READ_AHEAD_BYTES:
                self._moved = None
                if not moved.done():
                    moved.set_result(None)

    def finished(self) -> None:
        self._set(DONE)

    def failed(self, error: BaseException | None = None) -> None:
        if self.state not in (DONE, BUFFERED):
            self.error = error
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

    def leave(self) -> None:
        """A reader is gone; when it was the last before the end, the flight is idle."""
        self.followers -= 1
        if self.followers <= 0 and self.state in (PENDING, STREAMING) and self.on_idle is not None:
            self.on_idle()

    async def follow(self, drop_usage_chunk: bool, original_error: bool = False) -> AsyncIterator[bytes]:
        """The stream, from its first byte, as it arrives, for a reader counted in
        ``followers``. A stream that breaks ends this one with an error: the original
        one for the leader's caller, an ``upstream_error`` for followers."""
        try:
            async for data in self._follow(drop_usage_chunk, original_error):
                yield data
        finally:
            self.leave()

    async def _follow(self, drop_usage_chunk: bool, original_error: bool) -> AsyncIterator[bytes]:
        index = position = 0
        events = SSEBuffer() if drop_usage_chunk else None
        while True:
            chunks = self.chunks
            while index < len(chunks):
                data = chunks[index]
                index += 1
                position += len(data)
                self._advanced(position)  # asked for the next chunk: the last one is read
                if events is not None:
                    data = b"".join(
                        event for event in events.feed(data) if not (b'"choices":[]' in event and b'"usage":{' in event)
                    )
                if data:
                    yield data
            if self.state == DONE:
                return
            if self.state == FAILED:
                if original_error and self.error is not None:
                    raise self.error
                raise upstream_error("The upstream stream this answer shared ended early.")
            await self.changed()
