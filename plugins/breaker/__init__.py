"""Circuit breakers, retries and provider fallback around the upstream call.

```yaml
plugins:
  - use: breaker
    config:
      failure_threshold: 5        # consecutive failures that open a provider's breaker
      recovery_s: 30              # open -> half-open after this long
      retries: 1                  # more attempts on a retryable failure (502/503/504/429...)
      fallbacks: {openai: [backup]}
      fallback_models: {backup: {gpt-4o: gpt-4o-mini}}
      backend: redis://127.0.0.1:6379/0   # replicas share open breakers (default: memory)
```

The plugin wraps ``call_next`` in its ``send`` hook (it belongs last in the chain,
nearest the upstream). Per request it walks the candidates (the routed provider,
then its fallbacks in order): an open breaker is skipped without a call; a call
that fails counts against its breaker and is retried (with jittered exponential
backoff, within the deadline) or handed to the next candidate. A 200 stream is
final: retries only ever happen before any byte reaches the caller. See
docs/breaker.md.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Annotated, Any

import aiohttp
import msgspec
from aiohttp import web
from opentelemetry import trace

from gateway import Exchange, GatewayError, PluginConfigError, hookimpl
from gateway.errors import circuit_open, error_body, upstream_timeout
from gateway.exchange import Response, close_stream
from gateway.redis import url_problem
from gateway.translate import Untranslatable
from gateway_plugins.breaker.shared import SharedState
from gateway_plugins.breaker.state import CALL, CLOSED, HALF_OPEN, OPEN, STATE_VALUES, Breaker, Transition

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.hookspecs import CallNext
    from gateway.proxy import Provider

__all__ = ["Breaker", "CircuitBreaker", "Config"]

log = logging.getLogger("gateway.breaker")

#: the most breakers kept with ``per_model`` (the model comes from callers' bodies)
MAX_BREAKERS = 1024
#: statuses that count as the provider's failure (besides 502 and 504 raised by the core)
_TRANSPORT_FAILURES = (502, 504)


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """```yaml
    - use: breaker
      config: {failure_threshold: 5, recovery_s: 30, retries: 1, fallbacks: {openai: [backup]}}
    ```"""

    #: consecutive failures that open the breaker
    failure_threshold: Annotated[int, msgspec.Meta(ge=1)] = 5
    #: also open when this share of the last ``window`` calls failed (once ``window`` calls were seen)
    failure_rate: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None
    #: calls in the failure-rate window, and the fewest before the rate is judged
    window: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 20
    #: how long an open breaker refuses calls before letting a probe through
    recovery_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    #: each failed probe doubles the next open time, up to this (default: recovery_s, no growth)
    recovery_max_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    #: calls let through at once while half-open; the first success closes, a failure reopens
    half_open_probes: Annotated[int, msgspec.Meta(ge=1)] = 1
    #: one breaker per provider and model instead of one per provider
    per_model: bool = False
    #: more attempts at the same provider after a retryable failure
    retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 1
    #: provider answers worth another attempt (connection failures and timeouts always are)
    retry_statuses: tuple[Annotated[int, msgspec.Meta(ge=400, le=599)], ...] = (429, 502, 503, 504, 529)
    #: backoff before retry n (from 0) is uniform in [0, min(backoff_max_s, backoff_base_s * 2**n)]
    backoff_base_s: Annotated[float, msgspec.Meta(ge=0)] = 0.25
    backoff_max_s: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    #: a provider's Retry-After is honoured up to this; asked to wait longer, the breaker moves on
    retry_after_max_s: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    #: the whole request's budget (from its arrival) for attempts, backoff and fallbacks; none: unbounded
    deadline_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    #: provider -> providers to try, in order, when it is open or fails
    fallbacks: dict[str, list[str]] = {}
    #: fallback provider -> {requested model: model to ask it for} ("*" matches any model)
    fallback_models: dict[str, dict[str, str]] = {}
    #: "memory" (this replica alone) or redis://... (replicas share open breakers)
    backend: str = "memory"
    #: how often a replica reads the shared state (how far behind another replica's opening it can be)
    sync_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    #: prefix of the Redis keys
    key_prefix: str = "gateway:breaker:"


#: (caller's API, path) the core translates for a provider of the other type (docs/translation.md)
TRANSLATED = frozenset({("openai", "/v1/chat/completions"), ("anthropic", "/v1/messages")})


class Candidate:
    """One provider a request may be sent to, with the model map for it."""

    __slots__ = ("provider", "name", "models", "apis", "breaker")

    def __init__(self, provider: Provider, models: dict[str, str] | None) -> None:
        self.provider = provider
        self.name = provider.name
        self.models = models
        #: the request shapes it takes as they are (the mock takes both)
        self.apis = provider.apis
        #: the provider's breaker (None with ``per_model``: looked up per request)
        self.breaker: Breaker | None = None

    def takes(self, exchange: Exchange) -> bool:
        """Whether this provider can serve the request: the same API, or one the core translates."""
        api = exchange.api
        return api in self.apis or (exchange.method == "POST" and (api, exchange.path) in TRANSLATED)


class CircuitBreaker:
    """The ``breaker`` plugin."""

    Config = Config

    def __init__(self, config: Config) -> None:
        if config.backend != "memory" and not config.backend.startswith(("redis://", "rediss://", "unix://")):
            raise PluginConfigError("backend", "must be 'memory' or a redis://, rediss:// or unix:// URL")
        problem = url_problem(config.backend) if config.backend != "memory" else None
        if problem is not None:
            raise PluginConfigError("backend", problem)
        if config.recovery_max_s is not None and config.recovery_max_s < config.recovery_s:
            raise PluginConfigError("recovery_max_s", "must be at least recovery_s")
        if config.backoff_max_s < config.backoff_base_s:
            raise PluginConfigError("backoff_max_s", "must be at least backoff_base_s")
        self.config = config
        self.retry_statuses = frozenset(config.retry_statuses)
        self.breakers: dict[str, Breaker] = {}
        self.routes: dict[str, tuple[Candidate, ...]] = {}
        #: the 503 message when every candidate of a provider's route is open, made once
        self.open_messages: dict[str, str] = {}
        self.providers: dict[str, Provider] = {}
        self.shared: SharedState | None = None
        self.tracer: trace.Tracer = trace.NoOpTracer()
        # figures
        self.retries = 0
        self.fallbacks = 0
        self.short_circuited = 0
        self.deadline_exceeded = 0
        self.served_by_fallback: Counter[str] = Counter()
        self.short_circuited_by: Counter[str] = Counter()
        self.transitions: Counter[str] = Counter()

    # -- lifecycle ---------------------------------------------------------------

    @hookimpl
    def configure(self, gateway: Gateway) -> None:
        providers = gateway.providers
        config = self.config
        for primary, backups in config.fallbacks.items():
            if primary not in providers:
                raise PluginConfigError(f"fallbacks.{primary}", f"no provider named {primary!r} ({_known(providers)})")
            for position, backup in enumerate(backups):
                where = f"fallbacks.{primary}[{position}]"
                if backup not in providers:
                    raise PluginConfigError(where, f"no provider named {backup!r} ({_known(providers)})")
                if backup == primary or backups.index(backup) != position:
                    raise PluginConfigError(where, f"{backup!r} is named twice in this fallback list")
                first, second = providers[primary].type, providers[backup].type
                if "mock" not in (first, second) and first != second and backup not in config.fallback_models:
                    raise PluginConfigError(
                        where,
                        f"falling back from {primary!r} (type {first}) to {backup!r} (type {second}) goes through "
                        f"the core's translation and needs the models to ask {backup!r} for: "
                        f"fallback_models: {{{backup}: {{MODEL: {second.upper()}_MODEL}}}} ('*' matches any model)",
                    )
        for backup in config.fallback_models:
            if backup not in providers:
                raise PluginConfigError(f"fallback_models.{backup}", f"no provider named {backup!r} ({_known(providers)})")
        self.providers = providers
        self.tracer = gateway.tracer
        if not config.per_model:
            self.breakers = {name: self._new_breaker(name, name, None) for name in providers}
        self.routes = {}
        for name, provider in providers.items():
            route = (
                Candidate(provider, None),
                *(Candidate(providers[b], config.fallback_models.get(b)) for b in config.fallbacks.get(name, ())),
            )
            for candidate in route:
                candidate.breaker = self.breakers.get(candidate.name)
            self.routes[name] = route
            names = " and ".join(c.name for c in route)
            self.open_messages[name] = f"The circuit breaker of {names} is open: not calling it for now."

    @hookimpl
    def adopt(self, previous: CircuitBreaker) -> None:
        # A reload with the same options keeps the states of the providers still configured.
        if previous.config != self.config:
            return
        for key, breaker in previous.breakers.items():
            if breaker.provider in self.providers:
                breaker.on_transition = self._transition
                self.breakers[key] = breaker
        for route in self.routes.values():
            for candidate in route:
                candidate.breaker = self.breakers.get(candidate.name)

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        if self.config.backend != "memory":
            self.shared = SharedState(self.config.backend, self.config.key_prefix, self.config.sync_s, gateway.tracer)
            await self.shared.start(self._apply_shared, gateway)

    @hookimpl
    async def shutdown(self, gateway: Gateway) -> None:
        if self.shared is not None:
            await self.shared.close()

    # -- the send hook -----------------------------------------------------------

    @hookimpl
    async def send(self, exchange: Exchange, call_next: CallNext) -> Response:
        primary = exchange.provider
        route = self.routes.get(primary.name) if primary is not None else None
        if route is None:
            return await call_next(exchange)
        config = self.config
        deadline_s = config.deadline_s
        # What to answer if nobody serves: the last real outcome and what it was sent as.
        outcome: Response | GatewayError | None = None
        outcome_as: tuple[Provider, bytes, str | None] | None = None
        original_body = exchange.body
        # A plugin before this one (an alias, a cascade) may have chosen the model already.
        original_served = exchange.served_model
        original_model: Any = _UNREAD
        retry_after_s: float | None = None
        for index, candidate in enumerate(route):
            if index:
                if not candidate.takes(exchange):
                    continue
                exchange.provider = candidate.provider
                if exchange.body is not original_body:
                    exchange.body = original_body
                exchange.served_model = original_served
                if candidate.models:
                    if original_model is _UNREAD:
                        original_model = _model_of(exchange)
                    mapped = candidate.models.get(original_model) or candidate.models.get("*")
                    if mapped is not None and original_model is not None and mapped != original_model:
                        exchange.model = mapped
                        exchange.served_model = mapped
            breaker = candidate.breaker or self._breaker_for(candidate.name, exchange)
            attempt = 0
            while True:
                permit = breaker.acquire()
                if not permit:
                    wait_s = breaker.retry_after_s()
                    retry_after_s = wait_s if retry_after_s is None else min(retry_after_s, wait_s)
                    self.short_circuited += 1
                    self.short_circuited_by[candidate.name] += 1
                    if exchange.recording:
                        _event("breaker.short_circuit", provider=candidate.name, state=breaker.state)
                    break
                if index and not attempt:
                    self.fallbacks += 1
                    if exchange.recording:
                        _event("breaker.fallback", **{"from": primary.name, "to": candidate.name})  # type: ignore[union-attr]
                try:
                    if deadline_s is None:
                        response = await call_next(exchange)
                    else:
                        remaining_s = deadline_s - exchange.elapsed_s()
                        if remaining_s <= 0:
                            raise TimeoutError
                        async with asyncio.timeout(remaining_s):
                            response = await call_next(exchange)
                except Untranslatable:
                    # A fallback of the other API that cannot take this request (a parameter
                    # without equivalent there): not its failure, and not the caller's either.
                    breaker.release(permit)
                    if not index:
                        raise
                    break  # the next candidate, or the last real outcome
                except GatewayError as error:
                    if error.status not in _TRANSPORT_FAILURES:
                        breaker.release(permit)  # another plugin's answer, not the provider's failure
                        raise
                    breaker.failure(permit)
                    hint_s = None
                    retryable = True
                    failed: Response | GatewayError = error
                except TimeoutError:
                    # The request's own deadline, not the provider's fault: no verdict.
                    breaker.release(permit)
                    if deadline_s is None:
                        raise
                    self.deadline_exceeded += 1
                    await _discard(outcome)
                    exchange.provider, exchange.body, exchange.served_model = primary, original_body, original_served  # type: ignore[assignment]
                    raise upstream_timeout(f"No provider answered within the deadline of {deadline_s:g} s.") from None
                except BaseException:
                    breaker.release(permit)  # the caller left (CancelledError) or a bug: not the provider's failure
                    raise
                else:
                    status = response.status
                    if status < 500 and status != 429:
                        breaker.success(permit)
                        if response.stream is not None:
                            response.stream = _watched(response.stream, breaker)
                        if outcome is not None:
                            await _discard(outcome)
                        if index:
                            self.served_by_fallback[candidate.name] += 1
                        return response
                    breaker.failure(permit)
                    retryable = status in self.retry_statuses
                    hint_s = _retry_after_s(response) if retryable else None
                    failed = response
                await _discard(outcome)
                outcome, outcome_as = failed, (candidate.provider, exchange.body, exchange.served_model)
                if not retryable or attempt >= config.retries or breaker.state is OPEN:
                    break  # (a breaker this failure opened would only short-circuit the retry)
                delay_s = random.random() * min(config.backoff_max_s, config.backoff_base_s * (1 << attempt))
                if hint_s is not None:
                    if hint_s > config.retry_after_max_s:
                        break  # the provider asks for longer than we wait: next candidate, or its answer
                    delay_s = max(delay_s, hint_s)
                if deadline_s is not None and exchange.elapsed_s() + delay_s >= deadline_s:
                    break
                attempt += 1
                self.retries += 1
                if exchange.recording:
                    reason = failed.code if isinstance(failed, GatewayError) else str(failed.status)
                    _event("breaker.retry", provider=candidate.name, attempt=attempt, reason=reason, delay_s=delay_s)
                try:
                    await asyncio.sleep(delay_s)
                except BaseException:  # the caller left while we waited
                    await _discard(outcome)
                    raise
        if outcome is None:
            exchange.provider, exchange.body, exchange.served_model = primary, original_body, original_served
            raise circuit_open(
                self.open_messages[primary.name],  # type: ignore[union-attr]
                retry_after_s if retry_after_s is not None else config.recovery_s,
            )
        assert outcome_as is not None
        exchange.provider, exchange.body, exchange.served_model = outcome_as
        if isinstance(outcome, GatewayError):
            raise outcome  # the core's 502/504: it names the provider and model set just above
        return outcome

    def _breaker_for(self, name: str, exchange: Exchange) -> Breaker:
        if not self.config.per_model:
            return self.breakers[name]
        model = _model_of(exchange)
        key = f"{name}/{model}" if model is not None else name
        breaker = self.breakers.get(key)
        if breaker is None:
            if len(self.breakers) >= MAX_BREAKERS:
                self._forget_closed()
            breaker = self.breakers[key] = self._new_breaker(key, name, model)
        return breaker

    def _new_breaker(self, key: str, provider: str, model: str | None) -> Breaker:
        config = self.config
        return Breaker(
            key,
            provider,
            model,
            failure_threshold=config.failure_threshold,
            failure_rate=config.failure_rate,
            window_size=config.window,
            recovery_s=config.recovery_s,
            recovery_max_s=config.recovery_max_s,
            probes=config.half_open_probes,
            on_transition=self._transition,
        )

    def _forget_closed(self) -> None:
        for key in [key for key, breaker in self.breakers.items() if breaker.state is CLOSED]:
            del self.breakers[key]

    # -- state changes -----------------------------------------------------------

    def _transition(self, change: Transition) -> None:
        breaker = change.breaker
        self.transitions[change.new] += 1
        level = logging.WARNING if change.new is OPEN else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "breaker %s %s -> %s: %s",
                breaker.key,
                change.old,
                change.new,
                change.reason,
                extra={"breaker": breaker.key, "provider": breaker.provider, "state": change.new},
            )
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(
                "breaker.state_change",
                {"gateway.breaker": breaker.key, "from": change.old, "to": change.new, "reason": change.reason},
            )
        shared = self.shared
        if shared is None:
            return
        if change.new is OPEN and breaker.source == "local":
            until_epoch_s = time.time() + max(breaker.open_until - breaker.clock(), 0.0)

            def stored() -> None:
                if breaker.state is OPEN:
                    breaker.published_at = time.monotonic()

            shared.publish_open(breaker.key, until_epoch_s, stored)
        elif change.new is CLOSED:
            self._publish_closed(breaker)

    def _publish_closed(self, breaker: Breaker) -> None:
        """Remove the shared entry; until Redis confirms, reads sent earlier cannot reopen the breaker."""
        assert self.shared is not None
        breaker.close_acked_at = math.inf

        def acked() -> None:
            breaker.close_acked_at = time.monotonic()

        self.shared.publish_closed(breaker.key, acked)

    def _apply_shared(self, entries: dict[str, float], sent_at: float) -> None:
        """Bring local breakers in step with the shared open entries (see shared.py)."""
        now_epoch_s, now_s = time.time(), time.monotonic()
        live: set[str] = set()
        for key, until_epoch_s in entries.items():
            if until_epoch_s <= now_epoch_s:
                continue
            breaker = self._breaker_by_key(key)
            if breaker is None:
                continue
            if breaker.state is not OPEN and sent_at <= breaker.close_acked_at:
                continue  # read before our closing reached Redis: the entry is the one we removed
            live.add(key)
            until_s = now_s + (until_epoch_s - now_epoch_s)
            if breaker.state is OPEN and breaker.open_until >= until_s - 0.01:
                continue
            breaker.trip("opened by another replica", until=until_s, source="shared")
        for breaker in list(self.breakers.values()):
            if breaker.state is not OPEN or breaker.key in live:
                continue
            published = breaker.published_at is not None and breaker.published_at <= sent_at
            if breaker.source == "shared" or published:
                breaker.half_open("its shared entry was closed or reset")

    def _breaker_by_key(self, key: str) -> Breaker | None:
        breaker = self.breakers.get(key)
        if breaker is not None or not self.config.per_model:
            return breaker
        provider, _, model = key.partition("/")
        if provider not in self.providers or len(self.breakers) >= MAX_BREAKERS:
            return None
        breaker = self.breakers[key] = self._new_breaker(key, provider, model or None)
        return breaker

    # -- admin -------------------------------------------------------------------

    @hookimpl
    def admin_routes(self, gateway: Gateway) -> Iterable[web.RouteDef]:
        return [web.get("/breakers", self._list), web.post("/breakers/{provider}/reset", self._reset)]

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response(self._describe())

    async def _reset(self, request: web.Request) -> web.Response:
        name = request.match_info["provider"]
        if name not in self.providers:
            error = GatewayError(404, "not_found", f"No provider named {name!r}.")
            return web.Response(status=404, body=error_body(error, "openai"), content_type="application/json")
        reset = []
        for breaker in list(self.breakers.values()):
            if breaker.provider == name:
                breaker.reset("reset by an admin")
                reset.append(breaker.key)
                if self.shared is not None and breaker.close_acked_at != math.inf:
                    self._publish_closed(breaker)  # a shared entry of a breaker closed here
        log.info("breakers of %s reset by an admin", name, extra={"provider": name})
        return web.json_response({"reset": reset, **self._describe()})

    def _describe(self) -> dict[str, Any]:
        shared = self.shared
        return {
            "backend": "redis" if shared is not None else "memory",
            "backend_healthy": shared.healthy if shared is not None else True,
            "breakers": [breaker.describe() for breaker in self.breakers.values()],
        }

    @hookimpl
    def stats(self) -> dict[str, Any]:
        state_by_provider = dict.fromkeys(self.providers, 0)
        opened: Counter[str] = Counter()
        failures: Counter[str] = Counter()
        for breaker in self.breakers.values():
            value = STATE_VALUES[breaker.state]
            if value > state_by_provider.get(breaker.provider, 0):
                state_by_provider[breaker.provider] = value
            opened[breaker.provider] += breaker.opened
            failures[breaker.provider] += breaker.failures
        figures: dict[str, Any] = {
            "state_by_provider": state_by_provider,
            "opened_by_provider": {name: opened[name] for name in self.providers},
            "failures_by_provider": {name: failures[name] for name in self.providers},
            "short_circuited_by_provider": {name: self.short_circuited_by[name] for name in self.providers},
            "fallbacks_served_by_provider": {name: self.served_by_fallback[name] for name in self.providers},
            "transitions_by_state": {state: self.transitions[state] for state in (CLOSED, HALF_OPEN, OPEN)},
            "retries": self.retries,
            "fallbacks": self.fallbacks,
            "short_circuited": self.short_circuited,
            "deadline_exceeded": self.deadline_exceeded,
        }
        if self.shared is not None:
            figures["backend_errors"] = self.shared.errors
            figures["backend_healthy"] = int(self.shared.healthy)
        return figures


_UNREAD: Any = object()


def _known(providers: dict[str, Any]) -> str:
    return "providers: " + ", ".join(sorted(providers)) if providers else "no providers configured"


def _model_of(exchange: Exchange) -> str | None:
    try:
        return exchange.model
    except GatewayError:  # a body that is not JSON: the provider's to judge
        return None


def _event(name: str, **attributes: Any) -> None:
    trace.get_current_span().add_event(name, attributes)


def _retry_after_s(response: Response) -> float | None:
    """The wait a provider asked for: ``retry-after-ms`` (OpenAI), else ``Retry-After``."""
    headers = response.headers
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(float(value) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


async def _discard(outcome: Response | GatewayError | None) -> None:
    """Drop an answer nobody will read (a stream's upstream connection with it)."""
    if isinstance(outcome, Response) and outcome.stream is not None:
        await close_stream(outcome.stream)


async def _watched(stream: AsyncIterator[bytes], breaker: Breaker) -> AsyncIterator[bytes]:
    """A stream whose breaking mid-way (reset, timeout) counts as the provider's failure."""
    try:
        async for data in stream:
            yield data
    except (aiohttp.ClientError, OSError, TimeoutError):
        breaker.failure(CALL)
        raise
    finally:
        await close_stream(stream)
