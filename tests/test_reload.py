"""Reload (admin POST /reload and SIGHUP): the whole configuration swaps at once, in-flight
requests finish on the old one, and an invalid config leaves the old one serving."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import openai
import pytest
import reload_plugin

from gateway.testing import run_gateway, write_config

from helpers_lifecycle import child_env, loopback_config, start_gateway

HI = [{"role": "user", "content": "Hi"}]
WORDS = "one two three four five six seven eight nine ten"


@pytest.fixture(autouse=True)
def _clean():
    reload_plugin.EVENTS.clear()


def config(tag: str, **sections: object) -> dict[str, object]:
    base: dict[str, object] = {
        "providers": {"first": {"type": "mock"}},
        "plugins": [{"use": "reload_plugin:Stamp", "config": {"tag": tag}}],
    }
    base.update(sections)
    return base


async def post_reload(admin_url: str, token: str = "") -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.post(f"{admin_url}/reload", headers=headers) as reply:
        return reply.status, await reply.json()


async def test_post_reload_swaps_providers_routes_clients_and_the_chain(tmp_path):
    async with run_gateway(config("old"), tmp_path) as gw:
        before = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
        write_config(
            config(
                "new",
                providers={"second": {"type": "mock"}},
                clients={"app": {"key": "app-key"}},
                plugins=[{"use": "reload_plugin:Stamp", "config": {"tag": "new"}}, {"use": "cost", "config": {"store": str(tmp_path / "u.db")}}],
            ),
            tmp_path,
        )
        status, body = await post_reload(gw.admin_url)
        after = await gw.openai(api_key="app-key").chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
        with pytest.raises(openai.AuthenticationError):
            await gw.openai(api_key="not-a-client").chat.completions.create(model="gpt-4o-mini", messages=HI)
        async with aiohttp.ClientSession() as session:
            stats = await (await session.get(f"{gw.admin_url}/stats")).json()
            quota = await session.get(f"{gw.admin_url}/usage/quota?client=app")  # a route of a plugin the reload added
            quota_body = await quota.json()
    assert status == 200 and body["status"] == "reloaded"
    assert [row["name"] for row in body["plugins"]] == ["reload_plugin:Stamp", "cost"]
    assert (before.headers["x-stamp"], before.headers["x-gateway-provider"]) == ("old", "first")
    assert (after.headers["x-stamp"], after.headers["x-gateway-provider"]) == ("new", "second")
    assert "x-gateway-cost-usd" in after.headers
    assert stats["requests"] == 3  # counted across both configurations
    assert quota.status == 200 and quota_body["client"] == "app"
    assert ("new", "startup") in reload_plugin.EVENTS
    assert ("old", "shutdown") in reload_plugin.EVENTS


async def test_an_in_flight_stream_finishes_on_the_old_configuration(tmp_path):
    async with run_gateway(config("old"), tmp_path) as gw:
        client = gw.openai()
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=HI,
            stream=True,
            extra_headers={"x-mock-inter-token-ms": "60", "x-mock-reply": WORDS},
        )
        stream = raw.parse()
        chunks = [await stream.__anext__()]
        write_config(config("new"), tmp_path)
        status, _ = await post_reload(gw.admin_url)
        fresh = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
        assert ("old", "shutdown") not in reload_plugin.EVENTS  # the stream still runs on it
        chunks += [chunk async for chunk in stream]
        await asyncio.sleep(0.1)
    assert status == 200
    assert raw.headers["x-stamp"] == "old" and fresh.headers["x-stamp"] == "new"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == WORDS
    assert reload_plugin.EVENTS.index(("new", "startup")) < reload_plugin.EVENTS.index(("old", "shutdown"))


@pytest.mark.parametrize(
    ("new_config", "problem"),
    [
        ("providers: {first: {type: mock}}\nplugins: [{use: reload_plugin:Stamp, config: {tag: 5}}]\n", "plugins[0].config.tag"),
        ("providers: {first: {type: mock, timeout_s: -1}}\n", "providers.first.timeout_s: must be greater than 0"),
        ("providers: [\n", "not valid yaml"),
        ("providers: {first: {type: mock}}\nplugins: [{use: reload_plugin:Stamp, config: {tag: x, fail_startup: true}}]\n", "x cannot start"),
    ],
)
async def test_an_invalid_config_is_refused_and_the_old_one_keeps_serving(tmp_path, caplog, new_config, problem):
    async with run_gateway(config("old"), tmp_path) as gw:
        (tmp_path / "gateway.yaml").write_text(new_config)
        status, body = await post_reload(gw.admin_url)
        still = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
        events = list(reload_plugin.EVENTS)
    assert status == 400
    assert body["error"]["code"] == "reload_refused"
    assert problem in body["error"]["message"]
    assert still.headers["x-stamp"] == "old"
    assert any(problem in record.getMessage() and "reload refused" in record.getMessage() for record in caplog.records)
    assert events[0] == ("old", "startup") and ("old", "shutdown") not in events
    assert all(tag != "old" for tag, _ in events[1:])  # only a refused chain's own plugins were shut


async def test_a_changed_listen_address_is_named_against_the_one_served_on_every_reload(tmp_path, caplog):
    async with run_gateway(config("old", listen="127.0.0.1:18999"), tmp_path) as gw:
        write_config(config("new", listen="127.0.0.1:18998"), tmp_path)
        first, _ = await post_reload(gw.admin_url)
        changed = [r.getMessage() for r in caplog.records if "listen changed" in r.getMessage()]
        caplog.clear()
        write_config(config("back", listen="127.0.0.1:18999"), tmp_path)  # the address it was started on
        second, _ = await post_reload(gw.admin_url)
        back = [r.getMessage() for r in caplog.records if "listen changed" in r.getMessage()]
        still = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
    assert (first, second) == (200, 200)
    assert changed == ["listen changed to 127.0.0.1:18998: listen addresses stay 127.0.0.1:18999 until a restart"]
    assert back == []  # back to what is served: nothing to warn about
    assert still.headers["x-stamp"] == "back"


async def test_post_reload_needs_the_admin_token(tmp_path):
    async with run_gateway(config("old", admin={"token": "s3cret"}), tmp_path) as gw:
        refused, _ = await post_reload(gw.admin_url)
        accepted, _ = await post_reload(gw.admin_url, token="s3cret")
    assert (refused, accepted) == (401, 200)


async def test_sighup_reloads_a_running_process_and_a_bad_file_is_a_log_line(tmp_path):
    first = loopback_config(plugins=[{"use": "reload_plugin:Stamp", "config": {"tag": "old"}}])
    env = child_env(PYTHONPATH=str(Path(reload_plugin.__file__).parent))
    async with start_gateway(first, tmp_path, env=env) as gw:
        client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="k", max_retries=0)
        write_config(loopback_config(plugins=[{"use": "reload_plugin:Stamp", "config": {"tag": "new"}}]), tmp_path)
        gw.send_signal(signal.SIGHUP)
        for _ in range(100):
            raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
            if raw.headers["x-stamp"] == "new":
                break
            await asyncio.sleep(0.05)
        assert raw.headers["x-stamp"] == "new"
        (tmp_path / "gateway.yaml").write_text("providers: {mock: {type: nope}}\n")
        gw.send_signal(signal.SIGHUP)
        for _ in range(100):
            if any("reload refused" in line for line in gw.stderr):
                break
            await asyncio.sleep(0.05)
        still = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
        await client.close()
        gw.send_signal(signal.SIGTERM)
        assert await gw.wait() == 0
    refused = [line for line in gw.log_lines() if "reload refused" in line["message"]]
    assert len(refused) == 1 and "providers.mock.type" in refused[0]["message"]
    assert still.headers["x-stamp"] == "new"


async def test_sighup_applies_a_new_log_level(tmp_path):
    async with start_gateway(loopback_config(log={"level": "warning"}), tmp_path) as gw:
        client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="k", max_retries=0)
        await client.chat.completions.create(model="gpt-4o-mini", messages=HI)  # no access line at warning
        write_config(loopback_config(log={"level": "info"}), tmp_path)
        gw.send_signal(signal.SIGHUP)
        for _ in range(100):
            await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
            if any('"gateway.access"' in line for line in gw.stderr):
                break
            await asyncio.sleep(0.05)
        await client.close()
        gw.send_signal(signal.SIGTERM)
        assert await gw.wait() == 0
    access = [line for line in gw.log_lines() if line["logger"] == "gateway.access"]
    assert access, "log.level info after the reload: access lines are written"
    assert not [line for line in gw.log_lines() if line["message"] == "ready"], "log.level warning before it"


async def test_sighup_applies_a_new_shutdown_grace_period(tmp_path):
    async with start_gateway(loopback_config(shutdown_grace_s=60), tmp_path) as gw:
        write_config(loopback_config(shutdown_grace_s=0.2), tmp_path)
        gw.send_signal(signal.SIGHUP)
        for _ in range(100):
            if any('"reloaded"' in line for line in gw.stderr):
                break
            await asyncio.sleep(0.05)
        client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="k", max_retries=0)
        words: list[str] = []
        cut = False
        headers = {"x-mock-inter-token-ms": "300", "x-mock-reply": WORDS}
        try:
            stream = await client.chat.completions.create(model="m", messages=HI, stream=True, extra_headers=headers)
            async for event in stream:
                if event.choices and event.choices[0].delta.content:
                    words.append(event.choices[0].delta.content)
                    if len(words) == 1:
                        gw.send_signal(signal.SIGTERM)  # ~3 s of stream left, far beyond the new grace
        except openai.APIError:
            cut = True
        await client.close()
        assert await gw.wait() == 0
    (draining,) = [line for line in gw.log_lines() if line["message"] == "draining"]
    assert draining["grace_s"] == 0.2
    assert cut or "".join(words).split() != WORDS.split(), "the stream was cut at the reloaded grace period"


async def test_plugins_whose_options_did_not_change_keep_their_memory_state(tmp_path):
    """Rate-limit counters, cache entries, breaker states and budgets survive a reload
    that leaves those plugins' options alone; a plugin whose options changed starts afresh."""
    stateful = [
        {"use": "ratelimit", "config": {"requests_per_minute": 5}},
        {"use": "cache", "config": {"ttl_s": 600}},
        {"use": "cost", "config": {"store": str(tmp_path / "usage.db"), "budget_usd_per_day": 1}},
        {"use": "breaker", "config": {"failure_threshold": 1, "retries": 0, "recovery_s": 60}},
    ]
    document = {"providers": {"mock": {"type": "mock"}}, "plugins": stateful}
    fail = {"x-mock-error-rate": "1", "x-mock-error-status": "503"}
    async with run_gateway(document, tmp_path) as gw:
        client = gw.openai()
        first = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI, user="a")
        with pytest.raises(openai.InternalServerError):  # the mock's 503 opens the breaker
            await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], extra_headers=fail)
        async with aiohttp.ClientSession() as session:
            quota_url = f"{gw.admin_url}/usage/quota?client=127.0.0.1"
            spent_before = (await (await session.get(quota_url)).json())["day"]["spent_usd"]
            write_config({**document, "log": {"level": "info"}}, tmp_path)  # the plugins' options unchanged
            assert (await post_reload(gw.admin_url))[0] == 200
            hit = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI, user="a")
            assert hit.headers["x-gateway-cache"] == "hit"
            assert hit.headers["x-ratelimit-remaining-requests"] == "2"  # the 3rd of 5 in this minute
            with pytest.raises(openai.InternalServerError) as opened:
                await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "y"}])
            assert opened.value.body["code"] == "circuit_open"
            assert (await (await session.get(quota_url)).json())["day"]["spent_usd"] == spent_before > 0
            changed = [{**plugin, "config": {**plugin["config"], "recovery_s": 61}} if plugin["use"] == "breaker" else plugin
                       for plugin in stateful]  # fmt: skip
            write_config({**document, "plugins": changed}, tmp_path)
            assert (await post_reload(gw.admin_url))[0] == 200
        again = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "y"}])
    assert first.headers["x-gateway-cache"] == "miss"
    assert again.headers["x-ratelimit-remaining-requests"] == "0"  # the 5th: ratelimit did not change
    assert again.headers["x-gateway-provider"] == "mock"  # the changed breaker started closed


