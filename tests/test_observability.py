"""What an SRE reads: /metrics, the access line, Server-Timing, /traces.json and the trace page."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import Exchange, hookimpl
from gateway.logs import GatewayHandler, JsonFormatter
from gateway.metrics import Metrics, ModelLabels, PluginCollector, route_of
from gateway.telemetry import RateLimitingSampler, TraceBuffer
from gateway.testing import run_gateway

from helpers_lifecycle import loopback_config, start_gateway

CHAT = [{"role": "user", "content": "a prompt nobody may log"}]
PROVIDER_KEY = "sk-provider-secret-0123"
CLIENT_KEY = "gw-client-secret-4567"


class Facts:
    """Sets every fact plugins share, as scan, cache, cost and cascade would, and
    reports figures in the stats() convention."""

    @hookimpl
    async def request(self, exchange: Exchange) -> None:
        exchange.threat_severity = "LOW"
        exchange.cache_status = "miss"
        exchange.cascade_decision = "accepted"
        return None

    @hookimpl
    async def complete(self, exchange: Exchange) -> None:
        exchange.cost_usd = 0.25

    @hookimpl
    def stats(self) -> dict:
        return {
            "hits": 3,
            "hit_rate": 0.75,
            "enabled": True,
            "mode": "block",  # not a number: left out
            "detections_by_family": {"pii": 2, "secret": 1},
            "state_by_provider": {"openai": 2, "mock": 0},
            "backend": {"errors": 4},
        }


def mock_config(**sections):
    config = {"providers": {"mock": {"type": "mock", "api_key": PROVIDER_KEY}}}
    config.update(sections)
    return config


async def get_text(url: str, headers: dict | None = None) -> tuple[int, dict, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers or {}) as reply:
            return reply.status, dict(reply.headers), await reply.text()


async def scrape(gw) -> list[tuple[str, dict[str, str], float]]:
    status, headers, text = await get_text(gw.admin_url + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include these."""
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == want for k, want in labels.items()))


def label_values(samples, name: str, label: str) -> set[str]:
    return {l[label] for n, l, _ in samples if n == name and label in l}


# -- /metrics ---------------------------------------------------------------------------


async def test_requests_are_counted_by_route_provider_model_and_status(tmp_path):
    async with run_gateway(mock_config(), tmp_path) as gw:
        client = gw.openai()
        for _ in range(2):
            await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
        await client.embeddings.create(model="text-embedding-3-small", input="x")
        await gw.anthropic().messages.create(model="claude-3-5-haiku-latest", max_tokens=20, messages=CHAT)
        async with aiohttp.ClientSession() as session:  # a path outside the fixed set, with ids in it
            async with session.get(
                gw.url + "/v1/files/file-abc123/content", headers={"x-request-id": "req-unique-42"}
            ) as r:
                await r.read()
        samples = await scrape(gw)
    assert (
        value(
            samples,
            "gateway_requests_total",
            route="/v1/chat/completions",
            provider="mock",
            model="gpt-4o-mini",
            status="200",
        )
        == 2
    )
    assert value(samples, "gateway_requests_total", route="/v1/embeddings", model="text-embedding-3-small") == 1
    assert value(samples, "gateway_requests_total", route="/v1/messages", model="claude-3-5-haiku-latest") == 1
    assert value(samples, "gateway_requests_total", route="other") == 1
    assert value(samples, "gateway_request_duration_seconds_count", route="/v1/chat/completions") == 2
    assert value(samples, "gateway_upstream_duration_seconds_count", provider="mock", model="gpt-4o-mini") == 2
    assert value(samples, "gateway_requests_in_flight") == 0
    every_label_value = {v for _, labels, _ in samples for v in labels.values()}
    assert not any("abc123" in v or "req-unique" in v for v in every_label_value), (
        "no raw path or request id as a label"
    )


