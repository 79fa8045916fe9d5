"""What every call cost, who spent it, and a stop for callers whose budget is spent.

```yaml
plugins:
  - use: cost
    config:
      budget_usd_per_day: 5          # per caller; none: unlimited
      budget_usd_per_month: 100
      budgets: {batch-jobs: {usd_per_day: 50}}
      prices: {my-finetune: {input_per_mtok: 3, output_per_mtok: 12}}
      store: /var/lib/gateway/usage.db   # or redis://... for budgets shared by replicas
```

Per call: the usage the provider reported (or, when it reported none or the stream
was cut, an estimate from an offline tokenizer), its exact cost from the price table
(``prices.yaml`` under the ``prices`` option), ``exchange.cost_usd``, the
``x-gateway-cost-usd`` header on buffered answers, span attributes, a row in the
ledger, and the caller's budget charged. See docs/cost.md.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import itertools
import logging
import secrets
import sqlite3
import time
from collections import Counter
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web
from opentelemetry import trace

from gateway import Exchange, GatewayError, PluginConfigError, hookimpl
from gateway.errors import backend_unavailable, budget_exceeded, error_body
from gateway.exchange import UNBILLED_PATHS, Response, StashKey, StreamEvent, Usage, carries_usage, usage_details
from gateway.redis import url_problem

from . import estimate
from .budgets import Decision, Limits, MemoryBudgets, RedisBudgets, periods, resets_at
from .ledger import GROUPS, NONE, Ledger, open_database, spent_since, summarize
from .prices import PICO_PER_USD, ModelPrice, Prices, cost_pico, pico_to_usd, pico_to_usd_text, rates_of, usd_to_pico

log = logging.getLogger("gateway.plugins.cost")

#: paths whose streamed answers carry usage only when asked (``stream_options.include_usage``)
_INCLUDE_USAGE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
#: how much of a stream is kept to estimate its tokens should its usage never come
_KEEP_STREAM_BYTES = 4 << 20
_MAX_WARNED_MODELS = 1000


class ClientBudget(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One caller's budgets, over the plugin-wide ones (absent: the plugin-wide value)."""

    usd_per_day: Annotated[float, msgspec.Meta(ge=0)] | None = None
    usd_per_month: Annotated[float, msgspec.Meta(ge=0)] | None = None


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """```yaml
    - use: cost
      config:
        budget_usd_per_day: 5
        budgets: {frontend: {usd_per_day: 20, usd_per_month: 300}}
        prices: {gpt-4o: {input_per_mtok: 2.5, output_per_mtok: 10, cached_input_per_mtok: 1.25}}
        store: gateway-usage.db
    ```"""

    #: per caller and UTC day; None: unlimited
    budget_usd_per_day: Annotated[float, msgspec.Meta(ge=0)] | None = None
    #: per caller and UTC month; None: unlimited
    budget_usd_per_month: Annotated[float, msgspec.Meta(ge=0)] | None = None
    #: per-caller overrides, by client name (or x-gateway-user)
    budgets: dict[str, ClientBudget] = {}
    #: rows over the built-in table (prices.yaml), USD per million tokens
    prices: dict[str, ModelPrice] = {}
    #: SQLite ledger path, or redis://... for budget counters shared by replicas
    store: str = "gateway-usage.db"
    #: where records go when ``store`` is Redis (a local SQLite file)
    ledger: str = "gateway-usage.db"
    #: the ledger's batch window: a hard kill loses at most this much
    flush_interval_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    batch_size: Annotated[int, msgspec.Meta(ge=1)] = 500
    #: records kept in memory while the store fails; beyond, they are counted as lost
    max_pending: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    #: delete records older than this many days (checked hourly); None: keep them all
    retention_days: Annotated[int, msgspec.Meta(ge=1)] | None = None
    #: ask streamed OpenAI chat/completions for their usage (the extra chunk is hidden from callers who did not)
    include_usage: bool = True
    #: count tokens with the offline tokenizer when the provider reports none
    estimate: bool = True
    #: output tokens a call reserves against the budget when it sets no max_tokens
    reserve_output_tokens: Annotated[int, msgspec.Meta(ge=0)] = 256
    #: with Redis: open admits calls when Redis is down (unmetered), closed answers 503
    failure_mode: Literal["open", "closed"] = "open"
    redis_prefix: str = "gateway:cost"
    redis_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 0.5