async def test_a_changed_budget_keeps_what_was_spent_over_the_same_ledger(tmp_path):
    """Raising a budget must not forgive the day's spend: the rows of the ledger writer's
    pending batch are not in the file yet, so a new instance reading it back saw none of them."""
    cost = {"store": str(tmp_path / "usage.db"), "budget_usd_per_day": 0.0000171, "flush_interval_s": 30}  # two calls
    document = {"providers": {"mock": {"type": "mock"}}, "plugins": [{"use": "cost", "config": cost}]}
    async with run_gateway(document, tmp_path) as gw, aiohttp.ClientSession() as session:
        client = gw.openai()
        for _ in range(2):
            await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        with pytest.raises(openai.APIStatusError) as refused:
            await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        assert refused.value.status_code == 402
        quota_url = f"{gw.admin_url}/usage/quota?client=127.0.0.1"
        spent = (await (await session.get(quota_url)).json())["day"]["spent_usd"]
        raised = {**cost, "budget_usd_per_day": 0.00002565}  # three calls
        write_config({**document, "plugins": [{"use": "cost", "config": raised}]}, tmp_path)
        assert (await post_reload(gw.admin_url))[0] == 200
        day = (await (await session.get(quota_url)).json())["day"]
        assert day["spent_usd"] == spent > 0 and day["limit_usd"] == 0.00002565
        await client.chat.completions.create(model="gpt-4o-mini", messages=HI)  # the raised budget's room
        with pytest.raises(openai.APIStatusError) as again:
            await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert again.value.status_code == 402


async def test_a_plugin_that_fails_to_adopt_starts_afresh_and_says_so(tmp_path, caplog):
    async def seen(gw: object) -> str:
        raw = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)  # type: ignore[attr-defined]
        return raw.headers["x-stamp-seen"]

    async with run_gateway(config("a"), tmp_path) as gw:
        assert [await seen(gw) for _ in range(3)] == ["1", "2", "3"]
        write_config(config("a", log={"level": "info"}), tmp_path)
        assert (await post_reload(gw.admin_url))[0] == 200
        assert await seen(gw) == "4"  # adopted: the count goes on
        write_config({**config("a"), "plugins": [{"use": "reload_plugin:Stamp", "config": {"tag": "a", "fail_adopt": True}}]}, tmp_path)
        assert (await post_reload(gw.admin_url))[0] == 200  # a failed adopt does not refuse the reload
        assert await seen(gw) == "1"  # afresh
    assert any(
        "failed to adopt its state; it starts afresh" in record.getMessage() and "reload_plugin:Stamp" in record.getMessage()
        for record in caplog.records
    )
