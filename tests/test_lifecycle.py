"""The command line as a user runs it: ``python -m gateway run | check | mock-upstream``.

Every test starts a real process (see helpers_lifecycle) on free loopback ports and
talks to it with the official SDKs: the ready line, the probes, the drain on
SIGTERM and SIGINT (streams included, cut at ``shutdown_grace_s``), the exit codes,
and config errors that name the file and the key path without a traceback.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from gateway.testing import write_config

from helpers_lifecycle import (
    GatewayProcess,
    child_env,
    gateway_command,
    loopback_config,
    port_refuses_connections,
    start_gateway,
    start_mock_upstream,
)

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar"
QUESTION = [{"role": "user", "content": "Tell me the alphabet."}]


def sdk(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-caller", max_retries=0, timeout=20)


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gateway_command(*args), capture_output=True, text=True, cwd=cwd, env=env or child_env(), timeout=30
    )


class RawStream:
    """A chat stream read through the SDK's raw streaming response, SSE line by line."""

    def __init__(self) -> None:
        self.data: list[str] = []  # the payload of every "data:" line, "[DONE]" included
        self.first_token = asyncio.Event()
        self.error: BaseException | None = None

    @property
    def text(self) -> str:
        parts = []
        for data in self.data:
            if data == "[DONE]":
                continue
            for choice in json.loads(data)["choices"]:
                parts.append(choice["delta"].get("content") or "")
        return "".join(parts)

    @property
    def done(self) -> bool:
        return bool(self.data) and self.data[-1] == "[DONE]"

    async def read(self, client: openai.AsyncOpenAI, headers: dict[str, str]) -> None:
        try:
            async with client.chat.completions.with_streaming_response.create(
                model="mock-stream", messages=QUESTION, stream=True, extra_headers=headers
            ) as response:
                async for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.data.append(line[len("data: ") :])
                        if '"content":"' in line and '"content":""' not in line:
                            self.first_token.set()
        except Exception as exc:  # a stream cut at the grace period breaks the HTTP body
            self.error = exc
        finally:
            self.first_token.set()


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json(content_type=None)


# -- gateway run ------------------------------------------------------------------


async def test_run_prints_one_ready_line_then_serves_probes_and_calls(tmp_path):
    config = loopback_config(plugins=[{"use": "accesslog"}])
    async with start_gateway(config, tmp_path) as gw:
        assert gw.plugin_count == 1
        assert gw.config_path == str(tmp_path / "gateway.yaml")
        assert gw.port != 0
        assert (await get(f"{gw.admin_url}/healthz"))[0] == 200
        status, body = await get(f"{gw.admin_url}/readyz")
        assert status == 200, body

        reply = await sdk(gw.url).chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
        assert reply.choices[0].message.content.startswith("Mock reply to: Tell me the alphabet.")

        gw.send_signal(signal.SIGTERM)
        assert await gw.wait() == 0
        assert gw.stdout == [], "the ready line must be the only line on stdout"
        assert not any("Traceback" in line for line in gw.stderr)


async def test_sigterm_drains_an_in_flight_stream_whole_refuses_new_connections_and_exits_0(tmp_path):
    async with start_gateway(loopback_config(shutdown_grace_s=10), tmp_path) as gw:
        stream = RawStream()
        # 15 tokens, 100 ms apart: about 1.4 s of stream
        reading = asyncio.create_task(
            stream.read(sdk(gw.url), {"x-mock-inter-token-ms": "100", "x-mock-reply": WORDS})
        )
        await asyncio.wait_for(stream.first_token.wait(), 10)
        signalled_at = time.monotonic()
        gw.send_signal(signal.SIGTERM)

        assert await port_refuses_connections(gw.port, within_s=1.0), "the data port still accepts after SIGTERM"
        status, body = await get(f"{gw.admin_url}/readyz")
        assert status == 503 and body["status"] == "draining"
        assert not reading.done(), "the stream ended before the drain was observed; make it slower"

        await asyncio.wait_for(reading, 10)
        assert stream.error is None
        assert stream.text == WORDS
        assert stream.done, f"the stream did not end with [DONE]: {stream.data[-2:]}"
        assert await gw.wait() == 0
        assert time.monotonic() - signalled_at >= 1.0  # it waited for the stream
        messages = [line["message"] for line in gw.log_lines()]
        assert "draining" in messages and messages[-1] == "stopped"


async def test_sigterm_lets_a_slow_buffered_call_finish(tmp_path):
    async with start_gateway(loopback_config(shutdown_grace_s=10), tmp_path) as gw:
        client = sdk(gw.url)
        calling = asyncio.create_task(
            client.chat.completions.create(
                model="gpt-4o-mini", messages=QUESTION, extra_headers={"x-mock-latency-ms": "800"}
            )
        )
        await asyncio.sleep(0.3)  # the call is in the gateway, waiting for the mock
        gw.send_signal(signal.SIGTERM)
        reply = await asyncio.wait_for(calling, 10)
        assert reply.choices[0].message.content.startswith("Mock reply to:")
        assert await gw.wait() == 0


