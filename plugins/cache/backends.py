"""Where entries live: aiocache's API over an LRU dict in memory, or over Redis.

Both are :class:`aiocache.base.BaseCache` subclasses, so ``get``, ``set``,
``delete`` and ``clear`` are aiocache's (its timeout, namespace and serializer
plumbing). What aiocache's own memory cache lacks, a bound on the number of
entries, :class:`LRUMemoryCache` adds: the least recently read entry goes first.
Redis keeps an index of the plugin's keys (a sorted set scored by expiry) so
that ``max_entries``, ``size`` and ``DELETE /cache?provider=`` work without
``SCAN``-ing the database; entries are msgspec MessagePack.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec
import redis.asyncio as redis
from aiocache.backends.redis import RedisCache
from aiocache.base import BaseCache
from aiocache.serializers import BaseSerializer, NullSerializer
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from yarl import URL


class Entry(msgspec.Struct, array_like=True, frozen=True):
    """One stored answer. ``form`` is ``json`` (``body`` is the answer) or ``sse``
    (``body`` is the whole event stream, as the upstream sent it)."""

    form: str
    status: int
    content_type: str
    body: bytes
    stored_at: float
    #: an OpenAI stream that carries a usage-only chunk
    has_usage_chunk: bool = False


class MsgpackSerializer(BaseSerializer):
    """aiocache serializer for :class:`Entry`: msgspec MessagePack, bytes in Redis."""

    DEFAULT_ENCODING = None  # values are bytes, not text

    def __init__(self) -> None:
        super().__init__()
        self._encode = msgspec.msgpack.Encoder().encode
        self._decoder = msgspec.msgpack.Decoder(Entry)

    def dumps(self, value: Entry) -> bytes:
        return self._encode(value)

    def loads(self, value: bytes | None) -> Entry | None:
        return None if value is None else self._decoder.decode(value)


class LRUMemoryCache(BaseCache):
    """An in-process dict with a bound on entries (least recently read first out) and
    expiry checked when read (no timer per entry)."""

    NAME = "memory"

    def __init__(
        self, max_entries: int, on_evict: Callable[[int], None], max_bytes: int = 1 << 62, **kwargs: Any
    ) -> None:
        super().__init__(serializer=NullSerializer(), timeout=0, **kwargs)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.on_evict = on_evict
        #: key -> (expires at, value, size in bytes)
        self._entries: OrderedDict[str, tuple[float, Any, int]] = OrderedDict()
        #: the sum of the sizes of the entries held
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: str) -> Any:
        """The value without aiocache's wrappers (the hot path of a hit); None when absent or expired."""
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] < time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return found[1]

    async def _get(self, key: str, encoding: str | None = None, _conn: Any = None) -> Any:
        return self.peek(key)

    async def _gets(self, key: str, encoding: str | None = None, _conn: Any = None) -> Any:
        return self.peek(key)

    async def _multi_get(self, keys: list[str], encoding: str | None = None, _conn: Any = None) -> list[Any]:
        return [self.peek(key) for key in keys]

    async def _set(
        self, key: str, value: Any, ttl: float | None = None, _cas_token: Any = None, _conn: Any = None
    ) -> bool:
        return self.put(key, value, ttl)

    def put(self, key: str, value: Any, ttl: float | None = None) -> bool:
        """Store without aiocache's wrappers (the hot path of a miss: its decorators,
        an environment lookup among them, cost more than the store itself)."""
        entries = self._entries
        self._drop(key)
        size = len(getattr(value, "body", b""))
        entries[key] = (time.monotonic() + ttl if ttl else float("inf"), value, size)
        self.bytes += size
        evicted = 0
        while len(entries) > self.max_entries or (self.bytes > self.max_bytes and len(entries) > 1):
            _, (_, _, dropped) = entries.popitem(last=False)
            self.bytes -= dropped
            evicted += 1
        if evicted:
            self.on_evict(evicted)
        return True

    def _drop(self, key: str) -> int:
        found = self._entries.pop(key, None)
        if found is None:
            return 0
        self.bytes -= found[2]
        return 1

    async def _multi_set(self, pairs: list[tuple[str, Any]], ttl: float | None = None, _conn: Any = None) -> bool:
        for key, value in pairs:
            await self._set(key, value, ttl)
        return True

    async def _add(self, key: str, value: Any, ttl: float | None = None, _conn: Any = None) -> bool:
        if self.peek(key) is not None:
            raise ValueError(f"Key {key} already exists, use .set to update the value")
        return await self._set(key, value, ttl)

    async def _exists(self, key: str, _conn: Any = None) -> bool:
        return self.peek(key) is not None

    async def _delete(self, key: str, _conn: Any = None) -> int:
        return self._drop(key)

    async def _clear(self, namespace: str | None = None, _conn: Any = None) -> bool:
        if namespace:
            for key in [key for key in self._entries if key.startswith(namespace)]:
                self._drop(key)
        else:
            self._entries.clear()
            self.bytes = 0
        return True

    async def delete_prefix(self, prefix: str, model: str | None = None) -> int:
        """Delete every entry whose key starts with ``prefix`` (and, with ``model``,
        whose model segment is ``model``); the number deleted."""
        doomed = [
            key for key in self._entries if key.startswith(prefix) and (model is None or key.split(":")[2] == model)
        ]
        for key in doomed:
            self._drop(key)
        return len(doomed)

    async def drop_idle_connections(self) -> None:
        """Close the pooled connections no call holds (they reconnect when next used)."""
        await self.client.connection_pool.disconnect(inuse_connections=False)

    async def size(self) -> int:
        return len(self._entries)