async def test_genai_client_metrics_carry_token_usage_by_type_and_operation_duration(tmp_path):
    async with run_gateway(mock_config(), tmp_path) as gw:
        reply = await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=CHAT)
        samples = await scrape(gw)
    usage = reply.usage
    where = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "mock", "gen_ai_request_model": "gpt-4o-mini"}
    assert value(samples, "gen_ai_client_token_usage_sum", gen_ai_token_type="input", **where) == usage.prompt_tokens
    assert (
        value(samples, "gen_ai_client_token_usage_sum", gen_ai_token_type="output", **where) == usage.completion_tokens
    )
    assert value(samples, "gen_ai_client_token_usage_count", gen_ai_token_type="input", **where) == 1
    assert value(samples, "gen_ai_client_operation_duration_seconds_count", **where) == 1
    buckets = [
        l["le"]
        for n, l, _ in samples
        if n == "gen_ai_client_operation_duration_seconds_bucket" and l.get("gen_ai_request_model") == "gpt-4o-mini"
    ]
    assert buckets[0] == "0.01" and buckets[-1] == "+Inf"  # the semantic conventions' advice


async def test_tokens_and_cost_are_counted_by_provider_model_and_client(tmp_path):
    config = mock_config(clients={"frontend": {"key": CLIENT_KEY}}, plugins=[{"use": "test_observability:Facts"}])
    async with run_gateway(config, tmp_path) as gw:
        reply = await gw.openai(api_key=CLIENT_KEY).chat.completions.create(model="gpt-4o-mini", messages=CHAT)
        await gw.openai(api_key=CLIENT_KEY).chat.completions.create(model="gpt-4o-mini", messages=CHAT)
        _, _, text = await get_text(gw.admin_url + "/metrics")
        samples = await scrape(gw)
    where = {"provider": "mock", "model": "gpt-4o-mini", "client": "frontend"}
    assert value(samples, "gateway_tokens_total", type="input", **where) == 2 * reply.usage.prompt_tokens
    assert value(samples, "gateway_tokens_total", type="output", **where) == 2 * reply.usage.completion_tokens
    assert value(samples, "gateway_cost_usd_total", **where) == 0.5
    assert CLIENT_KEY not in text and PROVIDER_KEY not in text


async def test_plugin_figures_follow_the_stats_convention(tmp_path):
    config = mock_config(plugins=[{"use": "test_observability:Facts", "name": "my-scan"}])
    async with run_gateway(config, tmp_path) as gw:
        samples = await scrape(gw)
    assert value(samples, "gateway_my_scan_hits") == 3
    assert value(samples, "gateway_my_scan_hit_rate") == 0.75
    assert value(samples, "gateway_my_scan_enabled") == 1
    assert value(samples, "gateway_my_scan_detections", family="pii") == 2
    assert value(samples, "gateway_my_scan_detections", family="secret") == 1
    assert value(samples, "gateway_my_scan_state", provider="openai") == 2
    assert value(samples, "gateway_my_scan_backend_errors") == 4
    assert value(samples, "gateway_plugin_failures", plugin="my-scan") == 0
    assert not [n for n, _, _ in samples if "mode" in n]


def test_plugin_collector_skips_what_is_not_a_number():
    collector = PluginCollector()
    collector.figures = {
        "p": {"failures": 1, "text": "x", "none": None, "by_nothing": {"a": "b"}, "odd_by_label": {"k": 1.5}}
    }
    names = {(s.name, tuple(sorted(s.labels.items())), s.value) for m in collector.collect() for s in m.samples}
    assert names == {("gateway_plugin_failures", (("plugin", "p"),), 1.0), ("gateway_p_odd", (("label", "k"),), 1.5)}


async def test_unknown_models_fold_into_other(tmp_path):
    async with run_gateway(mock_config(), tmp_path) as gw:
        gw.gateway.metrics.models.limit = 2
        for model in ("m1", "m2", "m3"):
            await gw.openai().chat.completions.create(model=model, messages=CHAT)
        async with aiohttp.ClientSession() as session:  # an answer the upstream refused earns no label
            async with session.post(
                gw.url + "/v1/chat/completions",
                json={"model": "<junk>", "messages": CHAT},
                headers={"x-mock-error-rate": "1", "x-mock-error-status": "404"},
            ) as r:
                assert r.status == 404
        samples = await scrape(gw)
    assert label_values(samples, "gateway_requests_total", "model") == {"m1", "m2", "other"}
    assert value(samples, "gateway_requests_total", model="other") == 2