async def test_sigint_drains_and_exits_0(tmp_path):
    async with start_gateway(loopback_config(), tmp_path) as gw:
        await sdk(gw.url).chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
        gw.send_signal(signal.SIGINT)
        assert await gw.wait() == 0
        assert not any("Traceback" in line or "KeyboardInterrupt" in line for line in gw.stderr)


async def drain_a_stream_longer_than_the_grace_period(
    tmp_path: Path, grace_s: float
) -> tuple[GatewayProcess, RawStream, float, float, int]:
    """SIGTERM during a ~4 s stream: (the exited process, the stream, seconds from the
    signal to the end of the stream and to the exit, the exit status)."""
    config = loopback_config(shutdown_grace_s=grace_s, plugins=[{"use": "accesslog"}])
    async with start_gateway(config, tmp_path) as gw:
        stream = RawStream()
        # 15 tokens, 300 ms apart: about 4 s of stream, far beyond the grace period
        reading = asyncio.create_task(
            stream.read(sdk(gw.url), {"x-mock-inter-token-ms": "300", "x-mock-reply": WORDS})
        )
        await asyncio.wait_for(stream.first_token.wait(), 10)
        signalled_at = time.monotonic()
        gw.send_signal(signal.SIGTERM)
        await asyncio.wait_for(reading, 2 * grace_s + 5)
        cut_after_s = time.monotonic() - signalled_at
        code = await gw.wait(timeout_s=2 * grace_s + 5)
        exited_after_s = time.monotonic() - signalled_at
        return gw, stream, cut_after_s, exited_after_s, code


async def test_stream_longer_than_the_grace_period_is_cut_and_the_process_still_exits_0(tmp_path):
    grace_s = 1.0
    gw, stream, cut_after_s, exited_after_s, code = await drain_a_stream_longer_than_the_grace_period(tmp_path, grace_s)

    assert code == 0
    assert not stream.done
    assert len(stream.text.split()) < len(WORDS.split())
    # not before the grace period, and well before twice it (aiohttp alone would wait 2 x grace)
    assert grace_s - 0.1 <= cut_after_s < grace_s + 0.8, f"the stream was cut {cut_after_s:.2f} s after SIGTERM"
    assert exited_after_s < grace_s + 1.0, f"the process exited {exited_after_s:.2f} s after SIGTERM"
    assert not any("Traceback" in line for line in gw.stderr)
    # the cut exchange is still accounted for, as a caller that left
    (access,) = [line for line in gw.log_lines() if line["logger"] == "gateway.access"]
    assert access["status"] == 499 and access["error"] == "client_closed_request"


async def test_stream_is_cut_at_the_grace_period_itself(tmp_path):
    grace_s = 0.5
    gw, stream, cut_after_s, exited_after_s, code = await drain_a_stream_longer_than_the_grace_period(tmp_path, grace_s)

    assert code == 0 and not stream.done
    assert cut_after_s < grace_s + 0.3, f"the stream was cut {cut_after_s:.2f} s after SIGTERM"


