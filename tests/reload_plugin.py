"""A plugin for the reload tests: stamps its tag and how many requests it saw (state a
reload may carry over with ``adopt``), records its startup and shutdown, can refuse to
start or to adopt."""

from __future__ import annotations

import msgspec

from gateway import Exchange, hookimpl

#: (tag, "startup" | "shutdown") in the order they happened
EVENTS: list[tuple[str, str]] = []


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tag: str
    fail_startup: bool = False
    fail_adopt: bool = False


class Stamp:
    Config = Config

    def __init__(self, config: Config) -> None:
        self.tag = config.tag
        self.fail_startup = config.fail_startup
        self.fail_adopt = config.fail_adopt
        self.seen = 0

    @hookimpl
    def adopt(self, previous: Stamp) -> None:
        if self.fail_adopt:
            raise RuntimeError(f"{self.tag} cannot adopt")
        self.seen = previous.seen

    @hookimpl
    async def startup(self, gateway: object) -> None:
        if self.fail_startup:
            raise RuntimeError(f"{self.tag} cannot start")
        EVENTS.append((self.tag, "startup"))

    @hookimpl
    async def shutdown(self, gateway: object) -> None:
        EVENTS.append((self.tag, "shutdown"))

    @hookimpl
    async def request(self, exchange: Exchange) -> None:
        self.seen += 1
        exchange.response_headers["x-stamp"] = self.tag
        exchange.response_headers["x-stamp-seen"] = str(self.seen)
