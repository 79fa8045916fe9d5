"""The cache key: a hash of what decides the answer, and nothing else.

Two requests share a key when they would get the same answer: the same route
path, provider, API shape, model and body content (messages, tools, parameters),
compared as decoded JSON, so key order and whitespace do not matter. Fields that
do not change the answer (``user``, ``stream``, ``stream_options``, ``metadata``...)
are left out, as are headers but the few that change an answer's shape
(``anthropic-version``, ``anthropic-beta``) or which model answers
(``x-gateway-cascade``). With ``scope: client`` the caller's identity is part of
the key, so one caller's answer never reaches another.

The key reads ``<namespace>:<provider>:<model>:<hash>``: the provider and model
in clear (escaped) so that ``DELETE /cache?provider=&model=`` can find entries
by prefix, the rest as the first 128 bits of a SHA-256 of the canonical encoding (OpenSSL's,
with the CPU's SHA instructions where it has them: half the time of Python's BLAKE2b).
"""

from __future__ import annotations

import re
from functools import lru_cache
from hashlib import sha256
from typing import Any

import msgspec

#: body fields that never change the answer
IGNORED_FIELDS = frozenset(
    {"user", "stream", "stream_options", "metadata", "request_id", "safety_identifier", "prompt_cache_key"}
)
#: request headers that change what an answer looks like (``x-gateway-cascade: off``: the
#: requested model answers, never a cascade's draft stored by a cascaded call)
VARY_HEADERS = ("anthropic-version", "anthropic-beta", "x-gateway-cascade")

# Sorted keys at every depth: {"b":1,"a":2} and {"a":2,"b":1} encode alike.
_canonical = msgspec.json.Encoder(order="sorted").encode
_SHA256 = sha256()
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
#: escaped key heads a cache keeps (the pairs of provider and model it saw last)
MAX_HEADS = 4096


@lru_cache(maxsize=4096)
def escape(value: str) -> str:
    """A key segment with no ``:`` and no glob character (``*?[\\``): percent-encoded."""
    return _UNSAFE.sub(lambda match: "%%%02X" % ord(match.group()), value) if _UNSAFE.search(value) else value  # noqa: UP031


def key_prefix(namespace: str, provider: str | None = None, model: str | None = None) -> str:
    """The prefix every key of a provider (and model) starts with."""
    prefix = f"{namespace}:"
    if provider is None:
        return prefix
    prefix += escape(provider) + ":"
    return prefix if model is None else prefix + escape(model) + ":"


class KeyRules:
    """The key rules of one cache, with what a request does not change built once:
    the namespace, the fields left out, and the escaped ``<namespace>:<provider>:<model>:``
    heads (the hot path of every lookup: no keyword arguments, one hash call)."""

    __slots__ = ("namespace", "ignored", "_heads")

    def __init__(self, namespace: str, ignored: frozenset[str] = IGNORED_FIELDS) -> None:
        self.namespace = namespace
        self.ignored = ignored
        #: (provider, model) -> the key's escaped head; bounded, since callers name models
        self._heads: dict[tuple[str, str], str] = {}

    def key(
        self,
        path: str,
        provider: str,
        api: str,
        model: str,
        document: dict[str, Any],
        caller: str | None,
        headers: Any,
        with_stream: bool = False,
    ) -> str:
        """The key of one request. ``caller`` is None for ``scope: shared``; ``with_stream``
        keeps streamed and buffered answers apart (for APIs whose forms do not convert)."""
        ignored = self.ignored
        body = document if ignored.isdisjoint(document) else {k: v for k, v in document.items() if k not in ignored}
        # What the hash covers before the body: each part followed by a NUL.
        if caller is None:
            parts = f"{path}\0{provider}\0{api}\0"
        else:
            parts = f"{path}\0{provider}\0{api}\0caller\0{caller}\0"
        for name in VARY_HEADERS:
            value = headers.get(name)
            if value:
                parts += f"{name}\0{value}\0"
        if with_stream:
            parts += "stream\0" if document.get("stream") is True else "buffered\0"
        digest = _SHA256.copy()
        digest.update(parts.encode("utf-8", "surrogatepass") + _canonical(body))
        head = self._heads.get((provider, model))
        if head is None:
            head = self._head(provider, model)
        return head + digest.hexdigest()[:32]

    def _head(self, provider: str, model: str) -> str:
        heads = self._heads
        if len(heads) >= MAX_HEADS:
            heads.clear()
        head = heads[provider, model] = key_prefix(self.namespace, provider, model)
        return head


def request_key(
    namespace: str,
    *,
    path: str,
    provider: str,
    api: str,
    model: str,
    document: dict[str, Any],
    caller: str | None,
    headers: Any,
    ignored: frozenset[str] = IGNORED_FIELDS,
    with_stream: bool = False,
) -> str:
    """The key of one request (:meth:`KeyRules.key`, for one call)."""
    return KeyRules(namespace, ignored).key(path, provider, api, model, document, caller, headers, with_stream)
