"""The keys the gateway knows, kept out of what it writes: log lines, hook spans, error bodies.

The core never quotes a key; but a plugin's exception may (``int(exchange.headers
["Authorization"])`` says ``invalid literal for int() with base 10: 'Bearer sk-...'``),
and its text goes to the log and to the hook's span. :func:`redact` replaces every
provider key, client key and admin token of the configuration with ``[REDACTED]``
wherever the gateway copies text it did not write itself, and in every log line
(access lines excepted: they are built from fields that never hold a key).

Keys shorter than :data:`MIN_LENGTH` are not searched for: replacing a short word
everywhere would garble the log more than it protects.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable
from typing import TYPE_CHECKING

from opentelemetry.trace import Span, Status, StatusCode

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

MIN_LENGTH = 8
MASK = "[REDACTED]"

#: every key of every configuration loaded so far (a reload keeps the old ones: their
#: requests may still be in flight)
_secrets: tuple[str, ...] = ()


def keys_of(config: GatewayConfig) -> list[str]:
    """The secrets of a configuration: provider keys (not ``passthrough``), client keys, the admin token."""
    found = [provider.api_key for provider in config.providers.values() if provider.api_key != "passthrough"]
    found.extend(client.key for client in config.clients.values())
    found.append(config.admin.token)
    return found


def remember(secrets: Iterable[str]) -> None:
    """Add ``secrets`` to those :func:`redact` replaces (longest first, so that a key
    containing another is replaced whole)."""
    global _secrets
    known = set(_secrets)
    known.update(secret for secret in secrets if len(secret) >= MIN_LENGTH)
    _secrets = tuple(sorted(known, key=len, reverse=True))


def forget() -> None:
    """No secret is known (tests)."""
    global _secrets
    _secrets = ()


def redact(text: str) -> str:
    """``text`` with every known secret replaced by ``[REDACTED]``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_bytes(data: bytes) -> bytes:
    for secret in _secrets:
        encoded = secret.encode()
        if encoded in data:
            data = data.replace(encoded, MASK.encode())
    return data


def record_exception(span: Span, exc: BaseException) -> None:
    """What ``span.record_exception(exc)`` and an ERROR status say, with known secrets redacted."""
    kind = type(exc)
    qualname = kind.__qualname__
    module = kind.__module__
    attributes = {
        "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
        "exception.message": redact(str(exc)),
        "exception.stacktrace": redact("".join(traceback.format_exception(kind, exc, exc.__traceback__))),
        "exception.escaped": "False",
    }
    span.add_event("exception", attributes)
    span.set_status(Status(StatusCode.ERROR, redact(f"{type(exc).__name__}: {exc}")))
