"""Finding, configuring and registering the plugins named in the config.

A plugin is named by ``use:`` in one of three ways, all through the same path, so
built-ins get no special treatment: an entry point of the group ``gateway.plugins``
(the built-ins are entry points of this package), or ``module:attr``. The object
found is a class (or any callable) taking its options struct, declared as the
class attribute ``Config`` (a msgspec Struct), or nothing when it has none.
"""

from __future__ import annotations

import importlib
import inspect
import re
from importlib.metadata import entry_points
from typing import Any, Literal

import msgspec
import pluggy

from gateway import hookspecs
from gateway.config import ConfigError, LoadedConfig, PluginEntry, split_validation_error

ENTRY_POINT_GROUP = "gateway.plugins"

#: hooks run on the request path: they must be coroutines.
ASYNC_HOOKS = ("startup", "shutdown", "request", "send", "response", "chunk", "complete")


class PluginConfigError(Exception):
    """Raise from a plugin's constructor or ``configure`` hook to reject its options.

    ``key`` is the path below the plugin's ``config`` (``"fallbacks.openai"``) or "".
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key, self.problem = key, problem


class Plugin(msgspec.Struct, frozen=True):
    """A plugin instance in the chain, with what the config said of it."""

    index: int
    label: str
    use: str
    on_error: Literal["closed", "open"]
    instance: Any

    @property
    def fails_open(self) -> bool:
        return self.on_error == "open"


def available() -> dict[str, str]:
    """Entry-point names and what they point at."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def describe_installed() -> list[dict[str, Any]]:
    """Every installed plugin as ``gateway plugins`` shows it: name, target,
    distribution and version, built-in or not, the hooks it implements, and its
    options (name, type, default) read from its ``Config`` struct.

    A plugin that fails to import is listed with its ``error`` instead of failing all.
    """
    rows = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        dist = ep.dist
        row: dict[str, Any] = {
            "name": ep.name,
            "target": ep.value,
            "distribution": dist.name if dist is not None else None,
            "version": dist.version if dist is not None else None,
            "builtin": ep.value.startswith("gateway_plugins."),
        }
        try:
            factory = ep.load()
        except Exception as exc:  # a broken third-party package must not hide the others
            row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            continue
        row["hooks"] = [name for name in HOOK_NAMES if _is_hookimpl(getattr(factory, name, None))]
        row["options"] = options_of(getattr(factory, "Config", None))
        rows.append(row)
    return rows


#: every hook name, in the order the hooks run
HOOK_NAMES = (
    "configure", "adopt", "startup", "request", "send", "response", "chunk", "complete", "shutdown",
    "admin_routes", "stats", "ready",
)  # fmt: skip


def options_of(config_type: Any) -> list[dict[str, Any]]:
    """Name, type and default of each field of an options struct (empty without one)."""
    if config_type is None:
        return []
    options = []
    for field in msgspec.structs.fields(config_type):
        if field.default is not msgspec.NODEFAULT:
            default = field.default
        elif field.default_factory is not msgspec.NODEFAULT:
            default = field.default_factory()
        else:
            default = None
        options.append(
            {
                "name": field.encode_name,
                "type": _type_name(field.type),
                "required": field.required,
                "default": msgspec.to_builtins(default) if not field.required else None,
            }
        )
    return options


def _type_name(annotation: Any) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return text.replace("typing.", "").replace("NoneType", "None")


def resolve(use: str) -> Any:
    """The factory that ``use`` names: an entry point, or ``module:attr``."""
    if ":" in use:
        module_name, _, attr = use.partition(":")
        module = importlib.import_module(module_name)
        target: Any = module
        for part in attr.split("."):
            target = getattr(target, part)
        return target
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=use):
        return ep.load()
    known = ", ".join(sorted(available())) or "none installed"
    raise LookupError(f"unknown plugin {use!r} (installed: {known}; or give module:attr)")