def test_model_labels_admit_only_accepted_models_up_to_the_limit():
    labels = ModelLabels(limit=1)
    assert labels.fold("refused", 404) == "other"
    assert labels.fold("gpt-4o", 200) == "gpt-4o"
    assert labels.fold("gpt-4o", 500) == "gpt-4o"
    assert labels.fold("claude", 200) == "other"
    assert labels.fold(None, 200) == "none"


def test_routes_are_a_fixed_set():
    assert route_of("/v1/chat/completions") == "/v1/chat/completions"
    assert route_of("/v1/models/gpt-4o") == "/v1/models"
    assert route_of("/v1/files/file-1") == "other"
    assert route_of("/admin/../etc") == "other"


def test_histogram_buckets_count_a_value_equal_to_a_bound_in_it():
    metrics = Metrics()
    exchange = Exchange(None, method="POST", path="/v1/embeddings", body=b"")
    exchange.gateway_s = 0.001
    metrics.record(exchange, 200, None)
    body, _ = metrics.exposition({})
    assert 'gateway_overhead_seconds_bucket{le="0.001",provider="none",route="/v1/embeddings"} 1.0' in body.decode()
    assert 'gateway_overhead_seconds_bucket{le="0.0005",provider="none",route="/v1/embeddings"} 0.0' in body.decode()


# -- Server-Timing and the overhead histogram ---------------------------------------------------


SERVER_TIMING = re.compile(r"^gateway;dur=(?P<gateway>[0-9.]+), upstream;dur=(?P<upstream>[0-9.]+)$")


async def test_overhead_histogram_matches_the_server_timing_headers(tmp_path):
    gateway_ms = upstream_ms = 0.0
    async with run_gateway(mock_config(), tmp_path) as gw:
        async with aiohttp.ClientSession() as session:
            for i in range(5):
                body = {"model": "gpt-4o-mini", "messages": CHAT, "stream": i % 2 == 1}
                async with session.post(
                    gw.url + "/v1/chat/completions", json=body, headers={"x-mock-latency-ms": "3"}
                ) as reply:
                    await reply.read()
                    timing = SERVER_TIMING.match(reply.headers["Server-Timing"])
                    assert timing, reply.headers["Server-Timing"]
                    gateway_ms += float(timing["gateway"])
                    upstream_ms += float(timing["upstream"])
            # an answer the upstream refuses has the header too, and counts
            async with session.post(
                gw.url + "/v1/chat/completions", data=b"{not json", headers={"content-type": "application/json"}
            ) as reply:
                assert reply.status == 400
                timing = SERVER_TIMING.match(reply.headers["Server-Timing"])
                gateway_ms += float(timing["gateway"])
                upstream_ms += float(timing["upstream"])
        samples = await scrape(gw)
    # each header rounds to 0.001 ms
    assert value(samples, "gateway_overhead_seconds_count") == 6
    assert value(samples, "gateway_overhead_seconds_sum") * 1000 == pytest.approx(gateway_ms, abs=6 * 0.0005 + 1e-9)
    assert value(samples, "gateway_upstream_duration_seconds_sum") * 1000 == pytest.approx(
        upstream_ms, abs=5 * 0.0005 + 1e-9
    )
    assert value(samples, "gateway_time_to_first_token_seconds_count") == 2


# -- the access line -----------------------------------------------------------------------