def test_run_on_a_port_in_use_fails_with_one_line_and_no_traceback(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_config(loopback_config(listen=f"127.0.0.1:{port}"), tmp_path)
        result = run_cli("run", "--config", str(path), cwd=tmp_path)
    assert result.returncode not in (0, 2)  # not a config error: the file is fine
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert "cannot listen" in result.stderr.splitlines()[-1]


# -- config errors ------------------------------------------------------------------

BAD_CONFIGS = [
    pytest.param(
        "providers:\n  mock: {type: mock}\nmystery: 1\n", "mystery", "unknown key", id="unknown-top-level-key"
    ),
    pytest.param(
        "providers:\n  mock: {type: mock, colour: red}\n",
        "providers.mock.colour",
        "unknown key",
        id="unknown-provider-key",
    ),
    pytest.param(
        "shutdown_grace_s: soon\nproviders:\n  mock: {type: mock}\n",
        "shutdown_grace_s",
        "Expected `float`, got `str`",
        id="wrong-type",
    ),
    pytest.param(
        "providers:\n  mock: {type: mock, timeout_s: soon}\n",
        "providers.mock.timeout_s",
        "Expected `float`, got `str`",
        id="wrong-type-in-provider",
    ),
    pytest.param(
        "providers:\n  mock: {type: mock}\nplugins: [{use: no-such-plugin}]\n",
        "plugins[0].use",
        "unknown plugin 'no-such-plugin'",
        id="unknown-plugin",
    ),
    pytest.param(
        "providers:\n  mock: {type: mock}\nplugins: [{use: accesslog, config: {level: loud}}]\n",
        "plugins[0].config.level",
        "(accesslog)",
        id="bad-plugin-option",
    ),
    pytest.param(
        'providers:\n  openai: {type: openai, api_key: "${GW_TEST_SURELY_UNSET_KEY}"}\n',
        "providers.openai.api_key",
        "GW_TEST_SURELY_UNSET_KEY is not set",
        id="env-var-unset",
    ),
    pytest.param(
        "providers:\n  mock: {type: mock}\nclients:\n  app: {key: gw-key, scope: all}\n",
        "clients.app.scope",
        "unknown key",
        id="unknown-client-key",
    ),
    pytest.param(
        "providers:\n  mock: {type: mock}\nroutes: [{prefix: /v1/, provider: nowhere}]\n",
        "routes[0].provider",
        "unknown provider 'nowhere'",
        id="route-to-unknown-provider",
    ),
    pytest.param(
        "providers: [mock\n",
        "",
        "not valid yaml",
        id="malformed-yaml",
    ),
    *(
        pytest.param(
            f"providers:\n  openai: {{type: openai, base_url: '{url}'}}\n",
            "providers.openai.base_url",
            problem,
            id=name,
        )
        for name, url, problem in (
            ("base-url-port", "http://localhost:eighty", "not a valid URL: Invalid URL: port"),
            ("base-url-port-range", "http://localhost:99999/v1", "not a valid URL: Port out of range"),
            ("base-url-ipv6", "http://[::1/v1", "not a valid URL"),
            ("base-url-no-host", "https://", "names no host"),
        )
    ),
    pytest.param(
        'providers:\n  openai: {type: openai, headers: {"bad header": x}}\n',
        "providers.openai.headers",
        "'bad header' is not a header name",
        id="provider-header-name",
    ),
    pytest.param(
        'providers:\n  openai: {type: openai, api_key: "sk-read-from-a-file\\n"}\n',
        "providers.openai.api_key",
        "contains a line break or NUL (the key is not shown)",
        id="provider-key-with-newline",
    ),
    pytest.param(
        'providers:\n  mock: {type: mock}\nclients:\n  app: {key: "gw-key-from-a-file\\n"}\n',
        "clients.app.key",
        "contains a line break or NUL (the key is not shown)",
        id="client-key-with-newline",
    ),
    *(
        pytest.param(
            f"providers:\n  mock: {{type: mock}}\nplugins: [{{use: {use}, config: {{{key}: '{url}'{extra}}}}}]\n",
            f"plugins[0].config.{key}",
            problem,
            id=f"redis-url-{use}",
        )
        for use, key, url, extra, problem in (
            ("ratelimit", "backend", "redis://:pw@localhost:notaport/0", ", requests_per_minute: 5", "Redis URL: Port"),
            ("cache", "backend", "redis://localhost:99999/0", "", "out of range"),
            ("breaker", "backend", "unix://", "", "socket's path"),
            ("cost", "store", "redis://localhost/0?socket_timeout=soon", "", "socket_timeout"),
        )
    ),
]


def assert_one_line_config_error(result: subprocess.CompletedProcess[str], path: Path, key_path: str, problem: str):
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    where = f"{path}: {key_path}" if key_path else str(path)
    assert lines[0].startswith(f"config error: {where}: "), lines[0]
    assert problem in lines[0]
    # never a secret of the config: a URL's password, a key read from a file
    assert ":pw@" not in result.stderr and "from-a-file" not in result.stderr


@pytest.mark.parametrize(("text", "key_path", "problem"), BAD_CONFIGS)
def test_check_rejects_a_bad_config_with_exit_2_and_one_line_naming_file_and_key(tmp_path, text, key_path, problem):
    path = write_config(text, tmp_path)
    result = run_cli("check", "--config", str(path), cwd=tmp_path)
    assert_one_line_config_error(result, path, key_path, problem)
    assert result.stdout == ""


RUN_CASES = {
    "unknown-provider-key", "wrong-type", "unknown-plugin", "bad-plugin-option", "env-var-unset", "base-url-port",
}  # fmt: skip


@pytest.mark.parametrize(("text", "key_path", "problem"), [case for case in BAD_CONFIGS if case.id in RUN_CASES])
def test_run_rejects_a_bad_config_with_exit_2_before_serving(tmp_path, text, key_path, problem):
    path = write_config(text, tmp_path)
    result = run_cli("run", "--config", str(path), cwd=tmp_path)
    assert_one_line_config_error(result, path, key_path, problem)
    assert result.stdout == "", "no ready line for a config that does not load"


@pytest.mark.parametrize("command", ["run", "check"])
def test_an_unknown_otel_exporter_is_rejected_with_exit_2(tmp_path, command):
    path = write_config(loopback_config(), tmp_path)
    env = child_env(OTEL_TRACES_EXPORTER="carrier-pigeon")
    result = run_cli(command, "--config", str(path), cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "OTEL_TRACES_EXPORTER" in result.stderr and "carrier-pigeon" in result.stderr


@pytest.mark.parametrize("command", ["run", "check"])
@pytest.mark.parametrize("rate", ["2", "-0.5", "nan", "half"])
def test_a_sampler_ratio_outside_0_to_1_is_rejected_with_exit_2(tmp_path, command, rate):
    path = write_config(loopback_config(), tmp_path)
    env = child_env(OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG=rate)
    result = run_cli(command, "--config", str(path), cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "OTEL_TRACES_SAMPLER_ARG" in result.stderr and repr(rate) in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_span_limit_that_is_not_a_number_is_rejected_with_exit_2(tmp_path, command):
    path = write_config(loopback_config(), tmp_path)
    env = child_env(OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT="lots")
    result = run_cli(command, "--config", str(path), cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["run", "check"])
def test_an_unknown_otel_propagator_is_rejected_with_exit_2(tmp_path, command):
    path = write_config(loopback_config(), tmp_path)
    result = run_cli(command, "--config", str(path), cwd=tmp_path, env=child_env(OTEL_PROPAGATORS="smoke-signals"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "OTEL_PROPAGATORS" in result.stderr and "smoke-signals" in result.stderr
    assert result.stdout == ""


def test_check_prints_the_chain_and_exits_0(tmp_path):
    path = write_config(loopback_config(plugins=[{"use": "accesslog", "name": "audit"}]), tmp_path)
    result = run_cli("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path}: ok"
    assert "provider mock: mock mock://mock" in lines
    assert "chain (1 plugin):" in lines
    assert any(line.strip().startswith("0. audit (gateway_plugins.accesslog.AccessLog") for line in lines)
    assert result.stderr == ""


def test_check_reads_the_config_path_from_gateway_config(tmp_path):
    path = write_config(loopback_config(), tmp_path, name="from-env.yaml")
    result = run_cli("check", cwd=tmp_path, env=child_env(GATEWAY_CONFIG=str(path)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"{path}: ok"


def test_python_dash_m_gateway_is_the_gateway_command(tmp_path):
    script = Path(sys.executable).parent / "gateway"
    if not script.exists():
        pytest.skip("the console script is not installed next to the interpreter")
    path = write_config(loopback_config(plugins=[{"use": "accesslog"}]), tmp_path)
    for args in (("check", "--config", str(path)), ("--version",), ("plugins",)):
        by_module = run_cli(*args, cwd=tmp_path)
        by_script = subprocess.run(
            [str(script), *args], capture_output=True, text=True, cwd=tmp_path, env=child_env(), timeout=30
        )
        assert by_module.returncode == by_script.returncode == 0, (by_module, by_script)
        assert by_module.stdout == by_script.stdout != ""


# -- gateway mock-upstream ------------------------------------------------------------


async def test_mock_upstream_prints_its_url_and_the_openai_sdk_can_call_it(tmp_path):
    async with start_mock_upstream(tmp_path) as (process, url):
        client = sdk(url)
        reply = await client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
        assert reply.model == "gpt-4o-mini"
        assert reply.usage.completion_tokens == len(reply.choices[0].message.content.split())
        chunks = [
            chunk
            async for chunk in await client.chat.completions.create(
                model="gpt-4o-mini", messages=QUESTION, stream=True, stream_options={"include_usage": True}
            )
        ]
        assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0


HANGS = """
import asyncio

from gateway import hookimpl


class Hangs:
    @hookimpl
    async def {hook}(self, {argument}):
        await asyncio.sleep(3600)
"""


@pytest.mark.parametrize(
    ("hook", "argument", "logged"),
    [("complete", "exchange", "unfinished complete hook"), ("shutdown", "gateway", "did not shut down")],
)
async def test_a_hook_that_never_returns_is_cancelled_at_the_grace_period_and_the_process_exits_0(
    tmp_path, hook, argument, logged
):
    # Before: stop() awaited every complete and shutdown hook without a bound: SIGTERM never ended the process.
    (tmp_path / "hangs.py").write_text(HANGS.format(hook=hook, argument=argument))
    config = loopback_config(shutdown_grace_s=1, plugins=[{"use": "hangs:Hangs"}, {"use": "accesslog"}])
    async with start_gateway(config, tmp_path) as gw:
        reply = await sdk(gw.url).chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
        assert reply.choices[0].message.content.startswith("Mock reply to:")
        gw.send_signal(signal.SIGTERM)
        assert await gw.wait(timeout_s=15) == 0
    assert any(logged in line["message"] for line in gw.log_lines())
