"""Per-caller request and token limits, exact across replicas through Redis.

```yaml
plugins:
  - use: ratelimit
    config:
      requests_per_minute: 60
      tokens_per_minute: 40000
      backend: redis://127.0.0.1:6379/0   # memory (default): this process only
      failure_mode: open                  # Redis unreachable: open lets requests through, closed answers 503
      flagged_multiplier: 0.5             # a request scan flagged gets half the caller's limits
      clients: {frontend: {requests_per_minute: 10}, batch: {unlimited: true}}
```

Every limit is a GCRA bucket per caller (see :mod:`.gcra`); docs/ratelimit.md has
the algorithm, the headers, the backends and the failure modes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Annotated, Any, Literal

import msgspec
from opentelemetry import trace

from gateway import Exchange, GatewayError, PluginConfigError, StashKey, hookimpl
from gateway.errors import backend_unavailable, rate_limit_exceeded
from gateway.exchange import UNBILLED_PATHS
from gateway.redis import url_problem
from gateway_plugins.ratelimit.gcra import LIMIT_OPTIONS, Limit, MemoryStore, go_duration, remaining
from gateway_plugins.ratelimit.redis_store import BACKEND_ERRORS, RedisStore, Sent

__all__ = ["Config", "RateLimit"]

log = logging.getLogger("gateway.ratelimit")

Amount = Annotated[int, msgspec.Meta(gt=0)]

#: seconds between two sweeps of idle callers (memory backend)
SWEEP_INTERVAL_S = 10.0
#: at most one "backend failing" log line per this many seconds
LOG_EVERY_S = 10.0


class LimitOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    requests_per_second: Amount | None = None
    requests_per_minute: Amount | None = None
    requests_per_hour: Amount | None = None
    requests_per_day: Amount | None = None
    tokens_per_second: Amount | None = None
    tokens_per_minute: Amount | None = None
    tokens_per_hour: Amount | None = None
    tokens_per_day: Amount | None = None


class ClientLimits(LimitOptions, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One caller's overrides: the limits it names replace the defaults, the rest stay.
    ``unlimited: true`` exempts the caller from every limit."""

    unlimited: bool = False