class JsonLines(logging.Handler):
    """Formats each record as it is emitted (in the request's context), like the real stderr handler."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def access_lines():
    handler = JsonLines()
    logger = logging.getLogger("gateway.access")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_every_request_gets_one_access_line_with_its_facts_and_never_a_key_or_prompt(tmp_path, access_lines):
    config = mock_config(
        clients={"frontend": {"key": CLIENT_KEY}}, plugins=[{"use": "test_observability:Facts"}, {"use": "accesslog"}]
    )
    async with run_gateway(config, tmp_path) as gw:
        reply = await gw.openai(api_key=CLIENT_KEY).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=CHAT, extra_headers={"x-request-id": "req-access-1"}
        )
        stream = await gw.openai(api_key=CLIENT_KEY).chat.completions.create(
            model="gpt-4o-mini", messages=CHAT, stream=True, stream_options={"include_usage": True}
        )
        async for _ in stream:
            pass
        async with aiohttp.ClientSession() as session:
            async with session.post(gw.url + "/v1/chat/completions", json={"model": "m", "messages": CHAT}) as refused:
                assert refused.status == 401
        spans = gw.spans_named("POST /v1/chat/completions")
    assert len(access_lines) == 3, "one line per request, even with the accesslog plugin in the chain"
    first = access_lines[0]
    assert first["request_id"] == "req-access-1"
    assert first["trace_id"] == format(spans[0].context.trace_id, "032x")
    assert first["logger"] == "gateway.access" and first["level"] == "info"
    usage = reply.parse().usage
    expected = {
        "method": "POST", "path": "/v1/chat/completions", "route": "/v1/chat/completions", "status": 200,
        "caller": "frontend", "client": "frontend", "provider": "mock", "model": "gpt-4o-mini", "stream": False,
        "attempts": 1, "input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
        "cost_usd": 0.25, "cache": "miss", "threat": "LOW", "cascade": "accepted", "error": None,
        "tokens": usage.total_tokens, "cost": 0.25,
    }  # fmt: skip
    assert {key: first[key] for key in expected} == expected
    for key in ("duration_ms", "upstream_ms", "gateway_ms"):
        assert first[key] > 0
    assert access_lines[1]["stream"] is True and access_lines[1]["first_token_ms"] > 0
    assert access_lines[1]["output_tokens"] > 0
    assert access_lines[2]["status"] == 401 and access_lines[2]["error"] == "invalid_api_key"
    assert (access_lines[2]["tokens"], access_lines[2]["cost"]) == (None, None)
    text = json.dumps(access_lines)
    for secret in (CLIENT_KEY, PROVIDER_KEY, "a prompt nobody may log"):
        assert secret not in text


def _concurrent_traced_calls(count: int) -> list[tuple[str, str]]:
    """(x-request-id, trace id) of ``count`` requests, each continuing a trace of its own."""
    return [(f"req-concurrent-{i}", f"{i + 1:032x}") for i in range(count)]


async def _send_concurrently(url: str, calls: list[tuple[str, str]]) -> None:
    async with aiohttp.ClientSession() as session:

        async def one(request_id: str, trace_id: str) -> None:
            headers = {"x-request-id": request_id, "traceparent": f"00-{trace_id}-{'1' * 16}-01"}
            body = {"model": "gpt-4o-mini", "messages": CHAT}
            async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as reply:
                assert reply.status == 200
                await reply.read()

        await asyncio.gather(*(one(*call) for call in calls))


async def test_concurrent_requests_each_get_their_own_request_and_trace_id_on_the_access_line(tmp_path, access_lines):
    """Access lines of exchanges that end in one loop pass are written together, in the first one's
    context: each must still carry its own request's ids (through logging: another handler is on)."""
    calls = _concurrent_traced_calls(20)
    async with run_gateway(mock_config(), tmp_path) as gw:
        await _send_concurrently(gw.url, calls)
    assert sorted((line["request_id"], line["trace_id"]) for line in access_lines) == sorted(calls)


class BreaksOneRecord:
    """Gives one request (x-request-id ``req-concurrent-7``) a cost the metrics cannot count."""

    @hookimpl
    async def complete(self, exchange: Exchange) -> None:
        if exchange.request_id == "req-concurrent-7":
            exchange.cost_usd = "not a number"  # type: ignore[assignment]


async def test_a_failure_to_record_one_of_concurrent_requests_is_logged_with_that_request_s_ids(tmp_path):
    """Records are made together after a loop pass, in its first exchange's context: the
    failure's log line must still name the request whose record failed."""
    handler = JsonLines()
    logger = logging.getLogger("gateway")  # gateway.app's
    logger.addHandler(handler)
    calls = _concurrent_traced_calls(20)
    try:
        config = mock_config(plugins=[{"use": "test_observability:BreaksOneRecord"}])
        async with run_gateway(config, tmp_path) as gw:
            await _send_concurrently(gw.url, calls)
    finally:
        logger.removeHandler(handler)
    failures = [line for line in handler.lines if line["message"].startswith("recording the metrics")]
    assert [(line["request_id"], line["trace_id"]) for line in failures] == [calls[7]]


