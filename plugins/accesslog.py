"""One JSON access-log line per exchange, written after the caller has its answer.

```yaml
plugins:
  - use: accesslog
    config: {level: info}
```

The line (logger ``gateway.access``) carries the request id and trace id like every
log line, and: method, path, status, caller, provider, model, attempts, duration_ms,
input_tokens, output_tokens, cost_usd, error code. Never a header, key or body.
"""

from __future__ import annotations

import logging
from typing import Literal

import msgspec

from gateway import Exchange, GatewayError, hookimpl

log = logging.getLogger("gateway.access")


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    level: Literal["debug", "info", "warning"] = "info"


class AccessLog:
    Config = Config

    def __init__(self, config: Config) -> None:
        self.level = logging.getLevelName(config.level.upper())
        self.lines = 0

    @hookimpl
    async def complete(self, exchange: Exchange) -> None:
        if not log.isEnabledFor(self.level):
            return
        error: GatewayError | None = exchange.error
        response = exchange.response
        status = error.status if error is not None else (response.status if response is not None else 0)
        usage = exchange.usage
        try:
            model = exchange.model
        except GatewayError:
            model = None
        fields = {
            "method": exchange.method,
            "path": exchange.path,
            "status": status,
            "caller": exchange.caller,
            "provider": exchange.provider.name if exchange.provider is not None and exchange.attempts else None,
            "model": model,
            "stream": response.is_stream if response is not None else False,
            "attempts": exchange.attempts,
            "duration_ms": round(exchange.elapsed_s() * 1000, 3),
            "input_tokens": usage.input_tokens if usage else None,
            "output_tokens": usage.output_tokens if usage else None,
            "cost_usd": exchange.cost_usd,
            "error": error.code if error is not None else None,
        }
        log.log(self.level, "%s %s %s", exchange.method, exchange.path, status, extra=fields)
        self.lines += 1

    @hookimpl
    def stats(self) -> dict[str, int]:
        return {"lines": self.lines}
