"""``gateway new-plugin NAME``: a pip-installable plugin package that works as generated.

The package has the ``gateway.plugins`` entry point, a plugin class with its options
struct and one hook, a README, and a test on :mod:`gateway.testing` that passes
once the package is installed (``pip install -e . && pytest``). Everything a plugin
author edits first is in one module, so the scaffold reads top to bottom.
"""

from __future__ import annotations

import re
from pathlib import Path

from gateway import __version__

#: an entry-point name: lower-case words joined by single dashes or underscores (pii-mask, pii_mask)
NAME = re.compile(r"^[a-z][a-z0-9]*([-_][a-z0-9]+)*$")


class ScaffoldError(Exception):
    """The name is not usable or the target directory exists."""


def names(name: str) -> tuple[str, str, str]:
    """(distribution, module, class) for an entry-point name such as ``pii-mask``."""
    if not NAME.match(name):
        raise ScaffoldError(
            f"{name!r} is not a plugin name: use lower-case letters, digits and single dashes or underscores"
            " (e.g. pii-mask)"
        )
    module = "gateway_" + name.replace("-", "_")
    cls = "".join(part.capitalize() for part in re.split(r"[-_]", name))
    return "gateway-" + name.replace("_", "-"), module, cls


def new_plugin(name: str, directory: Path) -> Path:
    """Write the package for plugin ``name`` under ``directory``; return its folder."""
    distribution, module, cls = names(name)
    from gateway.plugins import available

    if available().get(name, "").startswith("gateway_plugins."):
        # two entry points of one name: which one `use: NAME` loads would depend on install order
        raise ScaffoldError(f"{name!r} is the name of a built-in plugin: choose another")
    root = directory / distribution
    if root.exists():
        raise ScaffoldError(f"{root} already exists")
    # the answer header the plugin adds: dashes, as proxies drop header names with underscores
    header = "x-" + name.replace("_", "-")
    values = {
        "name": name, "distribution": distribution, "module": module, "cls": cls, "header": header,
        "version": __version__,
    }  # fmt: skip
    files = {
        "pyproject.toml": PYPROJECT,
        f"{module}.py": MODULE,
        "README.md": README,
        f"tests/test_{module}.py": TEST,
    }
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values))
    return root


PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{distribution}"
version = "0.1.0"
description = "A plugin for the LLM sidecar gateway."
requires-python = ">=3.11"
dependencies = ["llm-sidecar-gateway>={version}"]

[project.optional-dependencies]
test = ["pytest>=8", "pytest-aiohttp>=1.1", "openai>=1.50"]

# The gateway finds the plugin by this name: `- use: {name}` in its config.
[project.entry-points."gateway.plugins"]
{name} = "{module}:{cls}"

[tool.setuptools]
py-modules = ["{module}"]

[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
"""

MODULE = '''\
"""{cls}: a gateway plugin.

```yaml
plugins:
  - use: {name}
    config: {{header: {header}, value: seen}}
```

It stamps every answer with a header and counts the requests it saw. Replace the
``request`` hook with your own; docs/plugins.md of the gateway lists every hook.
"""

from __future__ import annotations

import msgspec

from gateway import Exchange, PluginConfigError, hookimpl


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The plugin's options: the gateway converts the entry's `config:` with this struct."""

    header: str = "{header}"
    value: str = "seen"


class {cls}:
    Config = Config

    def __init__(self, config: Config) -> None:
        if not config.header.lower().startswith("x-"):
            raise PluginConfigError("header", "use a header name that starts with x-")
        self.header = config.header
        self.value = config.value
        self.requests = 0

    @hookimpl
    async def request(self, exchange: Exchange) -> None:
        """Before the upstream call: return a Response to answer now, or None to go on."""
        self.requests += 1
        exchange.response_headers[self.header] = self.value

    @hookimpl
    def stats(self) -> dict[str, int]:
        """Figures for the admin /stats and /metrics."""
        return {{"requests": self.requests}}
'''

README = """\
# {distribution}

A plugin for the LLM sidecar gateway, made by `gateway new-plugin {name}`.

```sh
pip install -e '.[test]'   # installs the plugin beside the gateway
pytest                     # runs a real gateway with the plugin in its chain
```

Name it in the gateway's config:

```yaml
plugins:
  - use: {name}
    config: {{header: {header}, value: seen}}
```

`gateway plugins` lists it with its hooks and options once installed.
"""

TEST = '''\
"""End to end: a real gateway on loopback, the plugin loaded by its entry-point name."""

from gateway.testing import run_gateway


async def test_every_answer_carries_the_header(tmp_path):
    config = {{
        "providers": {{"mock": {{"type": "mock"}}}},
        "plugins": [{{"use": "{name}", "config": {{"value": "hello"}}}}],
    }}
    async with run_gateway(config, tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{{"role": "user", "content": "Hi"}}]
        )
    assert raw.headers["{header}"] == "hello"
    assert raw.parse().choices[0].message.content
    assert gw.spans_named("{name} request")


async def test_a_header_without_x_prefix_is_a_config_error(tmp_path):
    import pytest

    from gateway.config import ConfigError

    config = {{
        "providers": {{"mock": {{"type": "mock"}}}},
        "plugins": [{{"use": "{name}", "config": {{"header": "server"}}}}],
    }}
    with pytest.raises(ConfigError, match=r"plugins\\[0\\]\\.config\\.header"):
        async with run_gateway(config, tmp_path):
            pass
'''