async def test_gateway_run_access_lines_of_concurrent_requests_carry_their_own_ids(tmp_path):
    """The same through the stderr handler alone (the access line's direct path), in a real process."""
    calls = _concurrent_traced_calls(20)
    async with start_gateway(loopback_config(), tmp_path) as gw:
        await _send_concurrently(gw.url, calls)
        gw.send_signal()
        assert await gw.wait() == 0
        lines = gw.log_lines()
    access = [line for line in lines if line["logger"] == "gateway.access"]
    assert sorted((line["request_id"], line["trace_id"]) for line in access) == sorted(calls)


@pytest.mark.parametrize(
    ("log", "lines"),
    [
        pytest.param({"access": False}, 0, id="access-off"),
        pytest.param({"access_level": "debug"}, 0, id="below-the-logger-level"),
        pytest.param({"access_level": "warning"}, 1, id="warning"),
    ],
)
async def test_access_line_can_be_turned_off_or_given_a_level(tmp_path, access_lines, log, lines):
    async with run_gateway(mock_config(log=log), tmp_path) as gw:
        await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    assert len(access_lines) == lines
    if lines:
        assert access_lines[0]["level"] == log["access_level"]


async def test_gateway_run_writes_the_access_line_without_any_plugin(tmp_path):
    async with start_gateway(loopback_config(), tmp_path) as gw:
        async with aiohttp.ClientSession() as session:
            body = {"model": "gpt-4o-mini", "messages": CHAT}
            async with session.post(
                gw.url + "/v1/chat/completions", json=body, headers={"x-request-id": "req-proc-1"}
            ) as r:
                assert r.status == 200
        gw.send_signal()
        assert await gw.wait() == 0
        lines = gw.log_lines()
    (access,) = [line for line in lines if line["logger"] == "gateway.access"]
    assert access["request_id"] == "req-proc-1" and re.match(r"^[0-9a-f]{32}$", access["trace_id"])
    assert access["status"] == 200 and access["model"] == "gpt-4o-mini" and access["upstream_ms"] > 0


async def test_access_lines_ending_in_one_loop_iteration_go_out_in_one_write_in_order():
    """The stderr handler queues access lines until the loop iteration is over; any other line
    writes the queued ones first, so the order of lines is what happened."""

    class Counting(io.BytesIO):
        writes = 0

        def write(self, data):  # type: ignore[override]
            Counting.writes += 1
            return super().write(data)

    binary = Counting()
    handler = GatewayHandler(io.TextIOWrapper(binary, encoding="utf-8"))
    handler.setFormatter(JsonFormatter())
    handler.write_line(b'{"n":1}')
    handler.write_line(b'{"n":2}')
    assert binary.getvalue() == b""
    await asyncio.sleep(0)
    assert binary.getvalue() == b'{"n":1}\n{"n":2}\n' and Counting.writes == 1
    handler.write_line(b'{"n":3}')
    handler.handle(logging.LogRecord("gateway", logging.WARNING, "", 0, "after three", None, None))
    handler.write_line(b'{"n":4}')
    handler.flush()  # what logging does at exit
    lines = [json.loads(line) for line in binary.getvalue().splitlines()]
    assert [line.get("n", line.get("message")) for line in lines] == [1, 2, 3, "after three", 4]

    class Closed(io.StringIO):
        def write(self, text):  # type: ignore[override]
            raise OSError("stderr is gone")

    failed: list[str] = []
    broken = GatewayHandler(Closed())
    broken.handleError = lambda record: failed.append(record.getMessage())  # type: ignore[method-assign]
    broken.write_line(b'{"n":5}')
    await asyncio.sleep(0)  # the loop's callback does not raise: logging's error path has it
    assert failed == ["access lines not written"] and not broken._lines


# -- /traces.json ------------------------------------------------------------------------------


