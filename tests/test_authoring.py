"""Plugin authoring: the scaffold, `gateway plugins`, the example packages, guard rails.

Packages are installed for real (``pip install --target``, no network: the build
uses the venv's setuptools) and found through their entry points, as a user's are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError
from gateway.testing import run_gateway

from helpers_lifecycle import child_env, gateway_command, loopback_config, start_gateway

ROOT = Path(__file__).resolve().parent.parent


def pip_install(package: Path, target: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(package)],
        check=True,
        capture_output=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder of installed packages: the scaffolded plugin and both examples."""
    work = tmp_path_factory.mktemp("authoring")
    done = subprocess.run(
        gateway_command("new-plugin", "pii-mask", "--dir", str(work)), capture_output=True, text=True, check=True
    )
    assert "gateway-pii-mask" in done.stdout
    target = work / "site"
    for package in (work / "gateway-pii-mask", ROOT / "examples" / "model_aliases", ROOT / "examples" / "tenant_policy"):
        pip_install(package, target)
    return work, target


@pytest.fixture
def installed(site, monkeypatch):
    """The installed packages importable in this process (entry points included)."""
    monkeypatch.syspath_prepend(str(site[1]))
    return site


def env_with(target: Path) -> dict[str, str]:
    return child_env(PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]))


