"""Example plugin: callers ask for a short alias, the upstream gets the real model.

```yaml
plugins:
  - use: model-aliases            # after `pip install examples/model_aliases`
    config:
      aliases: {fast: gpt-4o-mini, smart: gpt-4o}
```

The answer carries ``x-model-alias: fast=gpt-4o-mini`` so the caller can see the
rewrite; ``GET /stats`` shows how many requests were rewritten. It is the plugin
docs/plugins.md walks through, and the tests load it both by entry point and by
``model_aliases:ModelAliases``.
"""

from __future__ import annotations

import msgspec

from gateway import Exchange, PluginConfigError, hookimpl


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    aliases: dict[str, str]


class ModelAliases:
    Config = Config

    def __init__(self, config: Config) -> None:
        if not config.aliases:
            raise PluginConfigError("aliases", "name at least one alias")
        for alias, model in config.aliases.items():
            if not model:
                raise PluginConfigError(f"aliases.{alias}", "the target model is empty")
        self.aliases = config.aliases
        self.rewrites = 0

    @hookimpl
    async def request(self, exchange: Exchange) -> None:
        alias = exchange.model
        model = self.aliases.get(alias) if alias is not None else None
        if model is None:
            return
        exchange.model = model
        exchange.response_headers["x-model-alias"] = f"{alias}={model}"
        self.rewrites += 1

    @hookimpl
    def stats(self) -> dict[str, int]:
        return {"rewrites": self.rewrites}