class _Asked(msgspec.Struct):
    """What the request hook reads of a body: msgspec skips the rest (the messages)
    without building it, where a whole decode would make every dict and string."""

    model: Any = None
    stream: Any = None
    stream_options: Any = None
    max_completion_tokens: Any = None
    max_tokens: Any = None
    max_output_tokens: Any = None


_read_asked = msgspec.json.Decoder(_Asked).decode


class _Call:
    """What the plugin remembers of one exchange."""

    __slots__ = (
        "token", "reserved", "caller", "injected", "raws", "kept", "usage", "cost", "done", "model", "body",
        "asked_model",
    )  # fmt: skip

    def __init__(self, caller: str, body: bytes) -> None:
        self.caller = caller
        #: the body the request hook read, and its model: while the body is this one, the model is that one
        self.body = body
        self.asked_model: str | None = None
        self.token = ""
        #: picodollars reserved against the budget (None: nothing reserved)
        self.reserved: int | None = None
        #: whether the plugin added stream_options.include_usage
        self.injected = False
        self.raws: list[bytes] = []
        self.kept = 0
        self.usage: Usage | None = None
        self.cost = 0
        self.done = False
        #: the model priced, once the call is finished (the served one when a plugin changed it)
        self.model: str | None = None


CALL = StashKey[_Call]("cost.call")
_REDIS_SPAN_ATTRIBUTES = {"db.system": "redis", "db.operation": "EVALSHA"}