def run_tests_of(package: Path, target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=package,
        env=env_with(target),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_scaffolded_plugins_tests_pass_as_generated(site):
    work, target = site
    result = run_tests_of(work / "gateway-pii-mask", target)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


@pytest.mark.parametrize("example", ["model_aliases", "tenant_policy"])
def test_each_example_packages_own_tests_pass(site, example):
    result = run_tests_of(ROOT / "examples" / example, site[1])
    assert result.returncode == 0, result.stdout + result.stderr


async def test_a_running_gateway_loads_the_scaffold_and_the_examples_by_entry_point_name(site, tmp_path):
    import openai

    config = loopback_config(
        clients={"app": {"key": "app-key"}},
        plugins=[
            {"use": "pii-mask"},
            {"use": "model-aliases", "config": {"aliases": {"fast": "gpt-4o-mini"}}},
            {"use": "tenant-policy", "config": {"tenants": {"app": {"models": ["gpt-4o-mini"]}}}},
        ],
    )
    async with start_gateway(config, tmp_path, env=env_with(site[1])) as gw:
        client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="app-key", max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(
            model="fast", messages=[{"role": "user", "content": "Hi"}]
        )
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
        await client.close()
    assert gw.plugin_count == 3
    assert raw.headers["x-pii-mask"] == "seen"
    assert raw.parse().model == "gpt-4o-mini"


def test_new_plugin_takes_a_name_with_underscores_and_its_tests_pass_as_generated(tmp_path):
    done = subprocess.run(
        gateway_command("new-plugin", "tenant_rules", "--dir", str(tmp_path)), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    package = tmp_path / "gateway-tenant-rules"
    assert "tenant_rules = \"gateway_tenant_rules:TenantRules\"" in (package / "pyproject.toml").read_text()
    target = tmp_path / "site"
    pip_install(package, target)
    result = run_tests_of(package, target)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_new_plugin_refuses_a_bad_name_and_an_existing_folder(tmp_path):
    bad = subprocess.run(gateway_command("new-plugin", "Bad_Name", "--dir", str(tmp_path)), capture_output=True, text=True)
    assert bad.returncode == 2 and "not a plugin name" in bad.stderr
    subprocess.run(gateway_command("new-plugin", "twice", "--dir", str(tmp_path)), check=True, capture_output=True)
    again = subprocess.run(gateway_command("new-plugin", "twice", "--dir", str(tmp_path)), capture_output=True, text=True)
    assert again.returncode == 2 and "already exists" in again.stderr
    builtin = subprocess.run(gateway_command("new-plugin", "cache", "--dir", str(tmp_path)), capture_output=True, text=True)
    assert builtin.returncode == 2 and "built-in plugin" in builtin.stderr
    assert not (tmp_path / "gateway-cache").exists()


def test_gateway_plugins_lists_distribution_version_hooks_and_options(site):
    result = subprocess.run(
        gateway_command("plugins", "--json"), env=env_with(site[1]), capture_output=True, text=True, check=True
    )
    rows = {row["name"]: row for row in json.loads(result.stdout)["plugins"]}
    scaffold = rows["pii-mask"]
    assert (scaffold["distribution"], scaffold["version"], scaffold["builtin"]) == ("gateway-pii-mask", "0.1.0", False)
    assert scaffold["hooks"] == ["request", "stats"]
    assert {"name": "value", "type": "str", "required": False, "default": "seen"} in scaffold["options"]
    assert rows["accesslog"]["builtin"] is True
    tenant = rows["tenant-policy"]
    assert [option["name"] for option in tenant["options"]] == ["tenants", "default"]
    text = subprocess.run(gateway_command("plugins"), env=env_with(site[1]), capture_output=True, text=True, check=True)
    assert "pii-mask (gateway-pii-mask 0.1.0) gateway_pii_mask:PiiMask" in text.stdout
    assert "  value: str (default \"seen\")" in text.stdout
    # SPEC: the built-in plugins too, with their version
    assert f"scan (built-in {rows['scan']['version']}) gateway_plugins.scan:Scan" in text.stdout


# -- guard rails: one clear line at startup --------------------------------------------------

BAD_PLUGINS = '''
import msgspec
from gateway import hookimpl

class WrongArgument:
    @hookimpl
    async def request(self, exchange, body):
        return None

class Misspelt:
    @hookimpl
    async def requets(self, exchange):
        return None

class SyncRequest:
    @hookimpl
    def request(self, exchange):
        return None

class MutableOptions:
    class Config(msgspec.Struct):
        limit: int = 1

    def __init__(self, config):
        pass

class NotAStruct:
    class Config:
        limit = 1

class RaisesWhenBuilt:
    def __init__(self):
        raise RuntimeError("no licence file")

class RaisesInConfigure:
    @hookimpl
    def configure(self, gateway):
        raise KeyError("tenant")

class RaisesInAdminRoutes:
    @hookimpl
    def admin_routes(self, gateway):
        raise RuntimeError("routes broke")

NotCallable = 42

class LooseOptions:
    class Config(msgspec.Struct, frozen=True):  # no forbid_unknown_fields
        color: str = "red"

    def __init__(self, config):
        self.config = config

    @hookimpl
    async def request(self, exchange):
        return None
'''


@pytest.mark.parametrize(
    ("plugin", "problem"),
    [
        ("WrongArgument", "Argument(s) {'body'} are declared in the hookimpl but can not be found in the hookspec"),
        ("Misspelt", "a hook with no such name: unknown hook 'requets'"),
        ("SyncRequest", "hook 'request' must be 'async def'"),
        ("MutableOptions", "Config must be a frozen msgspec.Struct"),
        ("NotAStruct", "Config must be a frozen msgspec.Struct"),
        ("RaisesWhenBuilt", "bad_plugins:RaisesWhenBuilt failed to build: RuntimeError: no licence file"),
        ("RaisesInConfigure", "configure failed: KeyError: 'tenant'"),
        ("NotCallable", "failed to build: TypeError: 'int' object is not callable"),
        ("RaisesInAdminRoutes", "admin_routes failed: RuntimeError: routes broke"),
    ],
)
def test_a_badly_written_plugin_is_refused_at_startup_with_one_line(tmp_path, plugin, problem):
    (tmp_path / "bad_plugins.py").write_text(BAD_PLUGINS)
    config, result = _check_plugin(tmp_path, f"bad_plugins:{plugin}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"config error: {config}: plugins")
    assert problem in lines[0]


def test_a_misspelt_option_is_refused_even_when_the_plugins_struct_lets_unknown_fields_through(tmp_path):
    (tmp_path / "bad_plugins.py").write_text(BAD_PLUGINS)
    config = tmp_path / "gateway.yaml"

    def check(options: str) -> subprocess.CompletedProcess[str]:
        entry = f"{{use: 'bad_plugins:LooseOptions', config: {options}}}"
        config.write_text(f"providers: {{mock: {{type: mock}}}}\nplugins: [{entry}]\n")
        command = gateway_command("check", "--config", str(config))
        return subprocess.run(command, env=child_env(PYTHONPATH=str(tmp_path)), capture_output=True, text=True)

    assert check("{color: blue}").returncode == 0
    misspelt = check("{colour: blue}")
    assert misspelt.returncode == 2
    assert misspelt.stderr.splitlines() == [
        f"config error: {config}: plugins[0].config.colour: (bad_plugins:LooseOptions) unknown key"
    ]


def test_a_misspelt_hook_names_its_chain_entry_not_the_object(tmp_path):
    (tmp_path / "bad_plugins.py").write_text(BAD_PLUGINS)
    config, result = _check_plugin(tmp_path, "bad_plugins:Misspelt")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"config error: {config}: plugins[0]: (bad_plugins:Misspelt) a hook with no such name: unknown hook 'requets'"
    ]


def test_a_plugin_module_that_raises_on_import_is_refused_with_one_line(tmp_path):
    (tmp_path / "explodes.py").write_text("raise RuntimeError('boom at import')\n")
    config, result = _check_plugin(tmp_path, "explodes:Plugin")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"config error: {config}: plugins[0].use: cannot load 'explodes:Plugin': RuntimeError: boom at import"
    ]


async def test_the_examples_config_errors_name_the_key(installed, tmp_path):
    config = {
        "providers": {"mock": {"type": "mock"}},
        "plugins": [{"use": "tenant-policy", "config": {"tenants": {"a": {"max_tokens": 0}}}}],
    }
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.config\.tenants\.a\.max_tokens: \(tenant-policy\) must be greater than 0"):
        async with run_gateway(config, tmp_path):
            pass


def _check_plugin(tmp_path: Path, use: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``gateway check`` of a config whose one plugin is ``use`` (its module in tmp_path)."""
    config = tmp_path / "gateway.yaml"
    config.write_text(f"providers: {{mock: {{type: mock}}}}\nplugins: [{{use: '{use}'}}]\n")
    result = subprocess.run(
        gateway_command("check", "--config", str(config)),
        env=child_env(PYTHONPATH=str(tmp_path)),
        capture_output=True,
        text=True,
    )
    return config, result
