"""The ratelimit plugin's parts on their own: GCRA arithmetic, the memory store,
OpenAI's duration format, the options, and the hooks with a fake exchange."""

from __future__ import annotations

import time

import msgspec
import pytest

from gateway import Exchange, GatewayError, Usage
from gateway.config import ConfigError, load
from gateway.testing import write_config
from gateway_plugins.ratelimit import RESERVATION, Config, RateLimit
from gateway_plugins.ratelimit.gcra import Limit, MemoryStore, go_duration, remaining


def rpm(amount: int) -> Limit:
    return Limit("requests_per_minute", "requests", 60.0, amount, "rpm")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0201, "21ms"),
        (0.02, "20ms"),
        (0.9999, "1s"),
        (1, "1s"),
        (1.5, "1.5s"),
        (8.64, "8.64s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (3723, "1h2m3s"),
        (86400, "24h0m0s"),
    ],
)
def test_reset_durations_are_written_the_way_openai_writes_them(seconds, text):
    assert go_duration(seconds) == text


def test_a_fresh_caller_may_spend_the_whole_limit_at_once_then_one_per_interval(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    store = MemoryStore(max_callers=10)
    limits = (rpm(6),)
    charge = [limits[0].interval_s]  # 10 s a request
    assert [store.take("a", limits, charge)[0] for _ in range(7)] == [True] * 6 + [False]
    clock[0] += 9.9
    assert store.take("a", limits, charge)[0] is False
    clock[0] += 0.1
    assert store.take("a", limits, charge)[0] is True
    # No double burst: after a whole quiet minute the caller has 6 again, never 12.
    clock[0] += 600
    assert [store.take("a", limits, charge)[0] for _ in range(7)] == [True] * 6 + [False]


def test_a_refused_request_spends_nothing_on_any_limit(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    store = MemoryStore(max_callers=10)
    limits = (rpm(100), Limit("tokens_per_minute", "tokens", 60.0, 1000, "tpm"))
    tokens = limits[1].interval_s
    assert store.take("a", limits, [limits[0].interval_s, 900 * tokens])[0]
    allowed, levels = store.take("a", limits, [limits[0].interval_s, 200 * tokens])
    assert not allowed
    assert remaining(limits[0], levels[0], 1.0) == 99  # the request limit was not charged either
    assert remaining(limits[1], levels[1], 1.0) == 100


def test_settling_refunds_unused_tokens_and_charges_a_debt(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    store = MemoryStore(max_callers=10)
    limits = (Limit("tokens_per_minute", "tokens", 60.0, 1000, "tpm"),)
    per_token = limits[0].interval_s
    store.take("a", limits, [800 * per_token])
    store.settle("a", 1, [(0, -700 * per_token)])  # used 100 of the 800
    _, levels = store.take("a", limits, [0.0])
    assert remaining(limits[0], levels[0], 1.0) == 900
    store.settle("a", 1, [(0, 1900 * per_token)])  # a debt beyond the limit...
    allowed, _ = store.take("a", limits, [per_token])
    assert not allowed  # ...is paid off before the next admission


def test_idle_callers_expire_and_the_store_stays_bounded(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    store = MemoryStore(max_callers=3)
    limits = (rpm(60),)
    for caller in "abc":
        store.take(caller, limits, [1.0])
    clock[0] += 1.0
    assert store.sweep() == 3 and not store.tats
    for caller in "abcd":  # a fourth busy caller evicts the oldest
        store.take(caller, limits, [1.0])
    assert list(store.tats) == ["b", "c", "d"] and store.evicted == 1


def exchange(body: dict | None = None, *, caller: str = "alice", path: str = "/v1/chat/completions") -> Exchange:
    return Exchange(
        None,
        method="POST",
        path=path,
        headers={"Content-Type": "application/json"},
        body=msgspec.json.encode(body) if body is not None else b"",
        caller=caller,
    )


async def test_the_token_estimate_is_prompt_bytes_over_four_plus_max_tokens():
    plugin = RateLimit(Config(tokens_per_minute=100_000))
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        body = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}], key: 300}
        request = exchange(body)
        assert plugin._estimate(request) == len(request.body) // 4 + 300
    request = exchange({"model": "m", "input": "x" * 400}, path="/v1/embeddings")
    assert plugin._estimate(request) == len(request.body) // 4
    request = exchange({"model": "m", "messages": []})
    assert plugin._estimate(request) == len(request.body) // 4 + 256  # default_max_tokens


async def test_hooks_with_a_fake_exchange_settle_to_the_reported_usage():
    plugin = RateLimit(Config(tokens_per_minute=1000, requests_per_minute=10))
    first = exchange({"model": "m", "messages": [], "max_tokens": 600})
    await plugin.request(first)
    assert first.state[RESERVATION].token_indexes == (1,)
    first.usage = Usage(input_tokens=10, output_tokens=40)
    await plugin.complete(first)
    second = exchange({"model": "m", "messages": [], "max_tokens": 0})
    await plugin.request(second)
    left = int(second.response_headers["x-ratelimit-remaining-tokens"])
    assert 1000 - 50 - len(second.body) // 4 - 1 <= left <= 1000 - 50
    assert second.response_headers["x-ratelimit-remaining-requests"] == "8"


async def test_one_limit_gives_its_three_headers_halved_for_a_flagged_caller():
    plugin = RateLimit(Config(requests_per_minute=10, flagged_multiplier=0.5))
    plain = exchange({"model": "m", "messages": []})
    await plugin.request(plain)
    assert plain.response_headers == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "6s",
    }
    flagged = exchange({"model": "m", "messages": []}, caller="bob")
    flagged.threat_severity = "HIGH"
    await plugin.request(flagged)
    assert flagged.response_headers == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-reset-requests": "12s",
    }
    await plugin.complete(plain)  # request limits only: nothing to settle
    assert plugin.settled == 0