async def test_traces_json_lists_recent_requests_newest_first_with_their_spans(tmp_path):
    config = mock_config(plugins=[{"use": "test_observability:Facts", "name": "facts"}])
    async with run_gateway(config, tmp_path) as gw:
        for i in range(3):
            await gw.openai().chat.completions.create(
                model="gpt-4o-mini", messages=CHAT, extra_headers={"x-request-id": f"req-{i}"}
            )
        status, headers, text = await get_text(gw.admin_url + "/traces.json?limit=2")
        _, _, everything = await get_text(gw.admin_url + "/traces.json")
        bad, _, _ = await get_text(gw.admin_url + "/traces.json?limit=many")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    traces = json.loads(text)["traces"]
    assert [t["request_id"] for t in traces] == ["req-2", "req-1"]
    assert len(json.loads(everything)["traces"]) == 3 and bad == 400
    latest = traces[0]
    assert {"trace_id", "request_id", "status", "duration_ms", "spans"} <= set(latest)
    assert latest["status"] == 200 and latest["duration_ms"] > 0 and re.match(r"^[0-9a-f]{32}$", latest["trace_id"])
    assert (latest["cache"], latest["threat"], latest["cascade"], latest["cost_usd"]) == (
        "miss",
        "LOW",
        "accepted",
        0.25,
    )
    spans = latest["spans"]
    for span in spans:
        assert set(span) >= {
            "name",
            "span_id",
            "parent_span_id",
            "kind",
            "start_ms",
            "duration_ms",
            "attributes",
            "events",
        }
    (server,) = [s for s in spans if s["kind"] == "SERVER"]
    (client,) = [s for s in spans if s["kind"] == "CLIENT"]
    assert server["parent_span_id"] is None and server["start_ms"] == 0
    assert client["attributes"]["gen_ai.request.model"] == "gpt-4o-mini"
    ids = {s["span_id"] for s in spans}
    assert all(s["parent_span_id"] in ids for s in spans if s is not server)
    assert {s["name"] for s in spans} >= {"facts request", "facts complete", "chat gpt-4o-mini"}


async def test_trace_buffer_keeps_only_the_last_requests(tmp_path, monkeypatch):
    monkeypatch.setenv("GATEWAY_TRACES_KEPT", "2")
    async with run_gateway(mock_config(), tmp_path) as gw:
        for i in range(4):
            await gw.openai().chat.completions.create(
                model="m", messages=CHAT, extra_headers={"x-request-id": f"req-{i}"}
            )
        _, _, text = await get_text(gw.admin_url + "/traces.json")
    assert [t["request_id"] for t in json.loads(text)["traces"]] == ["req-3", "req-2"]


async def test_hook_latency_histogram_comes_from_sampled_hook_spans(tmp_path):
    async with run_gateway(mock_config(plugins=[{"use": "test_observability:Facts", "name": "facts"}]), tmp_path) as gw:
        await gw.openai().chat.completions.create(model="m", messages=CHAT)
        samples = await scrape(gw)
    assert value(samples, "gateway_plugin_hook_duration_seconds_count", plugin="facts", hook="request") == 1
    assert value(samples, "gateway_plugin_hook_duration_seconds_count", plugin="facts", hook="complete") == 1


def test_trace_buffer_files_late_spans_under_their_request_and_forgets_evicted_ones():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON
    from opentelemetry.trace import set_span_in_context

    provider = TracerProvider(sampler=ALWAYS_ON)
    buffer = TraceBuffer(max_traces=1)
    provider.add_span_processor(buffer)
    tracer = provider.get_tracer("t")
    root = tracer.start_span("first", attributes={"gateway.request_id": "a"})
    root.end()
    tracer.start_span("late complete", context=set_span_in_context(root)).end()  # after its parent ended
    (only,) = buffer.recent()
    assert [s["name"] for s in only["spans"]] == ["first", "late complete"]
    tracer.start_span("second", attributes={"gateway.request_id": "b"}).end()
    assert [t["request_id"] for t in buffer.recent()] == ["b"] and len(buffer._roots) == 1


