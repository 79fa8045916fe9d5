"""Prometheus metrics of the data plane, recorded once per exchange, and the plugins' figures.

:class:`Metrics` owns one ``prometheus_client`` registry per gateway. The proxy calls
:meth:`Metrics.record` once, when an exchange is over (the answer sent, ``complete``
hooks run), so a request costs one dict lookup for its labelled children and a
handful of ``inc``/``observe`` calls (``benchmarks/metrics_bench.py`` measures it).
Plugin figures cost nothing per request: :class:`PluginCollector` turns the
``stats()`` hooks into samples at scrape time.

Label values are bounded: the route is one of :data:`ROUTES` or ``other``; the model
is one of the first :data:`MAX_MODELS` models an upstream accepted (answered below
400), else ``other``; the client is a configured virtual client's name (never an
address or a ``x-gateway-user`` header), else ``none``. No request id, no raw path.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gateway.telemetry import OPERATIONS, requested_model

if TYPE_CHECKING:
    from gateway.exchange import Exchange

#: the ``route`` label: these paths as they are, ``/v1/models/...`` as ``/v1/models``, anything else ``other``
ROUTES = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/responses",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/moderations",
    }
)
#: distinct ``model`` label values before the rest fold into ``other``
MAX_MODELS = 100
#: labelled children kept per metric family before new label sets stop being cached
MAX_CACHED_SERIES = 10_000
NONE = "none"
OTHER = "other"
_UNKNOWN: Any = object()

# Seconds: from a cache hit (well under a millisecond) to a long generation.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Seconds: the gateway's own time, Server-Timing's "gateway" figure.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# The OpenTelemetry GenAI semantic conventions' advice for these two histograms.
GEN_AI_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
GEN_AI_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
TOKEN_TYPES = ("input", "output", "cached_input", "cache_write", "reasoning")


def route_of(path: str) -> str:
    if path in ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models"
    return OTHER


class _CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # "le": a value equal to a bound is in it
        self.sum += value


class _Family(Collector):
    """A labelled counter or histogram whose children are plain Python numbers.

    prometheus_client's own metric types take a lock and walk the buckets on every
    ``observe`` (about 2 µs each, a dozen per request); the gateway records from its
    event loop thread only, so its children are bare counters, and prometheus_client
    renders them at scrape time (``collect``), as any custom collector.
    """

    def __init__(
        self, name: str, documentation: str, labelnames: tuple[str, ...], buckets: tuple[float, ...] | None = None
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.buckets = tuple(float(b) for b in buckets) if buckets is not None else None
        self.children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = _CounterChild() if self.buckets is None else _HistogramChild(self.buckets)
        return child

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        labels = list(self.labelnames)
        if self.buckets is None:
            counter = CounterMetricFamily(self.name, self.documentation, labels=labels)
            for values, child in list(self.children.items()):
                counter.add_metric(list(values), child.value)
            yield counter
            return
        histogram = HistogramMetricFamily(self.name, self.documentation, labels=labels)
        bounds = [*(_le(bound) for bound in self.buckets), "+Inf"]
        for values, child in list(self.children.items()):
            cumulative, total = [], 0
            for bound, count in zip(bounds, child.counts, strict=True):
                total += count
                cumulative.append((bound, total))
            histogram.add_metric(list(values), cumulative, child.sum)
        yield histogram


def _le(bound: float) -> str:
    return floatToGoString(bound)


class ModelLabels:
    """Bounded ``model`` label values: the first ``limit`` models an upstream accepted."""

    def __init__(self, limit: int = MAX_MODELS) -> None:
        self.limit = limit
        self.known: set[str] = set()

    def fold(self, model: str | None, status: int) -> str:
        if not model:
            return NONE
        known = self.known
        if model in known:
            return model
        # A model name is a caller's free text: only one the upstream answered (or a
        # cache served) earns a label, so a caller cannot fill the set with junk.
        if status < 400 and len(known) < self.limit and len(model) <= 128:
            known.add(model)
            return model
        return OTHER


class _Series:
    """The labelled children one exchange touches, looked up once per label set."""

    __slots__ = (
        "requests",
        "duration",
        "overhead",
        "upstream",
        "first_token",
        "operation",
        "tokens",
        "token_usage",
        "cost",
    )

    def __init__(
        self,
        metrics: Metrics,
        route: str,
        provider: str,
        provider_type: str,
        model: str,
        status: str,
        client: str,
        error: str,
    ) -> None:
        self.requests = metrics.requests.labels(route, provider, model, status)
        self.duration = metrics.duration.labels(route, provider, model, status)
        self.overhead = metrics.overhead.labels(route, provider)
        self.upstream = metrics.upstream.labels(provider, model)
        self.first_token = metrics.first_token.labels(route, provider, model)
        operation = OPERATIONS.get(route, OTHER)
        self.operation = metrics.gen_ai_duration.labels(operation, provider_type, model, error)
        self.tokens = tuple(metrics.tokens.labels(provider, model, client, kind) for kind in TOKEN_TYPES)
        self.token_usage = tuple(
            metrics.gen_ai_tokens.labels(operation, provider_type, model, kind) for kind in ("input", "output")
        )
        self.cost = metrics.cost.labels(provider, model, client)


class Metrics:
    """Every data-plane metric of one gateway, in its own registry."""

    def __init__(self, model_limit: int = MAX_MODELS) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.models = ModelLabels(model_limit)
        request_labels = ("route", "provider", "model", "status")
        self.requests = self._family(
            "gateway_requests", "Requests answered (status 499: the caller left).", request_labels
        )
        self.duration = self._family(
            "gateway_request_duration_seconds",
            "Whole request as the caller saw it: for a stream, until its last event.",
            request_labels,
            buckets=DURATION_BUCKETS,
        )
        self.overhead = self._family(
            "gateway_overhead_seconds",
            "The gateway's own time: total minus upstream, the 'gateway' figure of the Server-Timing header.",
            ("route", "provider"),
            buckets=OVERHEAD_BUCKETS,
        )
        self.upstream = self._family(
            "gateway_upstream_duration_seconds",
            "Waiting for upstream answers (a buffered body included; a stream until its headers), all attempts.",
            ("provider", "model"),
            buckets=DURATION_BUCKETS,
        )
        self.first_token = self._family(
            "gateway_time_to_first_token_seconds",
            "Streams: from the request's arrival to the first event relayed to the caller.",
            ("route", "provider", "model"),
            buckets=DURATION_BUCKETS,
        )
        self.tokens = self._family(
            "gateway_tokens",
            "Tokens reported by upstreams (cached_input, cache_write and reasoning are parts of input and output).",
            ("provider", "model", "client", "type"),
        )
        self.cost = self._family(
            "gateway_cost_usd", "What calls cost, as the cost plugin priced them.", ("provider", "model", "client")
        )
        self.errors = self._family(
            "gateway_errors", "Answers the gateway made itself, by error code.", ("route", "code")
        )
        # OpenTelemetry GenAI client metrics, named as the OpenTelemetry Prometheus
        # exporter names them (dots to underscores, the unit "s" as _seconds).
        self.gen_ai_duration = self._family(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration (gen_ai.client.operation.duration): upstream calls, a stream until it ends.",
            ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "error_type"),
            buckets=GEN_AI_DURATION_BUCKETS,
        )
        self.gen_ai_tokens = self._family(
            "gen_ai_client_token_usage",
            "Tokens per GenAI operation (gen_ai.client.token.usage), by gen_ai_token_type input or output.",
            ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_token_type"),
            buckets=GEN_AI_TOKEN_BUCKETS,
        )
        self.hook_duration = self._family(
            "gateway_plugin_hook_duration_seconds",
            "Plugin hook durations, from sampled requests' hook spans only.",
            ("plugin", "hook"),
            buckets=OVERHEAD_BUCKETS,
        )
        self._series: dict[tuple[Any, ...], _Series] = {}
        self.plugins = PluginCollector()
        self.registry.register(self.plugins)
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds...
        # and python_info, read at scrape time.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def _family(
        self, name: str, documentation: str, labelnames: tuple[str, ...], buckets: tuple[float, ...] | None = None
    ) -> _Family:
        family = _Family(name, documentation, labelnames, buckets)
        self.registry.register(family)
        return family

    def record(self, exchange: Exchange, status: int, provider: Any, model: str | None | Any = _UNKNOWN) -> None:
        """Count one finished exchange; ``provider`` is the Provider that was called, or
        None; ``model`` the body's model when the caller already read it."""
        route = route_of(exchange.path)
        if model is _UNKNOWN:
            model = requested_model(exchange)
        model = self.models.fold(exchange.served_model or model, status)
        if provider is not None:
            provider_name, provider_type = provider.name, provider.type
        else:
            provider_name = provider_type = NONE
        error = exchange.error
        error_type = error.code if error is not None else (str(status) if status >= 400 else "")
        client = exchange.client or NONE
        key = (route, provider_name, model, status, client, error_type)
        series = self._series.get(key)
        if series is None:
            series = _Series(self, route, provider_name, provider_type, model, str(status), client, error_type)
            if len(self._series) < MAX_CACHED_SERIES:
                self._series[key] = series
        series.requests.inc()
        total_s = exchange.elapsed_s()
        series.duration.observe(total_s)
        gateway_s = exchange.gateway_s
        if gateway_s is not None:
            series.overhead.observe(gateway_s)
        if error is not None and error.status != 499:
            self.errors.labels(route, error.code).inc()
        if provider is None:
            return
        upstream_s = exchange.upstream_s
        series.upstream.observe(upstream_s)
        first_token_s = exchange.first_token_s
        if first_token_s is not None:
            series.first_token.observe(first_token_s)
            # A stream's operation lasts until its end: the whole request but the
            # gateway's own time before the answer's headers.
            series.operation.observe(max(total_s - (gateway_s or 0.0), upstream_s))
        else:
            series.operation.observe(upstream_s)
        usage = exchange.usage
        if usage is not None and exchange.cache_status != "hit":
            tokens = series.tokens
            counts = (
                usage.input_tokens,
                usage.output_tokens,
                usage.cached_input_tokens,
                usage.cache_write_tokens,
                usage.reasoning_tokens,
            )
            for counter, count in zip(tokens, counts, strict=True):
                if count:
                    counter.inc(count)
            series.token_usage[0].observe(usage.input_tokens)
            series.token_usage[1].observe(usage.output_tokens)
        cost = exchange.cost_usd
        if cost:
            series.cost.inc(cost)

    def observe_hook(self, plugin: str, hook: str, duration_s: float) -> None:
        self.hook_duration.labels(plugin, hook).observe(duration_s)

    def exposition(
        self, plugin_figures: dict[str, dict[str, Any]], extra: Iterable[Metric] = (), accept: str = ""
    ) -> tuple[bytes, str]:
        """Every metric in the format ``accept`` asks for (Prometheus text unless
        OpenMetrics), and its content type, with these plugin figures (gathered by the
        caller, as ``stats()`` hooks may be async) and extra gauges."""
        self.plugins.figures = plugin_figures
        self.plugins.extra = list(extra)
        encoder, content_type = choose_encoder(accept)
        try:
            return encoder(self.registry), content_type
        finally:
            self.plugins.figures = {}
            self.plugins.extra = []


