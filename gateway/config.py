"""The config file: typed msgspec structs, ``${VAR}`` expansion, errors that name file and key.

Loading is two passes, as a plugin's options belong to the plugin: the first pass
decodes the gateway's own sections and keeps each plugin's ``config`` raw; the
second (in :mod:`gateway.plugins`) converts it with the plugin's own struct. Every
mistake surfaces as one :class:`ConfigError` line such as
``config/gateway.yaml: plugins[1].config.requests_per_minute (ratelimit): Expected `int`, got `str```.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec
from yarl import URL

from gateway.mock_upstream import MockSettings

DEFAULT_PATH = "config/gateway.yaml"
PROVIDER_TYPES = ("openai", "anthropic", "mock")
OFFICIAL_BASE_URLS = {"openai": "https://api.openai.com", "anthropic": "https://api.anthropic.com"}


class ConfigError(Exception):
    """One config mistake: which file, which key path, what is wrong."""

    def __init__(self, file: str, key_path: str, problem: str) -> None:
        self.file, self.key_path, self.problem = file, key_path, problem
        where = f"{file}: {key_path}" if key_path else file
        super().__init__(f"{where}: {problem}")


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class AdminConfig(_Section):
    """```yaml
    admin:
      listen: "127.0.0.1:9901"
      token: ${GATEWAY_ADMIN_TOKEN:-}
    ```"""

    listen: str = "127.0.0.1:9901"
    token: str = ""


class LimitsConfig(_Section):
    """```yaml
    limits: {max_body_bytes: 1048576, header_timeout_s: 30, body_timeout_s: 60}
    ```"""

    max_body_bytes: int = 1_048_576
    #: a connection that has not sent a whole request head this long after it opened
    #: (or after its previous answer) is closed: slowloris and idle keep-alive alike
    header_timeout_s: float = 30.0
    #: a request body not read in full this long after its head gets 408 request_timeout
    body_timeout_s: float = 60.0


class LogConfig(_Section):
    """```yaml
    log:
      level: info             # JSON lines on stderr
      access: true            # one access line per request (logger gateway.access)
      access_level: info      # the level of those lines: debug hides them under level info
    ```"""

    level: Literal["debug", "info", "warning", "error"] = "info"
    access: bool = True
    access_level: Literal["debug", "info", "warning"] = "info"


class CorsConfig(_Section):
    """```yaml
    cors:                               # browsers calling the gateway directly; nothing allowed by default
      allow_origins: ["https://app.example.com"]   # or ["*"]
      allow_methods: [GET, POST]
      allow_headers: ["*"]              # "*": whatever the preflight asks for
      allow_credentials: false
      max_age_s: 600
    ```"""

    allow_origins: list[str] = []
    allow_methods: list[str] = msgspec.field(default_factory=lambda: ["GET", "POST"])
    allow_headers: list[str] = msgspec.field(default_factory=lambda: ["*"])
    allow_credentials: bool = False
    max_age_s: int = 600


class ProviderConfig(_Section):
    """```yaml
    providers:
      openai:
        type: openai                 # openai | anthropic | mock (in-process)
        base_url: https://api.openai.com
        api_key: ${OPENAI_API_KEY}   # 'passthrough' forwards the caller's own key
        timeout_s: 60
      azure:
        type: openai
        base_url: https://my-resource.openai.azure.com/openai/v1
        api_key: ${AZURE_OPENAI_API_KEY}
        api_key_header: api-key      # the key as it is, in this header
    ```"""

    type: Literal["openai", "anthropic", "mock"]
    base_url: str = ""
    api_key: str = ""
    #: the header that carries api_key: default Authorization (Bearer) for openai, x-api-key for anthropic
    api_key_header: str = ""
    timeout_s: float = 60.0
    max_connections: int = 100
    headers: dict[str, str] = {}
    mock: MockSettings = MockSettings()


class RouteConfig(_Section):
    """```yaml
    routes:
      - {prefix: /v1/messages, provider: anthropic}
      - {model: "gpt-4o-mini*", provider: backup}
    ```"""

    provider: str
    prefix: str | None = None
    model: str | None = None


class ClientConfig(_Section):
    """```yaml
    clients:
      frontend: {key: ${FRONTEND_KEY}}
    ```"""

    key: str


class PluginEntry(_Section):
    """```yaml
    plugins:
      - use: ratelimit                # built-in name, entry-point name or module:attr
        name: ratelimit-burst         # optional; defaults to `use`
        on_error: closed              # closed answers 500 plugin_error; open skips the plugin
        config: {requests_per_minute: 60}
    ```"""

    use: str
    name: str = ""
    on_error: Literal["closed", "open"] = "closed"
    config: dict[str, Any] = {}

    @property
    def label(self) -> str:
        return self.name or self.use


class GatewayConfig(_Section):
    """The whole file; see config/gateway.yaml for a commented example."""

    providers: dict[str, ProviderConfig]
    listen: str = "127.0.0.1:8080"
    admin: AdminConfig = AdminConfig()
    limits: LimitsConfig = LimitsConfig()
    routes: list[RouteConfig] = []
    clients: dict[str, ClientConfig] = {}
    plugins: list[PluginEntry] = []
    shutdown_grace_s: float = 30.0
    log: LogConfig = LogConfig()
    cors: CorsConfig = CorsConfig()


class LoadedConfig(msgspec.Struct, frozen=True):
    """A decoded config and the file it came from (for error messages)."""

    path: str
    gateway: GatewayConfig


def resolve_path(path: str | None) -> str:
    return path or os.environ.get("GATEWAY_CONFIG") or DEFAULT_PATH


def load(path: str | None = None, environ: dict[str, str] | None = None) -> LoadedConfig:
    """Read, expand and validate the gateway's own sections; raise ConfigError."""
    path = resolve_path(path)
    raw = _read(path)
    if not isinstance(raw, dict):
        raise ConfigError(path, "", "the file must hold a mapping of sections (listen, providers, ...)")
    try:
        expanded = _expand(raw, os.environ if environ is None else environ, path, "")
    except RecursionError:  # a YAML alias that holds itself (a: &a [*a]), or absurd nesting
        raise ConfigError(path, "", "nested too deeply (a YAML alias that contains itself?)") from None
    # msgspec names a mapping's entry "[...]"; checking entries one by one names it.
    for section, struct in (("providers", ProviderConfig), ("clients", ClientConfig)):
        entries = expanded.get(section)
        if isinstance(entries, dict):
            for name, entry in entries.items():
                try:
                    msgspec.convert(entry, struct, strict=False)
                except msgspec.ValidationError as exc:
                    raise ConfigError(path, *split_validation_error(exc, f"{section}.{name}", entry)) from None
    try:
        gateway = msgspec.convert(expanded, GatewayConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(path, *split_validation_error(exc, document=expanded)) from None
    _check(path, gateway)
    return LoadedConfig(path, gateway)


def _read(path: str) -> Any:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read the file ({exc.strerror})") from None
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".toml":
            return tomllib.loads(data.decode())
        if suffix == ".json":
            return msgspec.json.decode(data)
        return _decode_yaml(data)
    except (msgspec.DecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        problem = " ".join(str(exc).split())  # YAML errors span several lines
        raise ConfigError(path, "", f"not valid {suffix.lstrip('.') or 'yaml'}: {problem}") from None


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")
_VAR_IN_BYTES = re.compile(_VAR.pattern.encode())
_PLACEHOLDER = re.compile(rb"gateway-var-([0-9]+)-placeholder")


def _decode_yaml(data: bytes) -> Any:
    """YAML, where ``${VAR}`` may stand unquoted in a flow mapping as well as in a block
    one (``frontend: {key: ${FRONTEND_KEY}}``): YAML reads ``{`` there as the start of a
    mapping, so each ``${...}`` is hidden behind a plain word while the file is parsed,
    and put back (still unexpanded) in the strings that held it."""
    if b"${" not in data:
        return msgspec.yaml.decode(data)
    found: list[str] = []

    def hide(match: re.Match[bytes]) -> bytes:
        if match.group(0) == b"$$":
            return b"$$"
        found.append(match.group(0).decode())
        return b"gateway-var-%d-placeholder" % (len(found) - 1)

    document = msgspec.yaml.decode(_VAR_IN_BYTES.sub(hide, data))

    def restore(node: Any) -> Any:
        if isinstance(node, str):
            if "gateway-var-" not in node:
                return node
            return _PLACEHOLDER.sub(lambda m: found[int(m.group(1))].encode(), node.encode()).decode()
        if isinstance(node, dict):
            return {restore(k): restore(v) for k, v in node.items()}
        if isinstance(node, list):
            return [restore(v) for v in node]
        return node

    return restore(document)


def _expand(node: Any, environ: Any, path: str, key_path: str) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string (``$$`` is a literal ``$``)."""
    if isinstance(node, str):
        if "$" not in node:
            return node

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, has_default, default = match.group(1), match.group(2), match.group(3)
            value = environ.get(name)
            if value is not None and (value or not has_default):
                return value
            if has_default:
                return default
            raise ConfigError(path, key_path, f"environment variable {name} is not set")

        return _VAR.sub(substitute, node)
    if isinstance(node, dict):
        return {k: _expand(v, environ, path, _join(key_path, k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, environ, path, f"{key_path}[{i}]") for i, v in enumerate(node)]
    return node


def _join(key_path: str, key: Any) -> str:
    return f"{key_path}.{key}" if key_path else str(key)


_AT = re.compile(r"^(.*?)(?: - at `\$(.*)`)?$", re.S)


def split_validation_error(exc: msgspec.ValidationError, prefix: str = "", document: Any = None) -> tuple[str, str]:
    """Turn msgspec's ``Expected int, got str - at `$.a[0].b``` into ("a[0].b", "Expected ...").

    msgspec names an entry of a mapping ``[...]``; with ``document`` (what was
    converted) the entry's own key is put in its place: ``prices.gpt-4o.input``."""
    match = _AT.match(str(exc))
    assert match is not None
    problem, at = match.group(1), (match.group(2) or "").lstrip(".")
    unknown = re.match(r"Object contains unknown field `(.+)`", problem)
    if unknown:
        at = _join(at, unknown.group(1))
        problem = "unknown key"
    missing = re.match(r"Object missing required field `(.+)`", problem)
    if missing:
        at = _join(at, missing.group(1))
        problem = "required key is missing"
    if "[...]" in at and isinstance(document, dict):
        got = re.search(r", got `(\w+)`", problem)
        at = _name_entries(at, document, missing is not None, got.group(1) if got else None)
    if prefix:
        at = f"{prefix}.{at}" if at and not at.startswith("[") else prefix + at
    return at, problem


_SEGMENT = re.compile(r"\[\.\.\.\]|\[(\d+)\]|\.?([^.\[]+)")
_JSON_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "object": dict, "array": list}


def _name_entries(at: str, document: Any, last_is_missing: bool, got: str | None) -> str:
    """``a[...].b`` with ``[...]`` replaced by the key of the entry of ``document`` the
    error is about (the first whose value fits the rest of the path); unchanged when none fits."""
    segments: list[tuple[str, Any]] = []
    for match in _SEGMENT.finditer(at):
        if match.group(0) == "[...]":
            segments.append(("entry", None))
        elif match.group(1) is not None:
            segments.append(("index", int(match.group(1))))
        else:
            segments.append(("key", match.group(2)))

    def fits(node: Any, rest: list[tuple[str, Any]]) -> list[str] | None:
        if not rest:
            if last_is_missing:
                return None
            wanted = _JSON_TYPES.get(got or "")
            if wanted is not None and (not isinstance(node, wanted) or (wanted is int and isinstance(node, bool))):
                return None
            return []
        kind, value = rest[0]
        if kind == "entry":
            if not isinstance(node, dict):
                return None
            for key, child in node.items():
                tail = fits(child, rest[1:])
                if tail is not None:
                    return [_join("", key) if not isinstance(key, str) else key, *tail]
            return None
        if kind == "index":
            return fits(node[value], rest[1:]) if isinstance(node, list) and value < len(node) else None
        if isinstance(node, dict) and value in node:
            return fits(node[value], rest[1:])
        if last_is_missing and len(rest) == 1 and isinstance(node, dict):
            return []  # the missing key itself
        return None

    keys = fits(document, segments)
    if keys is None:
        return at
    named = iter(keys)
    return re.sub(r"\[\.\.\.\]", lambda _: "." + str(next(named)), at).lstrip(".")


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"``, ``":8080"`` or ``"[::1]:8080"`` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT, for example 127.0.0.1:8080")
    return host.strip("[]") or "0.0.0.0", int(port)