async def test_a_request_larger_than_the_whole_limit_waits_for_a_full_bucket():
    plugin = RateLimit(Config(tokens_per_minute=1000))
    await plugin.request(exchange({"model": "m", "messages": [], "max_tokens": 50_000}))
    with pytest.raises(GatewayError) as caught:
        await plugin.request(exchange({"model": "m", "messages": [], "max_tokens": 50_000}))
    assert caught.value.status == 429
    assert 59 <= int(caught.value.headers["Retry-After"]) <= 60


@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({}, "plugins[0].config", "set at least one limit"),
        ({"requests_per_minute": 0}, "plugins[0].config.requests_per_minute", "Expected `int` >= 1"),
        (
            {"requests_per_minute": 5, "backend": "memcached://x"},
            "plugins[0].config.backend",
            "expected memory or a redis",
        ),
        (
            {"requests_per_minute": 5, "failure_mode": "maybe"},
            "plugins[0].config.failure_mode",
            "Invalid enum value 'maybe'",
        ),
        ({"requests_per_minute": 5, "flagged_multiplier": 2}, "plugins[0].config.flagged_multiplier", "<= 1"),
        (
            {"requests_per_minute": 5, "clients": {"x": {"rpm": 1}}},
            "plugins[0].config.clients",
            "rpm: (ratelimit) unknown key",
        ),
    ],
)
def test_bad_options_are_a_startup_error_naming_the_key(tmp_path, options, key, problem):
    from gateway.app import Gateway

    config = {"providers": {"mock": {"type": "mock"}}, "plugins": [{"use": "ratelimit", "config": options}]}
    with pytest.raises(ConfigError) as caught:
        Gateway(load(str(write_config(config, tmp_path))))
    message = str(caught.value)
    assert key in message and problem in message and "(ratelimit)" in message


def test_every_option_is_documented():
    from pathlib import Path

    docs = (Path(__file__).resolve().parent.parent / "docs" / "ratelimit.md").read_text()
    for name in Config.__struct_fields__:
        assert f"`{name}`" in docs, name