class Cost:
    Config = Config

    def __init__(self, config: Config) -> None:
        self.config = config
        try:
            self.prices = Prices({})
        except (msgspec.ValidationError, ValueError) as exc:  # the shipped table: a packaging error
            raise PluginConfigError("prices", f"the built-in price table is broken: {exc}") from None
        for model, price in config.prices.items():
            try:
                self.prices.rates[model] = rates_of(price)
            except ValueError as exc:
                raise PluginConfigError(f"prices.{model}", str(exc)) from None
        self.default_limits = Limits(
            _pico(config.budget_usd_per_day, "budget_usd_per_day"),
            _pico(config.budget_usd_per_month, "budget_usd_per_month"),
        )
        self.limits: dict[str, Limits] = {}
        for client, budget in config.budgets.items():
            self.limits[client] = Limits(
                _pico(budget.usd_per_day, f"budgets.{client}.usd_per_day")
                if budget.usd_per_day is not None
                else self.default_limits.per_day,
                _pico(budget.usd_per_month, f"budgets.{client}.usd_per_month")
                if budget.usd_per_month is not None
                else self.default_limits.per_month,
            )
        self.shared = config.store.startswith(("redis://", "rediss://", "unix://"))
        problem = url_problem(config.store) if self.shared else None
        if problem is not None:
            raise PluginConfigError("store", problem)
        if not self.shared and not config.store.strip():
            raise PluginConfigError("store", "give a SQLite file path or a redis:// URL")
        self.ledger_path = config.ledger if self.shared else config.store
        self.ledger = Ledger(
            self.ledger_path,
            flush_interval_s=config.flush_interval_s,
            batch_size=config.batch_size,
            max_pending=config.max_pending,
            retention_days=config.retention_days,
        )
        self.budgets: MemoryBudgets | RedisBudgets = MemoryBudgets()
        #: the budgets came from the previous configuration's instance (a reload): not read from the ledger again
        self._adopted = False
        self.tracer: trace.Tracer = trace.NoOpTracer()
        self.reserve_output_tokens = config.reserve_output_tokens
        self.has_budgets = (
            self.default_limits.per_day is not None
            or self.default_limits.per_month is not None
            or any(limit.per_day is not None or limit.per_month is not None for limit in self.limits.values())
        )
        # figures for /stats (exact integers; shown as floats)
        self.records = 0
        self.cost_total = 0
        self.cost_by_provider: Counter[str] = Counter()
        self.tokens: Counter[str] = Counter()
        self.cache_hits = 0
        self.estimated = 0
        self.usage_missing = 0
        self.budget_rejections = 0
        self.backend_errors = 0
        self.unmetered = 0
        self.unknown_model_calls = 0
        self.warned_models: set[str] = set()
        self.injected = 0
        self.dropped_usage_chunks = 0
        self.estimate_errors = 0
        # Reservation ids: unique across replicas without a syscall per call.
        self._token_prefix = secrets.token_hex(6) + "-"
        self._tokens = itertools.count()

    # -- lifecycle ----------------------------------------------------------------

    @hookimpl
    def adopt(self, previous: Cost) -> None:
        # A reload keeps the budgets in memory as they are, with the spend of calls whose ledger
        # rows are still on their way and the reservations in flight. Spend is a fact of the
        # ledger, not an option: a new budget or price table over the same ledger keeps it too
        # (reading the file back instead would forget the rows of the writer's pending batch).
        if (
            isinstance(previous.budgets, MemoryBudgets)
            and not previous.shared
            and not self.shared
            and previous.ledger_path == self.ledger_path
        ):
            self.budgets = previous.budgets
            self._adopted = True

    @hookimpl
    async def startup(self, gateway: Any) -> None:
        self.tracer = gateway.tracer
        try:
            await asyncio.to_thread(open_database, self.ledger_path)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            log.warning("usage ledger %s is locked at startup; records wait and are retried", self.ledger_path)
        self.ledger.start()
        if self.shared:
            redis = gateway.redis(self.config.store, timeout_s=self.config.redis_timeout_s)
            self.budgets = RedisBudgets(redis, self.config.redis_prefix)
            try:
                await self.budgets.ping()
            except Exception as exc:
                log.warning("cost: Redis is unreachable at startup (%s); failure_mode %s", exc, self.config.failure_mode)
        elif not self._adopted:
            month_start = periods(time.time())[1] + "-01"
            try:
                rows = await asyncio.to_thread(spent_since, self.ledger_path, month_start)
            except sqlite3.Error as exc:
                log.warning("cost: could not read this month's spend back from the ledger: %s", exc)
            else:
                self.budgets.load(rows)

    @hookimpl
    async def shutdown(self, gateway: Any) -> None:
        await asyncio.to_thread(self.ledger.close)
        await self.budgets.close()

    @hookimpl
    async def ready(self) -> bool:
        if isinstance(self.budgets, RedisBudgets) and self.config.failure_mode == "closed":
            try:
                return await self.budgets.ping()
            except Exception:
                return False
        return True

    # -- per request ----------------------------------------------------------------

    def limits_for(self, caller: str) -> Limits:
        return self.limits.get(caller, self.default_limits)

    @hookimpl
    async def request(self, exchange: Exchange) -> None:
        if exchange.method != "POST" or exchange.path in UNBILLED_PATHS:
            return  # listing models, counting tokens and the like cost nothing: no budget, no record
        call = _Call(exchange.caller, exchange.body)
        exchange.state[CALL] = call
        asked = None
        if exchange.has_json_body:
            try:
                asked = _read_asked(call.body)
            except (msgspec.DecodeError, RecursionError):  # not a JSON object: the upstream's to judge; metered all the same
                pass
            else:
                if type(asked.model) is str:
                    call.asked_model = asked.model
        if self.has_budgets:
            limits = self.limits.get(call.caller, self.default_limits)
            if limits.per_day is not None or limits.per_month is not None:
                if isinstance(self.budgets, MemoryBudgets):
                    self._take(exchange, call, limits, asked)
                else:
                    await self._reserve(exchange, call, limits, asked)
        if (
            asked is not None
            and asked.stream is True
            and self.config.include_usage
            and exchange.path in _INCLUDE_USAGE_PATHS
        ):
            options = asked.stream_options
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                document = dict(exchange.json())
                document["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
                exchange.set_json(document)
                call.body = exchange.body
                call.injected = True
                self.injected += 1

    def _take(self, exchange: Exchange, call: _Call, limits: Limits, asked: _Asked | None) -> None:
        """Reserve in memory: no I/O, nothing to wait for or to fail (no coroutine either)."""
        estimate_pico = self._estimate_cost(exchange, call, asked)
        now = time.time()
        refused = self.budgets.take(call.caller, estimate_pico, limits, now)  # type: ignore[union-attr]
        if refused is not None:
            self.budget_rejections += 1
            raise budget_exceeded(self._refusal(refused, limits, now))
        call.reserved = estimate_pico

    async def _reserve(self, exchange: Exchange, call: _Call, limits: Limits, asked: _Asked | None) -> None:
        """Reserve in Redis (shared by every replica)."""
        assert isinstance(self.budgets, RedisBudgets)
        budgets = self.budgets
        estimate_pico = self._estimate_cost(exchange, call, asked)
        now = time.time()
        call.token = f"{self._token_prefix}{next(self._tokens)}"
        try:
            if exchange.recording:
                with self.tracer.start_as_current_span(
                    "cost reserve", kind=trace.SpanKind.CLIENT, attributes=_REDIS_SPAN_ATTRIBUTES
                ):
                    decision = await budgets.reserve(call.caller, call.token, estimate_pico, limits, now)
            else:
                decision = await budgets.reserve(call.caller, call.token, estimate_pico, limits, now)
        except GatewayError:
            raise
        except Exception as exc:
            self.backend_errors += 1
            # A reserve that timed out may still run once Redis answers: give back what it
            # may reserve, or it would hold the caller's budget until it lapses (15 min).
            # The release follows it on the same connection, so Redis runs it after.
            budgets.settle_behind(call.caller, call.token, estimate_pico, 0, now, None, _ignore_error)
            if self.config.failure_mode == "closed":
                log.warning("cost: budget store unavailable, refusing (failure_mode closed): %r", exc)
                raise backend_unavailable("The budget store is unavailable.") from None
            self.unmetered += 1
            log.warning("cost: budget store unavailable, admitting unmetered (failure_mode open): %r", exc)
            return
        if not decision.allowed:
            self.budget_rejections += 1
            raise budget_exceeded(self._refusal(decision, limits, now))
        call.reserved = estimate_pico

    def _refusal(self, decision: Decision, limits: Limits, now: float) -> str:
        day_reset, month_reset = resets_at(now)
        if decision.period == "month":
            limit, spent, reset = limits.per_month, decision.spent_month, month_reset
        else:
            limit, spent, reset = limits.per_day, decision.spent_day, day_reset
        return (
            f"The {'monthly' if decision.period == 'month' else 'daily'} budget of ${pico_to_usd_text(limit or 0)} "
            f"is spent (${pico_to_usd_text(spent)} spent, ${pico_to_usd_text(decision.reserved)} reserved by "
            f"calls in flight); it resets at {reset}."
        )

    def _estimate_cost(self, exchange: Exchange, call: _Call, asked: _Asked | None) -> int:
        """What a call may cost, from cheap figures: the body's length and its output cap."""
        rates = self.prices.lookup(exchange.served_model if exchange.served_model is not None else call.asked_model)
        if rates is None:
            return 0
        output = self.reserve_output_tokens
        if asked is not None:
            for value in (asked.max_completion_tokens, asked.max_tokens, asked.max_output_tokens):
                if type(value) is int and value > 0:
                    output = value
                    break
        return (len(call.body) // 4 + 1) * rates.input + output * rates.output

    @hookimpl
    async def response(self, exchange: Exchange, response: Response) -> None:
        call = exchange.state.get(CALL)
        if call is None or response.stream is not None:
            return
        if not self._finish(exchange, call, response):
            await self._finish_estimated(exchange, call, response)
        response.headers["x-gateway-cost-usd"] = pico_to_usd_text(call.cost)

    @hookimpl
    async def chunk(self, exchange: Exchange, event: StreamEvent) -> None:
        call = exchange.state.get(CALL)
        if call is None:
            return
        raw = event.raw
        if call.injected and carries_usage(raw):
            document = event.json()
            if isinstance(document, dict) and document.get("choices") == [] and isinstance(document.get("usage"), dict):
                event.drop = True  # the caller did not ask for it; the core has read it already
                self.dropped_usage_chunks += 1
                return
        if call.kept < _KEEP_STREAM_BYTES:
            call.raws.append(raw)
            call.kept += len(raw)

    @hookimpl
    async def complete(self, exchange: Exchange) -> None:
        call = exchange.state.get(CALL)
        if call is None:
            return
        if not call.done:
            response = exchange.response
            if not self._finish(exchange, call, response):
                assert response is not None
                await self._finish_estimated(exchange, call, response)
        now = time.time()
        # Charge every caller's spend: in memory it is cheap (and /usage/quota shows it
        # without a limit); in Redis only when some budget needs it (a round trip).
        if call.reserved is not None or (call.cost and (self.has_budgets or not self.shared)):
            if isinstance(self.budgets, RedisBudgets):
                self._settle_behind(exchange, call, now)
            else:
                self.budgets.charge(call.caller, call.reserved, call.cost, now)
        self._record(exchange, call, now)

    def _settle_behind(self, exchange: Exchange, call: _Call, now: float) -> None:
        """Queue the Redis settle without waiting for it (write-behind: it joins the next
        pipeline with the other plugins' writes; a $0 call's only gives its reservation
        back, with the next reserve); its failure is counted and logged when Redis
        answers. Shutdown waits for it."""
        span = None
        if exchange.recording:
            span = self.tracer.start_span(
                "cost settle", kind=trace.SpanKind.CLIENT, attributes=_REDIS_SPAN_ATTRIBUTES
            )
        cost = call.cost

        def done(error: BaseException | None) -> None:
            if error is not None:
                self._settle_failed(cost, error)

        self.budgets.settle_behind(call.caller, call.token, call.reserved, cost, now, span, done)  # type: ignore[union-attr]

    def _settle_failed(self, cost: int, exc: BaseException) -> None:
        self.backend_errors += 1
        log.warning("cost: could not charge %s to the budget store: %r", pico_to_usd_text(cost), exc)

    # -- working out usage and cost ---------------------------------------------------

    def _finish(self, exchange: Exchange, call: _Call, response: Response | None) -> bool:
        """Usage and cost, once per exchange, when the answer reported its usage (or needs
        none); False when the tokens are to be counted: :meth:`_finish_estimated` then.
        A plain call, not a coroutine: on the usual path nothing waits."""
        call.done = True
        if exchange.served_model is not None:
            model = exchange.served_model
        elif exchange.body is call.body:  # as the request hook read it
            model = call.asked_model
        else:  # a later plugin rewrote the body
            model = _model_of(exchange)
        call.model = model
        if exchange.cache_status == "hit":
            call.usage = Usage()
            exchange.cost_usd = 0.0
            return True
        reported = exchange.usage
        if reported is None and response is not None and response.stream is None and b'"usage"' in response.body:
            # The response hook runs before the core sets exchange.response: read it here.
            exchange.add_usage(*usage_details(response.json()))
            reported = exchange.usage
        usage = msgspec.structs.replace(reported) if reported is not None else None
        if response is not None and exchange.attempts > 0 and response.status < 400:  # answered
            if usage is None:
                self.usage_missing += 1
            if self.config.estimate and (usage is None or (response.stream is not None and exchange.error is not None)):
                # No usage, or a cut stream whose usage so far may be the opening figures only.
                call.usage = usage
                return False
        self._price(exchange, call, usage if usage is not None else Usage())
        return True

    async def _finish_estimated(self, exchange: Exchange, call: _Call, response: Response) -> None:
        """Usage counted offline (in a thread), then the cost."""
        usage = call.usage
        try:
            usage = await asyncio.to_thread(self._estimate_usage, exchange, response, call.raws, usage)
        except Exception as exc:  # an estimate is never worth failing the call for
            self.estimate_errors += 1
            log.warning("cost: estimating the tokens of %s failed: %r", exchange.request_id, exc)
        self._price(exchange, call, usage if usage is not None else Usage())

    def _price(self, exchange: Exchange, call: _Call, usage: Usage) -> None:
        call.raws = []
        call.usage = usage
        exchange.usage = usage
        model = call.model
        rates = self.prices.lookup(model)
        if rates is None:
            call.cost = 0
            if model and (usage.input_tokens or usage.output_tokens):
                self.unknown_model_calls += 1
                if model not in self.warned_models and len(self.warned_models) < _MAX_WARNED_MODELS:
                    self.warned_models.add(model)
                    log.warning("cost: no price for model %r: its calls cost 0 until `prices` names it", model)
        else:
            call.cost = cost_pico(rates, usage)
        # A cascade's rejected draft was paid for too; and what the model the caller
        # asked for would have cost for these tokens is the cascade's baseline.
        for unserved_model, unserved_usage in exchange.unserved_usage:
            unserved_rates = self.prices.lookup(unserved_model)
            if unserved_rates is not None:
                call.cost += cost_pico(unserved_rates, unserved_usage)
        if exchange.requested_model is not None:
            baseline_rates = self.prices.lookup(exchange.requested_model)
            if baseline_rates is not None:
                exchange.baseline_cost_usd = pico_to_usd(cost_pico(baseline_rates, usage))
        exchange.cost_usd = call.cost / PICO_PER_USD  # pico_to_usd, without a call on every answer

    def _estimate_usage(self, exchange: Exchange, response: Response, raws: list[bytes], seen: Usage | None) -> Usage:
        """Count tokens offline (blocking: runs in a thread)."""
        try:
            document = exchange.json()
        except GatewayError:
            document = None
        if seen is None:
            usage = Usage(input_tokens=estimate.request_tokens(document), estimated=True)
        else:
            usage = msgspec.structs.replace(seen)
        if response.is_stream:
            streamed = estimate.stream_tokens(raws)
        else:
            streamed = estimate.answer_tokens(response.json())
        if streamed > usage.output_tokens:
            usage.output_tokens = streamed
            usage.estimated = True
        if usage.input_tokens == 0 and document is not None:
            usage.input_tokens = estimate.request_tokens(document)
            usage.estimated = True
        return usage

    def _record(self, exchange: Exchange, call: _Call, now: float) -> None:
        usage = call.usage or Usage()
        error = exchange.error
        response = exchange.response
        if error is not None:
            status, code = error.status, error.code
        else:
            status, code = (response.status if response is not None else 0), NONE
        provider = exchange.provider.name if exchange.provider is not None and exchange.attempts else None
        hit = exchange.cache_status == "hit"
        cost = call.cost
        input_tokens, output_tokens = usage.input_tokens, usage.output_tokens
        cached_input, cache_write, reasoning = usage.cached_input_tokens, usage.cache_write_tokens, usage.reasoning_tokens
        self.ledger.put(
            (
                now,
                periods(now)[0],
                exchange.request_id,
                call.caller,
                provider,
                call.model,
                exchange.path,
                status,
                code,
                0 if response is None or response.stream is None else 1,
                input_tokens,
                output_tokens,
                cached_input,
                cache_write,
                reasoning,
                cost,
                1 if hit else 0,
                1 if usage.estimated else 0,
                exchange.cascade_decision or NONE,
                # milliseconds to the microsecond (round(x, 3) goes through decimal strings: ~1 us)
                round((time.perf_counter() - exchange.started_at) * 1_000_000) / 1000,
            )
        )
        self.records += 1
        self.cost_total += cost
        if provider is not None:
            self.cost_by_provider[provider] += cost
        tokens = self.tokens
        tokens["input"] += input_tokens
        tokens["output"] += output_tokens
        tokens["cached_input"] += cached_input
        tokens["cache_write"] += cache_write
        tokens["reasoning"] += reasoning
        if hit:
            self.cache_hits += 1
        if usage.estimated:
            self.estimated += 1
        if exchange.recording:
            trace.get_current_span().set_attributes(
                {
                    "gateway.cost_usd": pico_to_usd(call.cost),
                    "gen_ai.usage.input_tokens": usage.input_tokens,
                    "gen_ai.usage.output_tokens": usage.output_tokens,
                    "gateway.usage.cached_input_tokens": usage.cached_input_tokens,
                    "gateway.usage.cache_write_tokens": usage.cache_write_tokens,
                    "gateway.usage.reasoning_tokens": usage.reasoning_tokens,
                    "gateway.usage.estimated": usage.estimated,
                    "gateway.cache_hit": hit,
                }
            )

    # -- admin and figures --------------------------------------------------------------

    @hookimpl
    def admin_routes(self, gateway: Any) -> list[web.RouteDef]:
        return [web.get("/usage", self._usage_route), web.get("/usage/quota", self._quota_route)]

    async def _usage_route(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        try:
            days = int(query.get("days", "7"))
            if not 1 <= days <= 3660:
                raise ValueError
        except ValueError:
            return _bad_request("days must be a whole number from 1 to 3660")
        group_by = tuple(part.strip() for part in query.get("group_by", "").split(",") if part.strip())
        unknown = [part for part in group_by if part not in GROUPS]
        if unknown or len(set(group_by)) != len(group_by):
            return _bad_request(f"group_by takes any of {', '.join(GROUPS)} (comma-separated), got {unknown or group_by}")
        filters = {name: query[name] for name in GROUPS if query.get(name)}
        today = dt.datetime.now(dt.UTC).date()
        since = (today - dt.timedelta(days=days - 1)).isoformat()
        rows = await asyncio.to_thread(
            summarize, self.ledger_path, since_day=since, filters=filters, group_by=group_by
        )
        totals: dict[str, Any] = {name: 0 for name in _FIGURE_NAMES}
        for row in rows:
            for name in _FIGURE_NAMES:
                totals[name] += row[name]
        if query.get("format") == "csv":
            return _csv(rows, ("day", *group_by))
        return web.json_response(
            {
                "from": since,
                "to": today.isoformat(),
                "days": days,
                "filters": filters,
                "group_by": list(group_by),
                "totals": _shown(totals),
                "rows": [_shown(row) for row in rows],
                "prices_date": self.prices.date,
            }
        )

    async def _quota_route(self, request: web.Request) -> web.Response:
        client = request.query.get("client")
        if not client:
            return _bad_request("name the caller: /usage/quota?client=NAME")
        now = time.time()
        try:
            spent_day, spent_month, reserved = await self.budgets.quota(client, now)
        except Exception as exc:
            self.backend_errors += 1
            log.warning("cost: budget store unavailable for /usage/quota: %r", exc)
            error = backend_unavailable("The budget store is unavailable.")
            return web.Response(status=503, body=error_body(error, "openai"), content_type="application/json")
        limits = self.limits_for(client)
        day_reset, month_reset = resets_at(now)
        day, month = periods(now)
        return web.json_response(
            {
                "client": client,
                "day": _period(day, spent_day, reserved, limits.per_day, day_reset),
                "month": _period(month, spent_month, reserved, limits.per_month, month_reset),
                "backend": "redis" if self.shared else "memory",
            }
        )

    @hookimpl
    def stats(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "cost_usd": pico_to_usd(self.cost_total),
            "cost_usd_by_provider": {name: pico_to_usd(pico) for name, pico in self.cost_by_provider.items()},
            "tokens_by_kind": dict(self.tokens),
            "cache_hits": self.cache_hits,
            "estimated": self.estimated,
            "usage_missing": self.usage_missing,
            "estimate_errors": self.estimate_errors,
            "unknown_model_calls": self.unknown_model_calls,
            "unknown_models": len(self.warned_models),
            "budget_rejections": self.budget_rejections,
            "budget_backend_errors": self.backend_errors,
            "unmetered": self.unmetered,
            "usage_chunks_hidden": self.dropped_usage_chunks,
            "ledger_written": self.ledger.written,
            "ledger_pending": self.ledger.pending,
            "ledger_write_errors": self.ledger.write_errors,
            "ledger_lost": self.ledger.lost,
            "ledger_pruned": self.ledger.pruned,
        }


_FIGURE_NAMES = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_picousd",
    "cache_hits",
    "errors",
    "estimated",
)


def _pico(value: float | None, key: str) -> int | None:
    if value is None:
        return None
    try:
        return usd_to_pico(value)
    except ValueError as exc:
        raise PluginConfigError(key, str(exc)) from None


def _model_of(exchange: Exchange) -> str | None:
    if exchange.served_model is not None:
        return exchange.served_model
    try:
        return exchange.model
    except GatewayError:
        return None


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    shown = dict(row)
    shown["cost_usd"] = pico_to_usd(shown["cost_picousd"])
    return shown


def _period(name: str, spent: int, reserved: int, limit: int | None, reset: str) -> dict[str, Any]:
    return {
        "period": name,
        "spent_usd": pico_to_usd(spent),
        "reserved_usd": pico_to_usd(reserved),
        "limit_usd": pico_to_usd(limit) if limit is not None else None,
        "remaining_usd": pico_to_usd(max(limit - spent - reserved, 0)) if limit is not None else None,
        "resets_at": reset,
    }


def _csv(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> web.Response:
    out = io.StringIO()
    writer = csv.writer(out)
    names = [name for name in _FIGURE_NAMES if name != "cost_picousd"]
    writer.writerow([*keys, *names, "cost_usd"])
    for row in rows:
        writer.writerow([*(row[key] for key in keys), *(row[name] for name in names), pico_to_usd_text(row["cost_picousd"])])
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="usage.csv"'},
    )


def _bad_request(message: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "invalid_request_error", "code": "invalid_request", "param": None}},
        status=400,
    )


def _ignore_error(error: BaseException | None) -> None:
    """A release after a failed reserve: Redis is likely still away, and the reservation lapses anyway."""
