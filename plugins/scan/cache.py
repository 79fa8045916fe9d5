"""An LRU cache of scan results with a time to live, safe to share with worker threads.

A system prompt or a retried request is the same text again and again; its result
is looked up instead of scanned. Entries expire after ``ttl_s`` (so a rule change
on reload never meets an old result: the plugin, and its cache, are rebuilt) and
the least recently used one goes when the cache is full: more than ``max_entries``
entries, or more than ``max_chars`` characters of keys (the texts) in all.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class ResultCache(Generic[V]):
    def __init__(self, max_entries: int, ttl_s: float, max_chars: int = 16_000_000) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.max_chars = max_chars
        self.chars = 0
        self.entries: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self.lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: str) -> V | None:
        if self.max_entries <= 0:
            self.misses += 1
            return None
        with self.lock:
            entry = self.entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            if entry[0] <= time.monotonic():
                del self.entries[key]
                self.chars -= len(key)
                self.misses += 1
                return None
            self.entries.move_to_end(key)
            self.hits += 1
            return entry[1]

    def put(self, key: str, value: V) -> None:
        if self.max_entries <= 0:
            return
        entries = self.entries
        with self.lock:
            if key in entries:
                entries.move_to_end(key)
            else:
                self.chars += len(key)
            entries[key] = (time.monotonic() + self.ttl_s, value)
            while len(entries) > self.max_entries or self.chars > self.max_chars:
                old, _ = entries.popitem(last=False)
                self.chars -= len(old)
                self.evictions += 1

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
            self.chars = 0

    def figures(self) -> dict[str, float]:
        looked_up = self.hits + self.misses
        return {
            "cache_hits": self.hits,
            "cache_misses": self.misses,
            "cache_evictions": self.evictions,
            "cache_entries": len(self.entries),
            "cache_hit_rate": round(self.hits / looked_up, 4) if looked_up else 0.0,
        }
