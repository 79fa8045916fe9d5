"""``gateway run | check | mock-upstream | plugins | new-plugin``."""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway import __version__
from gateway.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="LLM sidecar gateway")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    config_help = "config file (default: $GATEWAY_CONFIG, then config/gateway.yaml)"
    run = commands.add_parser("run", help="serve the data plane and the admin API")
    run.add_argument("--config", help=config_help)
    check = commands.add_parser("check", help="validate the config, load every plugin, print the chain")
    check.add_argument("--config", help=config_help)
    mock = commands.add_parser("mock-upstream", help="serve the built-in fake provider")
    from gateway import mock_upstream

    mock_upstream.add_arguments(mock)
    listing = commands.add_parser(
        "plugins", help="list the built-in and installed plugins: version, hooks and options"
    )
    listing.add_argument("--json", action="store_true", help="print JSON for machines")
    scaffold = commands.add_parser("new-plugin", help="scaffold a pip-installable plugin package")
    scaffold.add_argument("name", help="the plugin's entry-point name, e.g. pii-mask")
    scaffold.add_argument("--dir", default=".", help="where to create the package folder (default: here)")
    args = parser.parse_args(argv)
    if args.command in ("run", "check"):
        problem = _propagators_error()
        if problem is not None:
            print(f"config error: {problem}", file=sys.stderr)
            return 2
    if args.command == "run":
        return _run(args.config)
    if args.command == "check":
        return _check(args.config)
    if args.command == "mock-upstream":
        return mock_upstream.main(args)
    if args.command == "new-plugin":
        return _new_plugin(args.name, args.dir)
    return _list_plugins(args.json)


def _propagators_error() -> str | None:
    """The one-line problem with ``OTEL_PROPAGATORS``, read when OpenTelemetry's propagate
    module is first imported (an unknown name raises there, a traceback otherwise)."""
    try:
        import opentelemetry.propagate  # noqa: F401
    except ValueError as exc:
        return f"OTEL_PROPAGATORS: {' '.join(str(exc).split())}"
    return None


def _run(path: str | None) -> int:
    from opentelemetry import trace

    from gateway import logs
    from gateway.app import build, serve
    from gateway.errors import StartupError
    from gateway.redact import redact
    from gateway.telemetry import TelemetryConfigError, tracer_provider_from_env

    try:
        tracer_provider = tracer_provider_from_env()
        gateway = build(path, tracer_provider)
    except (ConfigError, TelemetryConfigError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    trace.set_tracer_provider(tracer_provider)
    logs.setup(gateway.config.log.level)
    _use_uvloop()
    try:
        asyncio.run(serve(gateway))
    except StartupError as exc:  # it may quote a plugin's exception, whose text may hold a key
        print(f"gateway: {redact(str(exc))}", file=sys.stderr)
        return 1
    finally:
        tracer_provider.shutdown()
    return 0


def _check(path: str | None) -> int:
    from gateway.app import build
    from gateway.telemetry import TelemetryConfigError, tracer_provider_from_env

    try:
        gateway = build(path)
        tracer_provider_from_env().shutdown()  # the OTEL_* variables are part of the config
    except (ConfigError, TelemetryConfigError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    config = gateway.config
    print(f"{gateway.config_path}: ok")
    print(f"listen {config.listen}, admin {config.admin.listen}")
    for name, provider in gateway.providers.items():
        print(f"provider {name}: {provider.type} {provider.base_url}")
    rows = gateway.chain.describe()
    print(f"chain ({len(rows)} plugin{'s' if len(rows) != 1 else ''}):")
    for i, row in enumerate(rows):
        print(f"  {i}. {row['name']} ({row['class']}, on_error {row['on_error']}): {', '.join(row['hooks']) or 'no hooks'}")
    return 0


def _list_plugins(as_json: bool) -> int:
    import json

    from gateway.plugins import describe_installed

    rows = describe_installed()
    if as_json:
        print(json.dumps({"plugins": rows}, indent=2))
        return 0
    for row in rows:
        origin = f"built-in {row['version']}" if row["builtin"] else f"{row['distribution']} {row['version']}"
        print(f"{row['name']} ({origin}) {row['target']}")
        if "error" in row:
            print(f"  cannot load: {row['error']}")
            continue
        print(f"  hooks: {', '.join(row['hooks']) or 'none'}")
        for option in row["options"]:
            default = "required" if option["required"] else f"default {json.dumps(option['default'])}"
            print(f"  {option['name']}: {option['type']} ({default})")
    return 0


def _new_plugin(name: str, directory: str) -> int:
    from pathlib import Path

    from gateway.scaffold import ScaffoldError, names, new_plugin

    try:
        root = new_plugin(name, Path(directory))
    except ScaffoldError as exc:
        print(f"gateway new-plugin: {exc}", file=sys.stderr)
        return 2
    module = names(name)[1]
    print(f"created {root}: {module}.py, tests/, pyproject.toml (entry point {name!r})")
    print(f"next: cd {root} && pip install -e '.[test]' && pytest")
    return 0


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
