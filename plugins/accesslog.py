"""The access line as a plugin: kept for configs that name it; the core writes it now.

```yaml
log: {access: true}          # the default: the core writes one access line per request
plugins:
  - use: accesslog           # redundant then; useful only with log.access false
    config: {level: info}
```

Since ``log.access`` (see docs/operations.md, "Logs") the core writes one JSON line
per request on logger ``gateway.access``, whatever plugins are in the chain. This
plugin writes the same line (same fields, same logger) only when ``log.access`` is
false, so naming it never doubles the lines; with the default it does nothing.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import msgspec

from gateway import Exchange, hookimpl
from gateway.logs import access_log, write_access_line


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    level: Literal["debug", "info", "warning"] = "info"


class AccessLog:
    Config = Config

    def __init__(self, config: Config) -> None:
        self.level = logging.getLevelName(config.level.upper())
        self.core_writes = False
        self.lines = 0

    @hookimpl
    def configure(self, gateway: Any) -> None:
        self.core_writes = gateway.config.log.access

    @hookimpl
    async def complete(self, exchange: Exchange) -> None:
        if self.core_writes or not access_log.isEnabledFor(self.level):
            return
        error = exchange.error
        response = exchange.response
        status = error.status if error is not None else (response.status if response is not None else 0)
        write_access_line(self.level, exchange, status)
        self.lines += 1

    @hookimpl
    def stats(self) -> dict[str, int]:
        return {"lines": self.lines}
