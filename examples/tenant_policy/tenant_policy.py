"""A tenant policy: which models each client may call, and how many tokens it may ask for.

```yaml
clients:
  frontend: {key: ${FRONTEND_KEY}}
  batch: {key: ${BATCH_KEY}}
plugins:
  - use: tenant-policy
    config:
      tenants:
        frontend: {models: ["gpt-4o-mini", "claude-haiku-*"], max_tokens: 512}
        batch: {models: ["*"], max_tokens: 4096}
      default: {models: []}          # callers with no entry may call nothing
```

A request for a model outside the caller's globs, or asking for more output tokens
than its cap, is answered 403 ``permission_denied`` in the route's API shape (the
SDKs raise ``PermissionDeniedError``) before any other plugin spends on it. A
request that names no output limit gets the cap written in, so the provider cannot
run past it.
"""

from __future__ import annotations

import re
from fnmatch import translate

import msgspec

from gateway import Exchange, GatewayError, PluginConfigError, hookimpl

#: the body field that caps output tokens, by API: chat, Responses, Anthropic messages
LIMIT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


class Tenant(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    max_tokens: int | None = None


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tenants: dict[str, Tenant] = {}
    default: Tenant = Tenant()


class _Rule:
    """A tenant's globs compiled once into one regular expression."""

    __slots__ = ("allows", "max_tokens")

    def __init__(self, tenant: Tenant) -> None:
        pattern = "|".join(translate(glob) for glob in tenant.models) or r"(?!)"
        self.allows = re.compile(pattern).match
        self.max_tokens = tenant.max_tokens


def permission_denied(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(403, "permission_denied", message, param=param)


class TenantPolicy:
    Config = Config

    def __init__(self, config: Config) -> None:
        for name, tenant in {**config.tenants, "default": config.default}.items():
            if tenant.max_tokens is not None and tenant.max_tokens <= 0:
                key = "default.max_tokens" if name == "default" else f"tenants.{name}.max_tokens"
                raise PluginConfigError(key, "must be greater than 0")
        self.rules = {name: _Rule(tenant) for name, tenant in config.tenants.items()}
        self.default = _Rule(config.default)
        self.denied = 0

    @hookimpl
    async def request(self, exchange: Exchange) -> None:
        if not exchange.has_json_body:
            return
        rule = self.rules.get(exchange.caller, self.default)
        document = exchange.json()
        model = document.get("model")
        if isinstance(model, str) and rule.allows(model) is None:
            self.denied += 1
            raise permission_denied(f"Model {model!r} is not allowed for this client.", param="model")
        if rule.max_tokens is None:
            return
        asked = [(field, document[field]) for field in LIMIT_FIELDS if isinstance(document.get(field), int)]
        for field, value in asked:
            if value > rule.max_tokens:
                self.denied += 1
                raise permission_denied(f"{field} {value} is over this client's cap of {rule.max_tokens}.", param=field)
        if not asked and exchange.path in ("/v1/chat/completions", "/v1/responses"):
            field = "max_output_tokens" if exchange.path == "/v1/responses" else "max_completion_tokens"
            exchange.set_json({**document, field: rule.max_tokens})

    @hookimpl
    def stats(self) -> dict[str, int]:
        return {"denied": self.denied}