def test_rate_limiting_sampler_samples_at_most_its_rate():
    now = [100.0]
    sampler = RateLimitingSampler(2, clock=lambda: now[0])
    decisions = [sampler.should_sample(None, 1, "x").decision.is_sampled() for _ in range(10)]
    assert decisions.count(True) == 2
    now[0] += 0.25  # half a token
    assert not sampler.should_sample(None, 1, "x").decision.is_sampled()
    now[0] += 0.25  # a whole one
    assert [sampler.should_sample(None, 1, "x").decision.is_sampled() for _ in range(2)] == [True, False]
    now[0] += 1.0  # a second later: two more
    assert [sampler.should_sample(None, 1, "x").decision.is_sampled() for _ in range(3)] == [True, True, False]


def test_with_nothing_exported_a_few_requests_a_second_are_sampled_for_the_trace_page(monkeypatch):
    from gateway.telemetry import trace_buffer, tracer_provider_from_env

    provider = tracer_provider_from_env({})
    tracer = provider.get_tracer("t")
    # after a quiet spell, as many in a row as the page keeps (100); then ten a second
    recorded = [tracer.start_span("x").is_recording() for _ in range(130)]
    assert all(recorded[:100]) and 100 <= recorded.count(True) <= 111
    kept_five = tracer_provider_from_env({"GATEWAY_TRACES_KEPT": "5"}).get_tracer("t")
    assert 10 <= [kept_five.start_span("x").is_recording() for _ in range(30)].count(True) <= 11
    assert "RateLimitingSampler{10/s}" in provider.sampler.get_description()
    assert trace_buffer(provider) is trace_buffer(provider) is not None


# -- the Grafana dashboard ---------------------------------------------------------------------

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "gateway-dashboard.json"
METRIC_NAME = re.compile(r"\b((?:gateway|gen_ai)_[a-z0-9_]+)\b")


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries


async def test_every_metric_the_grafana_dashboard_queries_exists_after_a_workload(tmp_path):
    config = mock_config(
        limits={"max_body_bytes": 4096}, plugins=[{"use": "test_observability:Facts", "name": "facts"}]
    )
    async with run_gateway(config, tmp_path) as gw:
        client = gw.openai()
        await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)
        async for _ in stream:
            pass
        async with aiohttp.ClientSession() as session:  # a gateway error: 413
            async with session.post(gw.url + "/v1/chat/completions", data=b"x" * 5000) as reply:
                assert reply.status == 413
        samples = await scrape(gw)
    exposed = {name for name, _, _ in samples}
    label_names = {label for _, labels, _ in samples for label in labels}
    queried = {name for query in dashboard_queries() for name in METRIC_NAME.findall(query)} - label_names
    assert len(queried) >= 10
    missing = {name for name in queried if name not in exposed}
    assert not missing, f"the dashboard queries metrics /metrics does not have: {sorted(missing)}"
    for query in dashboard_queries():
        assert query.count("(") == query.count(")") and query.count("{") == query.count("}"), query


async def test_trace_page_needs_the_admin_token_and_metrics_do_not(tmp_path):
    async with run_gateway(mock_config(admin={"token": "adm-secret"}), tmp_path) as gw:
        await gw.openai().chat.completions.create(model="m", messages=CHAT)
        for path in ("/traces", "/traces.json"):
            assert (await get_text(gw.admin_url + path))[0] == 401
            status, headers, _ = await get_text(gw.admin_url + path, {"Authorization": "Bearer adm-secret"})
            assert status == 200
        assert headers["Content-Type"].startswith("application/json")
        status, headers, page = await get_text(gw.admin_url + "/traces", {"Authorization": "Bearer adm-secret"})
        assert "default-src 'none'" in headers["Content-Security-Policy"] and "<script" not in page
        assert (await get_text(gw.admin_url + "/metrics"))[0] == 200


async def test_sampled_off_keeps_no_trace_but_still_counts_and_logs(tmp_path, access_lines):
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    async with run_gateway(mock_config(), tmp_path, sampler=ALWAYS_OFF) as gw:
        await gw.openai().chat.completions.create(model="m", messages=CHAT)
        _, _, text = await get_text(gw.admin_url + "/traces.json")
        samples = await scrape(gw)
    assert json.loads(text) == {"traces": []}
    assert value(samples, "gateway_requests_total", model="m") == 1
    assert len(access_lines) == 1 and "trace_id" not in access_lines[0]