_NOT_NAME = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(*parts: str) -> str:
    return _NOT_NAME.sub("_", "_".join(parts))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return float(value)
    return None


class PluginCollector(Collector):
    """The plugins' ``stats()`` figures as gauges, made at scrape time.

    Convention (docs/plugins.md): a numeric leaf ``"hits": 3`` of plugin ``cache``
    becomes ``gateway_cache_hits 3``; a dict named ``<figure>_by_<label>`` becomes one
    series per key, ``"detections_by_family": {"pii": 2}`` of ``scan`` becomes
    ``gateway_scan_detections{family="pii"} 2``; another dict of numbers becomes
    ``gateway_<plugin>_<dict>_<key>``. Booleans are 0 or 1; anything else is left out.
    Every plugin's hook failures are ``gateway_plugin_failures{plugin=...}``.
    """

    def __init__(self) -> None:
        self.figures: dict[str, dict[str, Any]] = {}
        self.extra: list[Metric] = []

    def describe(self) -> list[Metric]:
        return []  # the names depend on the plugins' figures: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        yield from self.extra
        failures = GaugeMetricFamily(
            "gateway_plugin_failures", "Exceptions raised by each plugin's hooks.", labels=["plugin"]
        )
        families: dict[tuple[str, tuple[str, ...]], GaugeMetricFamily] = {}

        def family(name: str, labels: tuple[str, ...], plugin: str) -> GaugeMetricFamily:
            found = families.get((name, labels))
            if found is None:
                found = families[(name, labels)] = GaugeMetricFamily(
                    name, f"Figure of plugin {plugin} (its stats() hook).", labels=list(labels)
                )
            return found

        for plugin, figures in self.figures.items():
            prefix = metric_name("gateway", plugin)
            for key, value in figures.items():
                if key == "failures":
                    failures.add_metric([plugin], float(value))
                    continue
                number = _number(value)
                if number is not None:
                    family(metric_name(prefix, key), (), plugin).add_metric([], number)
                elif isinstance(value, dict):
                    figure, by, label = key.rpartition("_by_")
                    for item, inner in value.items():
                        number = _number(inner)
                        if number is None:
                            continue
                        if by and figure and label:
                            name = metric_name(prefix, figure)
                            family(name, (metric_name(label),), plugin).add_metric([str(item)], number)
                        else:
                            family(metric_name(prefix, key, str(item)), (), plugin).add_metric([], number)
        yield failures
        seen: set[str] = set()
        for (name, _labels), metric in families.items():
            if name in seen:  # the same name with two label sets is not valid exposition
                continue
            seen.add(name)
            yield metric