#: an HTTP field name (RFC 9110 5.1: a token); what an upstream request's head may carry
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_LINE_BREAK = re.compile(r"[\r\n\x00]")


def _check(path: str, config: GatewayConfig) -> None:
    """Rules a struct cannot express: cross-references, addresses, sizes."""
    for key, value in (("listen", config.listen), ("admin.listen", config.admin.listen)):
        try:
            parse_listen(value)
        except ValueError as exc:
            raise ConfigError(path, key, f"{value!r}: {exc}") from None
    data, admin = parse_listen(config.listen), parse_listen(config.admin.listen)
    if data == admin and data[1] != 0:
        raise ConfigError(path, "admin.listen", f"{config.admin.listen!r}: the same address as listen")
    if not config.providers:
        raise ConfigError(path, "providers", "at least one provider is required")
    for name, provider in config.providers.items():
        where = f"providers.{name}"
        if not provider.timeout_s > 0:  # NaN too
            raise ConfigError(path, f"{where}.timeout_s", "must be greater than 0")
        if provider.max_connections < 0:
            raise ConfigError(path, f"{where}.max_connections", "must be 0 (no limit) or more")
        if provider.base_url and not provider.base_url.startswith(("http://", "https://")):
            raise ConfigError(path, f"{where}.base_url", "must start with http:// or https://")
        if provider.api_key_header and not _HEADER_NAME.match(provider.api_key_header):
            raise ConfigError(path, f"{where}.api_key_header", f"{provider.api_key_header!r} is not a header name")
        if _LINE_BREAK.search(provider.api_key):  # an env var read from a file with its newline, say
            raise ConfigError(path, f"{where}.api_key", "contains a line break or NUL (the key is not shown)")
        for name, value in provider.headers.items():
            if not _HEADER_NAME.match(name):
                raise ConfigError(path, f"{where}.headers", f"{name!r} is not a header name")
            if _LINE_BREAK.search(value):
                problem = "contains a line break or NUL (the value is not shown)"
                raise ConfigError(path, f"{where}.headers.{name}", problem)
        if provider.base_url:
            try:  # what the upstream pool will parse; the message never quotes the URL (it may hold a password)
                host = URL(provider.base_url).host
            except ValueError as exc:
                raise ConfigError(path, f"{where}.base_url", f"not a valid URL: {exc}") from None
            if not host:
                raise ConfigError(path, f"{where}.base_url", "names no host (http://HOST[:PORT][/PATH])")
    for i, route in enumerate(config.routes):
        if route.provider not in config.providers:
            known = ", ".join(config.providers)
            raise ConfigError(path, f"routes[{i}].provider", f"unknown provider {route.provider!r} (known: {known})")
        if route.prefix is None and route.model is None:
            raise ConfigError(path, f"routes[{i}]", "a route needs a prefix, a model glob, or both")
        if route.prefix is not None and not route.prefix.startswith("/"):
            raise ConfigError(path, f"routes[{i}].prefix", "must start with /")
    keys: dict[str, str] = {}
    for name, client in config.clients.items():
        if not client.key:
            raise ConfigError(path, f"clients.{name}.key", "must not be empty")
        if _LINE_BREAK.search(client.key):  # no caller can present it in a header
            raise ConfigError(path, f"clients.{name}.key", "contains a line break or NUL (the key is not shown)")
        if client.key in keys:
            raise ConfigError(path, f"clients.{name}.key", f"the same key as client {keys[client.key]!r}")
        keys[client.key] = name
    if config.limits.max_body_bytes <= 0:
        raise ConfigError(path, "limits.max_body_bytes", "must be greater than 0")
    for key in ("header_timeout_s", "body_timeout_s"):
        if not getattr(config.limits, key) > 0:  # NaN too
            raise ConfigError(path, f"limits.{key}", "must be greater than 0")
    if "*" in config.cors.allow_origins and config.cors.allow_credentials:
        raise ConfigError(path, "cors.allow_credentials", "cannot be true with allow_origins '*' (browsers refuse it)")
    for i, origin in enumerate(config.cors.allow_origins):
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ConfigError(path, f"cors.allow_origins[{i}]", f"{origin!r}: an origin is scheme://host[:port], or '*'")
    if not config.shutdown_grace_s >= 0:  # NaN too
        raise ConfigError(path, "shutdown_grace_s", "must be 0 or more")
    labels: dict[str, int] = {}
    for i, entry in enumerate(config.plugins):
        if entry.label in labels:
            raise ConfigError(
                path, f"plugins[{i}]", f"plugin {entry.label!r} is already in the chain at plugins[{labels[entry.label]}]; give one a distinct 'name'"
            )
        labels[entry.label] = i