def load(loaded: LoadedConfig) -> tuple[pluggy.PluginManager, list[Plugin]]:
    """Build every plugin of the config and register it; raise ConfigError on any mistake."""
    manager = pluggy.PluginManager("gateway")
    manager.add_hookspecs(hookspecs)
    chain: list[Plugin] = []
    for index, entry in enumerate(loaded.gateway.plugins):
        instance = _build(loaded.path, index, entry)
        plugin = Plugin(index, entry.label, entry.use, entry.on_error, instance)
        where = f"plugins[{index}]"
        try:
            manager.register(instance, name=entry.label)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise ConfigError(loaded.path, where, f"({entry.label}) {one_line(exc)}") from None
        for hook in ASYNC_HOOKS:
            function = getattr(instance, hook, None)
            if function is not None and _is_hookimpl(function) and not inspect.iscoroutinefunction(function):
                raise ConfigError(loaded.path, where, f"({entry.label}) hook {hook!r} must be 'async def'")
        chain.append(plugin)
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        # pluggy names the plugin by its object's repr: name the chain entry instead
        problem = re.sub(r" in plugin <.*?>", "", one_line(exc))
        for plugin in chain:
            if plugin.instance is exc.plugin:
                where = f"plugins[{plugin.index}]"
                raise ConfigError(loaded.path, where, f"({plugin.label}) a hook with no such name: {problem}") from None
        raise ConfigError(loaded.path, "plugins", f"a hook with no such name: {problem}") from None
    return manager, chain


def _is_hookimpl(function: Any) -> bool:
    return hasattr(function, "gateway_impl")


def one_line(exc: Exception) -> str:
    """pluggy explains a bad hookimpl over several lines; a config error is one."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _is_frozen_struct(config_type: Any) -> bool:
    """Options are shared by every request: a mutable struct would let one request change them."""
    return isinstance(config_type, type) and issubclass(config_type, msgspec.Struct) and config_type.__struct_config__.frozen


def _build(path: str, index: int, entry: PluginEntry) -> Any:
    where = f"plugins[{index}]"
    try:
        factory = resolve(entry.use)
    except LookupError as exc:
        raise ConfigError(path, f"{where}.use", str(exc)) from None
    except (ImportError, AttributeError) as exc:
        raise ConfigError(path, f"{where}.use", f"cannot load {entry.use!r}: {exc}") from None
    except Exception as exc:  # the module itself raised while imported: one line, not a traceback
        problem = f"cannot load {entry.use!r}: {type(exc).__name__}: {one_line(exc)}"
        raise ConfigError(path, f"{where}.use", problem) from None
    config_type = getattr(factory, "Config", None)
    if config_type is not None and not _is_frozen_struct(config_type):
        raise ConfigError(
            path, where, f"({entry.label}) {entry.use}.Config must be a frozen msgspec.Struct (class Config(msgspec.Struct, frozen=True))"
        )
    try:
        if config_type is None:
            if entry.config:
                raise ConfigError(path, f"{where}.config", f"({entry.label}) this plugin takes no options")
            return factory()
        if not config_type.__struct_config__.forbid_unknown_fields:
            # a struct that lets unknown fields through would take a misspelt option silently
            known = {field.encode_name for field in msgspec.structs.fields(config_type)}
            for key in entry.config:
                if key not in known:
                    raise ConfigError(path, f"{where}.config.{key}", f"({entry.label}) unknown key")
        try:
            options = msgspec.convert(entry.config, config_type, strict=False)
        except msgspec.ValidationError as exc:
            key, problem = split_validation_error(exc, prefix=f"{where}.config", document=entry.config)
            raise ConfigError(path, key, f"({entry.label}) {problem}") from None
        return factory(options)
    except PluginConfigError as exc:
        raise plugin_config_error(path, index, entry.label, exc) from None
    except ConfigError:
        raise
    except Exception as exc:
        raise plugin_failed(path, index, entry.label, f"{entry.use} failed to build", exc) from None


def plugin_failed(path: str, index: int, label: str, what: str, exc: Exception) -> ConfigError:
    """A plugin that raised while being built or set up: a startup error on one line naming
    it (``plugins[2]: (audit) configure failed: KeyError: 'tenant'``), never a traceback."""
    return ConfigError(path, f"plugins[{index}]", f"({label}) {what}: {type(exc).__name__}: {one_line(exc)}")


def plugin_config_error(path: str, index: int, label: str, exc: PluginConfigError) -> ConfigError:
    key = f"plugins[{index}].config" + (f".{exc.key}" if exc.key else "")
    return ConfigError(path, key, f"({label}) {exc.problem}")