class Config(LimitOptions, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """```yaml
    - use: ratelimit
      config: {requests_per_minute: 60, tokens_per_minute: 40000, backend: "redis://127.0.0.1:6379/0"}
    ```"""

    backend: str = "memory"
    failure_mode: Literal["open", "closed"] = "open"
    key_prefix: str = "gateway:ratelimit:"
    clients: dict[str, ClientLimits] = {}
    flagged_multiplier: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None
    default_max_tokens: Annotated[int, msgspec.Meta(ge=0)] = 256
    bytes_per_token: Annotated[float, msgspec.Meta(gt=0)] = 4.0
    timeout_ms: Annotated[float, msgspec.Meta(gt=0)] = 200.0
    probe_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    max_callers: Annotated[int, msgspec.Meta(gt=0)] = 100_000
    #: no longer used: the plugins share one pipelined connection per Redis URL (gateway.redis)
    max_connections: Annotated[int, msgspec.Meta(gt=0)] = 64
    shadow_mode: bool = False


def _limits(options: LimitOptions, defaults: LimitOptions | None = None) -> tuple[Limit, ...]:
    built = []
    for name, kind, period_s, field in LIMIT_OPTIONS:
        amount = getattr(options, name)
        if amount is None and defaults is not None:
            amount = getattr(defaults, name)
        if amount is not None:
            built.append(Limit(name, kind, period_s, amount, field))
    return tuple(built)


class Reservation:
    """What ``request`` charged, for ``complete`` to settle the token limits."""

    __slots__ = ("caller", "limits", "charges", "token_indexes", "scale")

    def __init__(
        self, caller: str, limits: tuple[Limit, ...], charges: list[float], token_indexes: tuple[int, ...], scale: float
    ) -> None:
        self.caller = caller
        self.limits = limits
        #: seconds charged to each limit
        self.charges = charges
        #: which of the limits count tokens
        self.token_indexes = token_indexes
        self.scale = scale


RESERVATION = StashKey[Reservation]("ratelimit.reservation")

_OUTPUT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


class RateLimit:
    """Admits a request when every limit of its caller has room; reserves tokens, then settles them."""

    Config = Config

    def __init__(self, config: Config) -> None:
        backend = config.backend
        if backend != "memory" and not backend.startswith(("redis://", "rediss://", "unix://")):
            raise PluginConfigError("backend", f"expected memory or a redis://... URL, got {backend!r}")
        problem = url_problem(backend) if backend != "memory" else None
        if problem is not None:
            raise PluginConfigError("backend", problem)
        self.config = config
        self.default_limits = _limits(config)
        self.client_limits = {
            name: () if override.unlimited else _limits(override, config) for name, override in config.clients.items()
        }
        if not self.default_limits and not any(self.client_limits.values()):
            names = ", ".join(name for name, *_ in LIMIT_OPTIONS)
            raise PluginConfigError("", f"set at least one limit ({names})")
        every = {self.default_limits, *self.client_limits.values()}
        #: the charges of limit sets without token limits, unflagged (built once)
        self.request_charges = {
            limits: [limit.interval_s for limit in limits]
            for limits in every
            if limits and not any(limit.is_tokens for limit in limits)
        }
        #: which limits of each set count tokens
        self.token_indexes = {
            limits: tuple(index for index, limit in enumerate(limits) if limit.is_tokens) for limits in every
        }
        #: whether any caller has a token limit (else ``complete`` has nothing to settle)
        self.counts_tokens = any(self.token_indexes.values())
        self.closed = config.failure_mode == "closed"
        self.shadow_mode = config.shadow_mode
        self.flagged_scale = 1.0 / config.flagged_multiplier if config.flagged_multiplier else 1.0
        self.bytes_per_token = config.bytes_per_token
        self.default_max_tokens = config.default_max_tokens
        self.memory: MemoryStore | None = MemoryStore(config.max_callers) if backend == "memory" else None
        self.redis: RedisStore | None = (
            RedisStore(backend, config.key_prefix, config.timeout_ms / 1000)
            if self.memory is None
            else None
        )
        self.backend_label = "memory" if self.memory is not None else "redis"
        #: whether the backend answered its last call (memory: always)
        self.up = True
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = False
        self.allowed = 0
        self.limited = 0
        names = [limit.name for limits in every for limit in limits]
        self.allowed_by_limit = dict.fromkeys(names, 0)
        self.limited_by_limit = dict.fromkeys(names, 0)
        self.backend_errors = 0
        self.failed_open = 0
        self.failed_closed = 0
        self.settled = 0
        self.shadow_passed = 0
        self._last_log = -math.inf
        self._unlogged = 0
        self._announced = False

    # -- lifecycle -----------------------------------------------------------------

    @hookimpl
    def adopt(self, previous: RateLimit) -> None:
        # A reload with the same limits keeps the counters (TATs are kept per limit, by position).
        if self.memory is not None and previous.memory is not None and previous.config == self.config:
            self.memory = previous.memory

    @hookimpl
    async def startup(self, gateway: Any) -> None:
        if self.memory is not None:
            self.tasks.append(asyncio.get_running_loop().create_task(self._sweep()))
            return
        assert self.redis is not None
        self.redis.tracer = gateway.tracer
        self.redis.open(gateway)
        try:
            await self.redis.load_scripts()
        except BACKEND_ERRORS as exc:
            # Start anyway: failure_mode decides what requests get until Redis answers.
            self._set_up(False, exc)
        self.tasks.append(asyncio.get_running_loop().create_task(self._probe()))

    @hookimpl
    async def shutdown(self, gateway: Any) -> None:
        # The flag as well as the cancel: a cancel that lands inside a Redis call may
        # come out of the client as a timeout or connection error, which the probe
        # loop survives by design; the flag ends it all the same.
        self.stopping = True
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=1.0)
        self.tasks.clear()
        if self.redis is not None:
            await self.redis.close()

    @hookimpl
    def ready(self) -> bool:
        # Failing open, a Redis outage must not take the replica out of service as well.
        return self.up or not self.closed

    @hookimpl
    def stats(self) -> dict[str, Any]:
        figures: dict[str, Any] = {
            "allowed": self.allowed,
            "limited": self.limited,
            "allowed_by_limit": dict(self.allowed_by_limit),
            "limited_by_limit": dict(self.limited_by_limit),
            "backend_errors": self.backend_errors,
            "backend_up": int(self.up),
            "failed_open": self.failed_open,
            "failed_closed": self.failed_closed,
            "settled": self.settled,
            "shadow_passed": self.shadow_passed,
        }
        if self.memory is not None:
            figures["callers"] = len(self.memory.tats)
            figures["evicted"] = self.memory.evicted
        return figures

    # -- per request ---------------------------------------------------------------

    @hookimpl
    async def request(self, exchange: Exchange) -> None:
        caller = exchange.caller
        limits = self.client_limits.get(caller, self.default_limits) if self.client_limits else self.default_limits
        if not limits:
            return
        scale = self.flagged_scale if exchange.threat_severity is not None else 1.0
        tokens = -1
        # Request limits only, unflagged (the common case): the charges built at startup.
        charges = self.request_charges.get(limits) if scale == 1.0 else None
        if charges is None:
            charges = []
            for limit in limits:
                if limit.is_tokens:
                    if tokens < 0:
                        tokens = self._estimate(exchange)
                    charge = tokens * limit.interval_s * scale
                else:
                    charge = limit.interval_s * scale
                # Never more than the whole bucket: a request bigger than the limit waits
                # for a full bucket instead of never passing.
                charges.append(charge if charge < limit.period_s else limit.period_s)
        memory = self.memory
        if memory is not None:
            allowed, levels = memory.take(caller, limits, charges)
            return self._decide(exchange, caller, limits, charges, tokens, scale, allowed, levels, 0.0)
        assert self.redis is not None
        try:
            sent = self.redis.take(caller, limits, charges)
        except BACKEND_ERRORS as exc:
            return self._without_backend(exchange, exc)
        # Sent now, awaited after the last request hook: the cache's lookup and cost's
        # reserve join the same Redis round trip (docs/ratelimit.md#redis).
        exchange.defer(self._decide_after(exchange, caller, limits, charges, tokens, scale, sent))

    async def _decide_after(
        self,
        exchange: Exchange,
        caller: str,
        limits: tuple[Limit, ...],
        charges: list[float],
        tokens: int,
        scale: float,
        sent: Sent,
    ) -> None:
        assert self.redis is not None
        try:
            allowed, levels, backend_s = await self.redis.taken(sent, exchange.recording)
        except BACKEND_ERRORS as exc:
            return self._without_backend(exchange, exc)
        if not self.up:
            self._set_up(True)
        self._decide(exchange, caller, limits, charges, tokens, scale, allowed, levels, backend_s)

    def _decide(
        self,
        exchange: Exchange,
        caller: str,
        limits: tuple[Limit, ...],
        charges: list[float],
        tokens: int,
        scale: float,
        allowed: bool,
        levels: list[float],
        backend_s: float,
    ) -> None:
        if not allowed:
            refusal = self._refusal(exchange, limits, charges, levels, scale, backend_s)
            if not self.shadow_mode:
                raise refusal
            # Shadow mode (Envoy's): counted and given the headers, but the request goes on, uncharged.
            self.shadow_passed += 1
            if exchange.recording:
                trace.get_current_span().set_attribute("gateway.ratelimit.decision", "shadow_limited")
            return
        self._admitted(exchange, limits, charges, levels, scale, backend_s)
        if tokens >= 0:
            exchange.state[RESERVATION] = Reservation(caller, limits, charges, self.token_indexes[limits], scale)

    @hookimpl
    async def complete(self, exchange: Exchange) -> None:
        if not self.counts_tokens:
            return
        reservation = exchange.state.get(RESERVATION)
        if reservation is None:
            return
        spent = self._spent(exchange)
        if spent is None:
            return
        limits = reservation.limits
        charges = reservation.charges
        per_token = spent * reservation.scale
        deltas = []
        for index in reservation.token_indexes:
            delta = per_token * limits[index].interval_s - charges[index]
            if delta:
                deltas.append((index, delta))
        if not deltas:
            return
        if self.memory is not None:
            self.memory.settle(reservation.caller, len(limits), deltas)
            self.settled += 1
            return
        assert self.redis is not None
        # Write-behind: nobody waits for the settle; it joins the next pipeline.
        sent = self.redis.settle(
            reservation.caller, [(limits[index], delta) for index, delta in deltas], exchange.recording, self._settled
        )
        if not sent:  # every delta rounded to 0 µs: settled, with nothing to send
            self._settled(None)

    def _settled(self, error: BaseException | None) -> None:
        if error is None:
            self.settled += 1
        elif isinstance(error, BACKEND_ERRORS):
            self._failed(error)
        else:
            self.backend_errors += 1
            log.warning("rate-limit settle failed: %r", error, extra={"plugin": "ratelimit"})

    # -- helpers -------------------------------------------------------------------

    def _estimate(self, exchange: Exchange) -> int:
        """Tokens to reserve: the prompt's size from the body's bytes, plus the output the request allows."""
        if exchange.path in UNBILLED_PATHS:
            return 0  # no usage comes back to settle: a reservation would stand as the charge
        body = exchange.body
        prompt = int(len(body) / self.bytes_per_token)
        if not body or not exchange.has_json_body or exchange.path.endswith("/embeddings"):
            return prompt
        try:
            document = exchange.json()
        except GatewayError:
            return prompt  # not JSON: the request is someone else's to refuse
        for key in _OUTPUT_KEYS:
            value = document.get(key)
            if isinstance(value, int) and value >= 0:
                return prompt + value
        return prompt + self.default_max_tokens

    @staticmethod
    def _spent(exchange: Exchange) -> int | None:
        """Tokens the call really spent; None when unknown (the estimate stands)."""
        if exchange.cache_status == "hit":
            return 0  # answered from a cache: the provider spent nothing
        usage = exchange.usage
        if usage is not None:
            return usage.total_tokens
        error = exchange.error
        if error is not None:
            # The caller left (499): the provider may have spent tokens we never saw.
            return None if error.status == 499 else 0
        response = exchange.response
        if response is not None and response.status >= 400:
            return 0
        return None

    def _admitted(
        self,
        exchange: Exchange,
        limits: tuple[Limit, ...],
        charges: list[float],
        levels: list[float],
        scale: float,
        backend_s: float,
    ) -> None:
        """Headers, figures and span attributes of an admitted request (the hot path)."""
        self.allowed += 1
        counts = self.allowed_by_limit
        headers = exchange.response_headers
        if len(limits) == 1:  # one limit: the common case, without a loop
            limit = limits[0]
            counts[limit.name] += 1
            level = levels[0] + charges[0]
            least = (int((limit.period_s - level) / (limit.interval_s * scale) + 1e-6), level, limit)
            _set_headers(headers, least, scale)
            if exchange.recording:
                requests, tokens = (None, least) if limit.is_tokens else (least, None)
                self._attributes("allowed", requests, tokens, None, scale, backend_s)
            return
        requests = tokens = None  # per kind, the limit with the least room left: (units left, level, limit)
        for limit, level, charge in zip(limits, levels, charges, strict=True):
            counts[limit.name] += 1
            level += charge
            left = int((limit.period_s - level) / (limit.interval_s * scale) + 1e-6)
            if limit.is_tokens:
                if tokens is None or left < tokens[0]:
                    tokens = (left, level, limit)
            elif requests is None or left < requests[0]:
                requests = (left, level, limit)
        if requests is not None:
            _set_headers(headers, requests, scale)
        if tokens is not None:
            _set_headers(headers, tokens, scale)
        if exchange.recording:
            self._attributes("allowed", requests, tokens, None, scale, backend_s)

    def _refusal(
        self,
        exchange: Exchange,
        limits: tuple[Limit, ...],
        charges: list[float],
        levels: list[float],
        scale: float,
        backend_s: float,
    ) -> GatewayError:
        """Headers, figures and span attributes of a refused request; returns the 429 to raise."""
        self.limited += 1
        retry_after_s = 0.0
        denied_by = limits[0]
        requests = tokens = None  # per kind: the limit that refused, else the least room left
        for limit, level, charge in zip(limits, levels, charges, strict=True):
            over = level + charge - limit.period_s
            left = remaining(limit, level, scale)
            rank = left
            if over > 1e-9:
                self.limited_by_limit[limit.name] += 1
                rank = -1
                if over > retry_after_s:
                    retry_after_s, denied_by = over, limit
            current = tokens if limit.is_tokens else requests
            if current is None or rank < current[3]:
                entry = (left, level, limit, rank)
                if limit.is_tokens:
                    tokens = entry
                else:
                    requests = entry
        headers = exchange.response_headers
        if requests is not None:
            _set_headers(headers, requests, scale)
        if tokens is not None:
            _set_headers(headers, tokens, scale)
        if exchange.recording:
            self._attributes("limited", requests, tokens, denied_by, scale, backend_s)
        error = rate_limit_exceeded(
            f"Rate limit reached for {denied_by.name.replace('_', ' ')}: try again in {go_duration(retry_after_s)}.",
            retry_after_s,
        )
        # OpenAI's own hint, in milliseconds: its SDKs prefer it to Retry-After's whole seconds.
        error.headers["retry-after-ms"] = str(max(1, math.ceil(retry_after_s * 1000)))
        return error

    def _attributes(
        self,
        decision: str,
        requests: tuple | None,
        tokens: tuple | None,
        denied_by: Limit | None,
        scale: float,
        backend_s: float,
    ) -> None:
        span = trace.get_current_span()
        span.set_attribute("gateway.ratelimit.decision", decision)
        span.set_attribute("gateway.ratelimit.backend", self.backend_label)
        span.set_attribute("gateway.ratelimit.backend_ms", round(backend_s * 1000, 3))
        if requests is not None:
            span.set_attribute("gateway.ratelimit.remaining_requests", max(0, requests[0]))
        if tokens is not None:
            span.set_attribute("gateway.ratelimit.remaining_tokens", max(0, tokens[0]))
        if denied_by is not None:
            span.set_attribute("gateway.ratelimit.limit", denied_by.name)
        if scale != 1.0:
            span.set_attribute("gateway.ratelimit.flagged", True)

    def _without_backend(self, exchange: Exchange, exc: BaseException) -> None:
        """Redis failed: ``failure_mode`` decides."""
        self._failed(exc, exchange)
        if exchange.recording:
            trace.get_current_span().set_attribute("gateway.ratelimit.decision", "unchecked")
        if self.closed:
            self.failed_closed += 1
            raise backend_unavailable("The rate-limit backend is unavailable.")
        self.failed_open += 1

    def _failed(self, exc: BaseException, exchange: Exchange | None = None) -> None:
        self.backend_errors += 1
        if exchange is not None and exchange.recording:
            trace.get_current_span().add_event(
                "ratelimit.backend_error",
                {"error.type": type(exc).__name__, "gateway.ratelimit.failure_mode": self.config.failure_mode},
            )
        if self.up:
            self._set_up(False, exc)
        else:
            self._log_failure(exc)

    def _set_up(self, up: bool, exc: BaseException | None = None) -> None:
        self.up = up
        if not up:
            self._log_failure(exc)
        elif self._announced:
            # One "back" line per "unavailable" line: a flapping Redis cannot flood the log.
            log.info("rate-limit backend answers again", extra={"plugin": "ratelimit"})
            self._announced = False

    def _log_failure(self, exc: BaseException | None) -> None:
        """At most one line per LOG_EVERY_S, however many requests fail meanwhile."""
        now = time.monotonic()
        if now - self._last_log < LOG_EVERY_S:
            self._unlogged += 1
            return
        log.warning(
            "rate-limit backend unavailable (%s), failure_mode %s: %s; %d more failure(s) since the last line",
            type(exc).__name__ if exc is not None else "-",
            self.config.failure_mode,
            "requests pass unchecked" if not self.closed else "requests get 503",
            self._unlogged,
            extra={"plugin": "ratelimit"},
        )
        self._last_log = now
        self._unlogged = 0
        self._announced = True

    async def _probe(self) -> None:
        """Readiness and recovery: PING Redis every ``probe_interval_s``."""
        assert self.redis is not None
        interval = self.config.probe_interval_s
        while not self.stopping:
            await asyncio.sleep(interval)
            if self.stopping:
                return
            try:
                await self.redis.ping()
            except BACKEND_ERRORS as exc:
                if self.up:
                    self._failed(exc)
                continue
            if not self.up:
                self._set_up(True)

    async def _sweep(self) -> None:
        assert self.memory is not None
        while not self.stopping:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            self.memory.sweep()


def _set_headers(headers: dict[str, str], least: tuple, scale: float) -> None:
    """OpenAI's three ``x-ratelimit-*`` headers of one kind, from the limit with the least
    room left: ``least`` starts with (units left, level, limit)."""
    left, level, limit = least[0], least[1], least[2]
    headers[limit.limit_header] = limit.amount_text if scale == 1.0 else str(max(1, int(limit.amount / scale)))
    headers[limit.remaining_header] = str(left) if left > 0 else "0"
    headers[limit.reset_header] = go_duration(level)
