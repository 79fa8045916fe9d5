"""What observing one request costs the gateway, in microseconds (no network).

    .venv/bin/python -m benchmarks.metrics_bench            # N=200000 by default
    N=50000 .venv/bin/python -m benchmarks.metrics_bench

Times, per request, on one core and in-process:

* ``metrics.record``: everything /metrics counts for one finished chat exchange
  (request counter, duration, overhead, upstream and GenAI histograms, tokens, cost),
  label set already seen (the steady state) and a streamed exchange (TTFT too);
* the access line, formatted as JSON and written to /dev/null (``log.access``);
* the rate-limiting sampler's decision for a request it does not sample, the
  trace buffer's bookkeeping for a sampled request of 6 spans, and those spans made
  by the gateway's lean tracer instead of the SDK's;
* one scrape of /metrics with 20 label sets and 5 plugins' figures (ms).

Figures are CPU time of this thread (best of 5 rounds), so a busy shared machine
inflates them less than wall time would. Prints a Markdown table. It is a
benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from gateway.config import LogConfig
from gateway.exchange import Exchange, Response, Usage
from gateway.logs import AccessLog, GatewayHandler, JsonFormatter, access_log, fast_records
from gateway.metrics import Metrics
from gateway.spans import make_lean
from gateway.telemetry import RateLimitingSampler, TraceBuffer

BODY = b'{"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]}'


class _Provider:
    name = "openai"
    type = "openai"


def _exchange(stream: bool = False) -> Exchange:
    exchange = Exchange(
        None, method="POST", path="/v1/chat/completions", body=BODY, request_id="r" * 32, caller="10.0.0.1"
    )
    exchange.provider = _Provider()  # type: ignore[assignment]
    exchange.attempts = 1
    exchange.upstream_s = 0.2
    exchange.gateway_s = 0.0002
    exchange.response = Response(200, {"Content-Type": "application/json"}, b"{}")
    exchange.usage = Usage(input_tokens=120, output_tokens=40)
    exchange.cost_usd = 0.00004
    if stream:
        exchange.first_token_s = 0.05
    return exchange


def per_call_us(function: Callable[[], Any], n: int, repeats: int = 5) -> float:
    """CPU time per call (the machine may be shared: wall time would count others' work),
    the best of ``repeats`` rounds of ``n // repeats`` calls."""
    function()
    rounds = max(n // repeats, 1)
    best = float("inf")
    for _ in range(repeats):
        started = time.thread_time()
        for _ in range(rounds):
            function()
        best = min(best, time.thread_time() - started)
    return best / rounds * 1e6


def main() -> None:
    n = int(os.environ.get("N", "200000"))
    metrics = Metrics()
    exchange, streamed = _exchange(), _exchange(stream=True)
    provider = exchange.provider
    rows: list[tuple[str, str]] = []
    rows.append(
        ("metrics.record, buffered chat", f"{per_call_us(lambda: metrics.record(exchange, 200, provider), n):.2f} µs")
    )
    rows.append(
        (
            "metrics.record, stream (TTFT too)",
            f"{per_call_us(lambda: metrics.record(streamed, 200, provider), n):.2f} µs",
        )
    )
    no_usage = _exchange()
    no_usage.usage = None
    no_usage.cost_usd = None
    no_usage.response = Response(200, {}, b"")
    rows.append(
        (
            "metrics.record, no usage or cost",
            f"{per_call_us(lambda: metrics.record(no_usage, 200, provider), n):.2f} µs",
        )
    )

    devnull = open(os.devnull, "w")  # noqa: SIM115 (open for the whole run)
    direct = GatewayHandler(devnull)  # as logs.setup() makes it, to /dev/null
    direct.setFormatter(JsonFormatter())
    logging.root.handlers[:] = [direct]
    logging.root.setLevel(logging.INFO)
    fast_records()
    writer = AccessLog(LogConfig())
    line_us = per_call_us(lambda: writer.write(exchange, 200), n // 4)
    rows.append(("access line (JSON to /dev/null)", f"{line_us:.2f} µs"))
    other = logging.FileHandler(os.devnull)  # one more handler: the line goes through logging
    other.setFormatter(JsonFormatter())
    access_log.addHandler(other)
    line_us = per_call_us(lambda: writer.write(exchange, 200), n // 4)
    rows.append(("access line through logging (another handler added)", f"{line_us:.2f} µs"))
    access_log.removeHandler(other)
    quiet = AccessLog(LogConfig(access=False))
    rows.append(("access line, log.access false", f"{per_call_us(lambda: quiet.write(exchange, 200), n):.2f} µs"))

    sampler = RateLimitingSampler(10)
    sampler.tokens = 0.0
    sampler.per_s = sampler.capacity = 1e-9  # never refills: every call is the "not sampled" path
    rows.append(
        ("sampler decision, not sampled", f"{per_call_us(lambda: sampler.should_sample(None, 1, 'x'), n):.2f} µs")
    )

    provider_plain = TracerProvider(sampler=ALWAYS_ON)
    tracer_plain = provider_plain.get_tracer("bench")
    provider_buffered = TracerProvider(sampler=ALWAYS_ON)
    provider_buffered.add_span_processor(TraceBuffer(100))
    tracer_buffered = provider_buffered.get_tracer("bench")

    def six_spans(tracer: Any) -> Callable[[], None]:
        def run() -> None:
            with tracer.start_as_current_span("POST /v1/chat/completions"):
                for name in ("scan request", "ratelimit request", "cache send", "chat gpt-4o-mini", "cost complete"):
                    with tracer.start_as_current_span(name, attributes={"gateway.plugin": "p", "gateway.hook": "h"}):
                        pass

        return run

    plain = per_call_us(six_spans(tracer_plain), n // 20)
    buffered = per_call_us(six_spans(tracer_buffered), n // 20)
    lean = per_call_us(six_spans(make_lean(provider_buffered.get_tracer("bench"))), n // 20)
    rows.append(("a sampled request's 6 spans, no processor (the SDK's tracer)", f"{plain:.1f} µs"))
    rows.append(("the same with the trace buffer", f"{buffered:.1f} µs (+{buffered - plain:.1f})"))
    rows.append(("the same made the lean way (the gateway's tracer, gateway/spans.py)", f"{lean:.1f} µs"))

    for i in range(20):
        other = _exchange()
        other.path = ["/v1/chat/completions", "/v1/embeddings", "/v1/messages", "/v1/models"][i % 4]
        metrics.record(other, [200, 429, 500, 200, 200][i % 5], provider)
    figures = {
        f"plugin{i}": {"failures": 0, "hits": 3, "misses": 1, "detections_by_family": {"pii": 2, "secret": 1}}
        for i in range(5)
    }
    rows.append(("one /metrics scrape", f"{per_call_us(lambda: metrics.exposition(figures), 200) / 1000:.2f} ms"))

    print(f"N={n}, {os.uname().machine}, Python {platform.python_version()}, CPU time per call, best of 5 rounds\n")
    print("| what | per request |\n|---|---|")
    for what, figure in rows:
        print(f"| {what} | {figure} |")


if __name__ == "__main__":
    main()
