"""Where entries live: aiocache's API over an LRU dict in memory, or over Redis.

Both are :class:`aiocache.base.BaseCache` subclasses, so ``get``, ``set``,
``delete`` and ``clear`` are aiocache's (its timeout, namespace and serializer
plumbing). What aiocache's own memory cache lacks, a bound on the number of
entries, :class:`LRUMemoryCache` adds: the least recently read entry goes first.
Redis keeps an index of the plugin's keys (a sorted set scored by expiry) so
that ``max_entries``, ``size`` and ``DELETE /cache?provider=`` work without
``SCAN``-ing the database; entries are msgspec MessagePack. The Redis backend goes
through the gateway's shared, pipelined connection (:mod:`gateway.redis`).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec
from aiocache.base import BaseCache
from aiocache.serializers import BaseSerializer, NullSerializer

from gateway.redis import Redis, Script


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
    #: the model that answered when a plugin changed it (a cascade's draft, a fallback's
    #: model): a hit carries it as ``x-gateway-model`` too
    served_model: str | None = None


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


# KEYS: the entry, the index. ARGV: the entry's bytes, its TTL (ms), its expiry and now
# (epoch microseconds, whole: the index's score is epoch seconds, made here, so the
# gateway formats no float), max_entries. Returns how many were evicted.
# (The evicted entries are keys the script finds in the index, so it is for a single
# Redis, not a Cluster, as the index already was.)
STORE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) / 1000000, KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[4]) / 1000000)
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if excess <= 0 then return 0 end
local oldest = redis.call('ZPOPMIN', KEYS[2], excess)
local evicted = 0
for i = 1, #oldest, 2 do
  redis.call('DEL', oldest[i])
  evicted = evicted + 1
end
return evicted
"""


class RedisEntryCache(BaseCache):
    """aiocache's API over the gateway's shared, pipelined Redis connection
    (:mod:`gateway.redis`), with msgspec entries and an index of the plugin's keys.

    A lookup is one ``GET`` in the pipeline of its event-loop iteration; a store is one
    script (write, index, trim expired index members, evict past ``max_entries``) that
    the plugin queues without waiting for it."""

    NAME = "redis"

    def __init__(
        self, url: str, *, namespace: str, max_entries: int, timeout_s: float, on_evict: Callable[[int], None]
    ) -> None:
        super().__init__(serializer=MsgpackSerializer(), timeout=0)
        self.url = url
        self.timeout_s = timeout_s
        self.index = f"{namespace}:index"
        self.max_entries = max_entries
        self.on_evict = on_evict
        self.redis: Redis | None = None
        self.attributes: dict[str, Any] = {}
        self._decode = msgspec.msgpack.Decoder(Entry).decode
        self._encode = msgspec.msgpack.Encoder().encode
        self._store: Script | None = None

    def open(self, gateway: Any) -> None:
        """Take a handle on the gateway's connection to the URL (in ``startup``)."""
        self.redis = gateway.redis(self.url, timeout_s=self.timeout_s)
        self.attributes = dict(self.redis.attributes)
        self._store = self.redis.script(STORE)

    def _handle(self) -> Redis:
        if self.redis is None:
            raise RuntimeError("the cache's Redis backend is not open")
        return self.redis

    async def ping(self) -> None:
        """Reach Redis and load the store script into its cache, so the first store is an
        ``EVALSHA`` like the others (not an ``EVAL`` sent again behind later lookups)."""
        await self._handle().call("SCRIPT", "LOAD", STORE)

    async def fetch(self, key: str) -> Entry | None:
        """The entry, or None (the hot path of a lookup: no aiocache wrappers)."""
        raw = await self._handle().call("GET", key)
        return None if raw is None else self._decode(raw)

    def fetch_later(self, key: str) -> asyncio.Future[Any]:
        """Queue the lookup; the future of the stored bytes (:meth:`decode` them) or None."""
        return self._handle().call("GET", key)

    def decode(self, raw: bytes | None) -> Entry | None:
        return None if raw is None else self._decode(raw)

    def store(self, key: str, entry: Entry, ttl_s: float) -> asyncio.Future[Any]:
        """Queue the entry's store (write, index, trims and evictions: one script);
        the future of how many entries it evicted. Counts the evictions itself."""
        self._handle()
        assert self._store is not None
        now = time.time()
        # Times as whole microseconds: an int is packed for a fraction of a float's repr.
        future = self._store(
            keys=(key, self.index),
            args=(
                self._encode(entry), max(1, int(ttl_s * 1000)), int((now + ttl_s) * 1e6), int(now * 1e6),
                self.max_entries,
            ),
        )  # fmt: skip
        future.add_done_callback(self._evicted)
        return future

    def _evicted(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None and future.result():
            self.on_evict(int(future.result()))

    async def delete_prefix(self, prefix: str, model: str | None = None) -> int:
        redis = self._handle()
        members = [member.decode() for member in await redis.call("ZRANGE", self.index, 0, -1)]
        doomed = [key for key in members if key.startswith(prefix) and (model is None or key.split(":")[2] == model)]
        deleted = 0
        for start in range(0, len(doomed), 500):
            batch = doomed[start : start + 500]
            removed = redis.call("ZREM", self.index, *batch)
            deleted += int(await redis.call("DEL", *batch))
            await removed
        return deleted

    async def size(self) -> int:
        return int(await self._handle().call("ZCOUNT", self.index, repr(time.time()), "+inf"))

    async def close(self, *args: Any, **kwargs: Any) -> None:
        if self.redis is not None:
            await self.redis.close()

    # aiocache's API (``get``, ``set``, ``delete``, ``exists``, ``clear``)

    async def _get(self, key: str, encoding: str | None = None, _conn: Any = None) -> Any:
        raw = await self._handle().call("GET", key)
        return raw  # aiocache's get() decodes it with the serializer

    async def _set(
        self, key: str, value: Any, ttl: float | None = None, _cas_token: Any = None, _conn: Any = None
    ) -> bool:
        redis = self._handle()
        if ttl:
            await redis.call("SET", key, value, "PX", max(1, int(ttl * 1000)))
        else:
            await redis.call("SET", key, value)
        return True

    async def _exists(self, key: str, _conn: Any = None) -> bool:
        return bool(await self._handle().call("EXISTS", key))

    async def _delete(self, key: str, _conn: Any = None) -> int:
        redis = self._handle()
        _, deleted = await asyncio.gather(redis.call("ZREM", self.index, key), redis.call("DEL", key))
        return int(deleted)

    async def _clear(self, namespace: str | None = None, _conn: Any = None) -> bool:
        await self.delete_prefix(namespace or "")
        return True