class RedisEntryCache(RedisCache):
    """aiocache's Redis cache with msgspec entries, short timeouts and no retries
    (a Redis outage must cost the caller milliseconds, not seconds), and an index."""

    def __init__(
        self, url: str, *, namespace: str, max_entries: int, timeout_s: float, on_evict: Callable[[int], None]
    ) -> None:
        parsed = URL(url)
        db = parsed.path.strip("/") or "0"
        pool_kwargs: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
        }
        if parsed.user:
            pool_kwargs["username"] = parsed.user
        super().__init__(
            serializer=MsgpackSerializer(),
            endpoint=parsed.host or "127.0.0.1",
            port=parsed.port or 6379,
            db=int(db),
            password=parsed.password,
            ssl=parsed.scheme == "rediss",
            create_connection_timeout=timeout_s,
            connection_pool_kwargs=pool_kwargs,
            timeout=timeout_s,
        )
        self.index = f"{namespace}:index"
        self.max_entries = max_entries
        self.on_evict = on_evict

    async def store(self, key: str, entry: Entry, ttl_s: float) -> None:
        """Write the entry and index it; trim expired index members and, past
        ``max_entries``, the entries that expire first (the oldest written)."""
        now = time.time()
        client: redis.Redis = self.client
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(key, self.serializer.dumps(entry), px=max(1, int(ttl_s * 1000)))
            pipe.zadd(self.index, {key: now + ttl_s})
            pipe.zremrangebyscore(self.index, "-inf", now)
            pipe.zcard(self.index)
            *_, count = await pipe.execute()
        excess = int(count) - self.max_entries
        if excess > 0:
            oldest = await client.zpopmin(self.index, excess)
            if oldest:
                await client.delete(*[member for member, _ in oldest])
                self.on_evict(len(oldest))

    async def delete_prefix(self, prefix: str, model: str | None = None) -> int:
        client: redis.Redis = self.client
        members = [m.decode() for m in await client.zrange(self.index, 0, -1)]
        doomed = [key for key in members if key.startswith(prefix) and (model is None or key.split(":")[2] == model)]
        deleted = 0
        for start in range(0, len(doomed), 500):
            batch = doomed[start : start + 500]
            deleted += int(await client.delete(*batch))
            await client.zrem(self.index, *batch)
        return deleted

    async def _close(self, *args: Any, _conn: Any = None, **kwargs: Any) -> None:
        await self.client.aclose()

    async def drop_idle_connections(self) -> None:
        """Close the pooled connections no call holds (they reconnect when next used)."""
        await self.client.connection_pool.disconnect(inuse_connections=False)

    async def size(self) -> int:
        return int(await self.client.zcount(self.index, time.time(), "+inf"))
