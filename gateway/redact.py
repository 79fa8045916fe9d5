"""The keys the gateway knows, kept out of what it writes: log lines, hook spans, error bodies.

The core never quotes a key; but a plugin's exception may (``int(exchange.headers
["Authorization"])`` says ``invalid literal for int() with base 10: 'Bearer sk-...'``),
and its text goes to the log and to the hook's span. :func:`redact` replaces every
secret of the configuration (:func:`keys_of`) with ``[REDACTED]`` wherever the gateway copies text it did not write itself, and in every log line
(access lines excepted: they are built from fields that never hold a key).

Keys shorter than :data:`MIN_LENGTH` are not searched for: replacing a short word
everywhere would garble the log more than it protects.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from opentelemetry.trace import Span, Status, StatusCode

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

MIN_LENGTH = 8
MASK = "[REDACTED]"
#: provider header names whose values are credentials
_CREDENTIAL_HEADER = re.compile(r"auth|key|token|secret|password|cookie", re.IGNORECASE)

#: every key of every configuration loaded so far (a reload keeps the old ones: their
#: requests may still be in flight)
_secrets: tuple[str, ...] = ()


def keys_of(config: GatewayConfig) -> list[str]:
    """The secrets of a configuration: provider keys (not ``passthrough``) and the values of
    their extra headers that carry credentials (``Helicone-Auth: Bearer ...``, and the token
    after the scheme), client keys, the admin token, and the password of every URL in it
    (a provider's ``base_url``, a plugin's ``redis://:PASSWORD@host``)."""
    found = [provider.api_key for provider in config.providers.values() if provider.api_key != "passthrough"]
    for provider in config.providers.values():
        for name, value in provider.headers.items():
            if _CREDENTIAL_HEADER.search(name):
                found.append(value)
                found.append(value.partition(" ")[2].strip())  # "Bearer TOKEN": TOKEN alone too
        found.extend(_url_passwords(provider.base_url))
    found.extend(client.key for client in config.clients.values())
    found.append(config.admin.token)
    for entry in config.plugins:
        found.extend(_url_passwords(entry.config))
    return found


def _url_passwords(value: object) -> list[str]:
    """The passwords of the URLs in ``value`` (a string, or plugin options at any depth)."""
    if isinstance(value, str):
        if "://" not in value or "@" not in value:
            return []
        try:
            password = urlsplit(value).password
        except ValueError:
            return []
        return [unquote(password)] if password else []
    if isinstance(value, dict):
        return [found for item in value.values() for found in _url_passwords(item)]
    if isinstance(value, (list, tuple)):
        return [found for item in value for found in _url_passwords(item)]
    return []


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
