"""The config file: formats, ${VAR} expansion, and errors that name file, key path and problem."""

from __future__ import annotations

import json

import pytest

from gateway.config import ConfigError, load

MINIMAL = "providers:\n  mock: {type: mock}\n"


def write(tmp_path, text, name="gateway.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def error_of(tmp_path, text, environ=None, name="gateway.yaml"):
    path = write(tmp_path, text, name)
    with pytest.raises(ConfigError) as caught:
        load(path, environ or {})
    return str(caught.value).removeprefix(path + ": ")


def test_minimal_config_gets_the_documented_defaults(tmp_path):
    config = load(write(tmp_path, MINIMAL), {}).gateway
    assert config.listen == "127.0.0.1:8080"
    assert config.admin.listen == "127.0.0.1:9901"
    assert config.limits.max_body_bytes == 1_048_576
    assert config.providers["mock"].timeout_s == 60
    assert config.plugins == [] and config.routes == [] and config.clients == {}


def test_environment_expansion(tmp_path):
    text = (
        "listen: ${LISTEN:-127.0.0.1:9000}\n"
        "admin: {token: '${TOKEN}'}\n"
        "limits: {max_body_bytes: '${MAX_BODY:-2048}'}\n"
        "providers:\n"
        "  oa: {type: openai, api_key: 'sk-${KEY}-$$literal', timeout_s: '${TIMEOUT:-}'}\n"
    )
    with pytest.raises(ConfigError):
        load(write(tmp_path, text), {"TOKEN": "t", "KEY": "k"})  # TIMEOUT empty: not a number
    config = load(write(tmp_path, text), {"TOKEN": "t", "KEY": "k", "TIMEOUT": "5"}).gateway
    assert config.listen == "127.0.0.1:9000"
    assert config.admin.token == "t"
    assert config.limits.max_body_bytes == 2048  # a string from the environment becomes an int
    assert config.providers["oa"].api_key == "sk-k-$literal"
    assert config.providers["oa"].timeout_s == 5.0


def test_variables_stand_unquoted_in_flow_mappings_as_in_the_spec_example(tmp_path):
    # SPEC's own example: `frontend: {key: ${FRONTEND_KEY}}`; YAML alone reads that `{` as a mapping.
    text = (
        "providers:\n"
        "  oa: {type: openai, api_key: ${KEY}, timeout_s: ${TIMEOUT:-7}, headers: {x-team: team-${TEAM:-a}}}\n"
        "clients:\n"
        "  frontend: {key: ${FRONTEND_KEY}}\n"
        "  literal: {key: '$${NOT_A_VAR}'}\n"
        "plugins: [{use: scan, config: {rules: ${RULES:-}}}]\n"
    )
    config = load(write(tmp_path, text), {"KEY": "sk-1", "FRONTEND_KEY": "fk-1"}).gateway
    assert config.providers["oa"].api_key == "sk-1" and config.providers["oa"].timeout_s == 7
    assert config.providers["oa"].headers == {"x-team": "team-a"}
    assert config.clients["frontend"].key == "fk-1" and config.clients["literal"].key == "${NOT_A_VAR}"
    assert config.plugins[0].config == {"rules": ""}
    assert error_of(tmp_path, text, {"KEY": "sk-1"}) == "clients.frontend.key: environment variable FRONTEND_KEY is not set"


def test_unset_variable_is_an_error_naming_the_key(tmp_path):
    text = "providers:\n  oa: {type: openai, api_key: '${OPENAI_API_KEY}'}\n"
    assert error_of(tmp_path, text) == "providers.oa.api_key: environment variable OPENAI_API_KEY is not set"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + "listn: x\n", "listn: unknown key"),
        (MINIMAL + "admin: {listen: x, tokn: y}\n", "admin.tokn: unknown key"),
        (MINIMAL + "limits: {max_body_bytes: lots}\n", "limits.max_body_bytes: Expected `int`, got `str`"),
        ("listen: 127.0.0.1:1\n", "providers: required key is missing"),
        ("providers:\n  x: {type: azure}\n", "providers.x.type: Invalid enum value 'azure'"),
        ("providers:\n  x: {base_url: http://h}\n", "providers.x.type: required key is missing"),
        (MINIMAL + "routes:\n  - {prefix: /v1/, provider: nope}\n", "routes[0].provider: unknown provider 'nope' (known: mock)"),
        (MINIMAL + "routes:\n  - {provider: mock}\n", "routes[0]: a route needs a prefix, a model glob, or both"),
        (MINIMAL + "listen: '8080'\n", "listen: '8080': expected HOST:PORT, for example 127.0.0.1:8080"),
        (MINIMAL + "listen: 8080\n", "listen: Expected `str`, got `int`"),
        (MINIMAL + "plugins:\n  - {use: accesslog, on_error: maybe}\n", "plugins[0].on_error: Invalid enum value 'maybe'"),
        (MINIMAL + "clients:\n  a: {key: k}\n  b: {key: k}\n", "clients.b.key: the same key as client 'a'"),
        ("providers:\n  x: {type: openai, base_url: ftp://h}\n", "providers.x.base_url: must start with http:// or https://"),
        ("providers:\n  x: {type: mock, mock: {error_rate: 2}}\n", "providers.x.mock.error_rate: Expected `float` <= 1.0"),
        ("providers: [1\n", "not valid yaml"),
        ("a: &a [*a]\n" + MINIMAL, "nested too deeply"),
        (MINIMAL + "listen: ':9000'\nadmin: {listen: ':9000'}\n", "admin.listen: ':9000': the same address as listen"),
        ("providers:\n  x: {type: mock, timeout_s: .nan}\n", "providers.x.timeout_s: must be greater than 0"),
        (MINIMAL + "shutdown_grace_s: .nan\n", "shutdown_grace_s: must be 0 or more"),
        ("providers:\n  x: {type: mock, headers: {a: b, c: [1]}}\n", "providers.x.headers.c: Expected `str`, got `array`"),
    ],
)
def test_mistakes_are_one_line_naming_key_path_and_problem(tmp_path, text, message):
    error = error_of(tmp_path, text)
    assert error.startswith(message), error
    assert "\n" not in error


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (
            "{use: cost, config: {prices: {gpt-x: {input_per_mtok: 1, output_per_mtok: 2},"
            " gpt-z: {output_per_mtok: 1}}}}",
            "plugins[0].config.prices.gpt-z.input_per_mtok: (cost) required key is missing",
        ),
        (
            "{use: cost, config: {budgets: {alice: {usd_per_day: 3}, bob: {daily: 3}}}}",
            "plugins[0].config.budgets.bob.daily: (cost) unknown key",
        ),
        (
            "{use: ratelimit, config: {requests_per_minute: 5, clients: {al: {}, bob: {requests_per_minute: x}}}}",
            "plugins[0].config.clients.bob.requests_per_minute: (ratelimit) Expected `int | null`, got `str`",
        ),
        (
            "{use: breaker, config: {fallback_models: {mock: {a: b, c: 1}}}}",
            "plugins[0].config.fallback_models.mock.c: (breaker) Expected `str`, got `int`",
        ),
    ],
)
def test_a_mistake_in_an_entry_of_a_plugins_mapping_names_the_entry(tmp_path, plugin, message):
    # msgspec says "prices[...].input_per_mtok"; the key path names the model (client, provider).
    from gateway.app import Gateway

    path = write(tmp_path, MINIMAL + f"plugins: [{plugin}]\n")
    with pytest.raises(ConfigError) as caught:
        Gateway(load(path, {}))
    assert str(caught.value) == f"{path}: {message}"


def test_toml_and_json_by_extension(tmp_path):
    toml = '[providers.mock]\ntype = "mock"\n[admin]\nlisten = "127.0.0.1:9999"\n'
    assert load(write(tmp_path, toml, "g.toml"), {}).gateway.admin.listen == "127.0.0.1:9999"
    document = {"providers": {"mock": {"type": "mock"}}, "listen": "127.0.0.1:7000"}
    assert load(write(tmp_path, json.dumps(document), "g.json"), {}).gateway.listen == "127.0.0.1:7000"
    assert error_of(tmp_path, "{", name="g.json").startswith("not valid json")


def test_missing_file(tmp_path):
    path = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="absent.yaml: cannot read the file"):
        load(path, {})


def test_default_path_comes_from_gateway_config(tmp_path, monkeypatch):
    monkeypatch.setenv("GATEWAY_CONFIG", write(tmp_path, MINIMAL))
    assert "mock" in load().gateway.providers
