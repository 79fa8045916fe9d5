"""The public plugin API is a promise: this test fails when any of it changes by accident.

The surface (what ``gateway`` exports, every hook with its arguments, the documented
fields and methods of the exchange, responses, stream events and usage, and the
error helpers) is computed from the code and compared with ``plugin_api.json``.
A deliberate change updates the snapshot in the same commit and follows
docs/plugins.md#stability (additions bump the minor version, removals and renames
the major one after a deprecation):

    python tests/test_plugin_api.py --update
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

SNAPSHOT = Path(__file__).with_name("plugin_api.json")


def public_members(cls: type) -> list[str]:
    names = set(getattr(cls, "__slots__", ())) | set(vars(cls))
    if hasattr(cls, "__struct_fields__"):
        names |= set(cls.__struct_fields__)
    return sorted(name for name in names if not name.startswith("_"))


def surface() -> dict[str, Any]:
    import gateway
    from gateway import errors, hookspecs
    from gateway import redis as shared_redis
    from gateway.app import Gateway
    from gateway.exchange import Exchange, Response, StashKey, StreamEvent, Usage

    hooks = {
        name: {"async": inspect.iscoroutinefunction(function), "arguments": list(inspect.signature(function).parameters)}
        for name, function in vars(hookspecs).items()
        if inspect.isfunction(function) and hasattr(function, "gateway_spec")
    }
    helpers = {
        name: str(inspect.signature(function))
        for name, function in vars(errors).items()
        if inspect.isfunction(function) and not name.startswith("_") and function.__module__ == errors.__name__
    }
    return {
        "version": gateway.PLUGIN_API_VERSION,
        "exports": sorted(gateway.__all__),
        "hooks": hooks,
        "classes": {cls.__name__: public_members(cls) for cls in (Exchange, Response, StreamEvent, Usage, StashKey)},
        "GatewayError": str(inspect.signature(errors.GatewayError.__init__)),
        "error_helpers": helpers,
        "redis": {
            "Gateway.redis": str(inspect.signature(Gateway.redis)),
            "connect": str(inspect.signature(shared_redis.connect)),
            "exports": sorted(shared_redis.__all__),
            "Redis": public_members(shared_redis.Redis),
            "Script": public_members(shared_redis.Script),
        },
    }


def test_the_public_plugin_api_matches_its_snapshot():
    expected = json.loads(SNAPSHOT.read_text())
    current = surface()
    assert current == expected, (
        "The public plugin API changed. If that is deliberate, follow docs/plugins.md#stability "
        "(bump gateway.PLUGIN_API_VERSION) and run: python tests/test_plugin_api.py --update"
    )


if __name__ == "__main__" and "--update" in sys.argv:
    SNAPSHOT.write_text(json.dumps(surface(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")
