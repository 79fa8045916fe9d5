"""cascade: answer with a cheap draft model, escalate only when the draft is not good enough.

```yaml
plugins:
  - use: cascade
    config:
      draft_model: gpt-4o-mini      # requests for escalate_model try the draft first
      escalate_model: gpt-4o
      threshold: 0.5                # every validator's score must reach it
```

or several cascades, each matching requested models by glob, with their own
providers (across API types through the core's translation):

```yaml
      cascades:
        - {models: ["gpt-4o", "gpt-4.1"], draft_model: gpt-4o-mini}
        - {models: ["claude-sonnet-*"], draft_model: claude-haiku-4-5, draft_provider: anthropic}
```

The plugin sits on the ``send`` hook, outside the breaker: it asks the draft model
(each attempt is a CLIENT span, with the breaker's retries and fallback), reads the
answer, scores it with the validators, and either returns it (``accepted``) or asks
the strong model (``escalated``). A streamed draft is held back until it is judged:
a caller never sees an answer that is later withdrawn. See docs/cascade.md.

Facts for other plugins, on the exchange: ``cascade_decision``, ``served_model``
(``x-gateway-model``), ``requested_model`` (what the caller asked for) and
``unserved_usage`` (a rejected draft's tokens, which cost charges too).
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from fnmatch import translate
from typing import Any

import msgspec
from opentelemetry import trace

from gateway import (
    CallNext,
    Exchange,
    GatewayError,
    PluginConfigError,
    Response,
    StashKey,
    StreamEvent,
    Usage,
    hookimpl,
)
from gateway.exchange import SSEBuffer, close_stream

from . import validators as validator_registry
from .answer import Draft, Question, StreamReader, draft_from_body

log = logging.getLogger("gateway.cascade")

#: the paths whose answers the validators can read (the caller's shape)
PATHS = frozenset({"/v1/chat/completions", "/v1/messages"})


class ValidatorConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    use: str
    config: dict[str, Any] = {}


class CascadeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One cascade: requests for ``models`` (globs) try ``draft_model`` first."""

    models: list[str]
    draft_model: str
    escalate_model: str | None = None  # default: the model the caller asked for
    draft_provider: str | None = None  # default: the provider the request was routed to
    escalate_provider: str | None = None
    threshold: float | None = None  # default: the plugin's


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    draft_model: str | None = None
    escalate_model: str | None = None
    cascades: list[CascadeConfig] = []
    threshold: float = 0.5
    validators: list[str | ValidatorConfig] = msgspec.field(default_factory=lambda: list(validator_registry.DEFAULT))
    bypass_clients: list[str] = []
    #: ask an OpenAI-type draft provider for token logprobs when a validator reads them
    request_logprobs: bool = True
    #: a streamed draft larger than this is not held back for judging: it escalates
    max_draft_bytes: int = 1_048_576


class _Rule:
    __slots__ = ("config", "matches", "threshold", "draft_provider", "escalate_provider")

    def __init__(self, config: CascadeConfig, threshold: float) -> None:
        self.config = config
        self.matches = re.compile("|".join(translate(glob) for glob in config.models)).match
        self.threshold = config.threshold if config.threshold is not None else threshold
        self.draft_provider: Any = None
        self.escalate_provider: Any = None


class Verdict(msgspec.Struct):
    """The validators' scores and what they decided."""

    accepted: bool
    reason: str | None
    scores: dict[str, float]


RULE = StashKey[_Rule]("cascade.rule")
VERDICT = StashKey[Verdict]("cascade.verdict")


class Cascade:
    Config = Config

    def __init__(self, config: Config) -> None:
        cascades = list(config.cascades)
        if config.draft_model or config.escalate_model:
            if not (config.draft_model and config.escalate_model):
                raise PluginConfigError("draft_model", "draft_model and escalate_model go together")
            cascades.insert(0, CascadeConfig(models=[config.escalate_model], draft_model=config.draft_model))
        if not cascades:
            raise PluginConfigError("cascades", "name a draft_model and escalate_model, or at least one cascade")
        if not 0 < config.threshold <= 1:
            raise PluginConfigError("threshold", "must be above 0 and at most 1")
        for index, cascade in enumerate(config.cascades):
            if not cascade.models:
                raise PluginConfigError(f"cascades[{index}].models", "name at least one model glob")
            if cascade.threshold is not None and not 0 < cascade.threshold <= 1:
                raise PluginConfigError(f"cascades[{index}].threshold", "must be above 0 and at most 1")
        self.rules = [_Rule(cascade, config.threshold) for cascade in cascades]
        self.checks: list[Any] = []
        self.routes: list[Any] = []
        for index, entry in enumerate(config.validators):
            use, options = (entry, {}) if isinstance(entry, str) else (entry.use, entry.config)
            try:
                validator = validator_registry.load(use)(options)
            except LookupError as exc:
                raise PluginConfigError(f"validators[{index}]", str(exc)) from None
            except (ValueError, TypeError, ImportError, AttributeError) as exc:
                raise PluginConfigError(f"validators[{index}]", f"{use}: {exc}") from None
            if hasattr(validator, "route"):
                self.routes.append(validator)
            if hasattr(validator, "check"):
                self.checks.append(validator)
        self.wants_logprobs = config.request_logprobs and any(getattr(v, "wants_logprobs", False) for v in self.checks)
        self.bypass_clients = frozenset(config.bypass_clients)
        self.max_draft_bytes = config.max_draft_bytes
        self.figures: Counter[str] = Counter()
        self.escalations: Counter[str] = Counter()
        self.micro_usd: Counter[str] = Counter()  # cost and baseline, summed exactly
        #: the gateway's routing of a (path, model) when it routes by model (Router.for_model)
        self.route_for: Callable[[str, str], Any] | None = None

    @hookimpl
    def configure(self, gateway: Any) -> None:
        providers = gateway.providers
        # With routes by model glob, a draft (or escalation) model goes where they send it.
        router = gateway.router
        self.route_for = router.for_model if router.by_model else None
        for index, rule in enumerate(self.rules):
            for attribute in ("draft_provider", "escalate_provider"):
                name = getattr(rule.config, attribute)
                if name is None:
                    continue
                if name not in providers:
                    known = ", ".join(providers)
                    raise PluginConfigError(f"cascades[{index}].{attribute}", f"unknown provider {name!r} (known: {known})")
                setattr(rule, attribute, providers[name])

    # -- per request ------------------------------------------------------------------

    @hookimpl
    async def request(self, exchange: Exchange) -> None:
        if exchange.path not in PATHS or not exchange.has_json_body:
            return
        model = exchange.model
        if model is None:
            return
        rule = next((rule for rule in self.rules if rule.matches(model)), None)
        if rule is None:
            return
        if exchange.headers.get("x-gateway-cascade", "").lower() == "off" or exchange.caller in self.bypass_clients:
            self.figures["bypassed"] += 1
            return
        exchange.state[RULE] = rule

    @hookimpl
    async def send(self, exchange: Exchange, call_next: CallNext) -> Response:
        rule = exchange.state.get(RULE)
        if rule is None:
            return await call_next(exchange)
        document = exchange.json()
        requested = document["model"]
        exchange.requested_model = requested
        question = Question.of(document)
        span = trace.get_current_span()
        route_scores = self._route(question)
        low = min(route_scores.items(), key=lambda item: item[1], default=None)
        if low is not None and low[1] < rule.threshold:
            verdict = Verdict(False, f"{low[0]}", route_scores)
            return await self._escalate(exchange, call_next, rule, requested, verdict, span)

        original_body, original_provider = exchange.body, exchange.provider
        draft_document = {**document, "model": rule.config.draft_model}
        if rule.draft_provider is not None:
            exchange.provider = rule.draft_provider
        elif (routed := self._rerouted(exchange, requested, original_provider, rule.config.draft_model)) is not None:
            exchange.provider = routed
        asked_logprobs = "logprobs" in document
        added_logprobs = (
            self.wants_logprobs
            and not asked_logprobs
            and exchange.api == "openai"
            and exchange.provider is not None
            and exchange.provider.type != "anthropic"
        )
        if added_logprobs:
            draft_document["logprobs"] = True
        exchange.set_json(draft_document)
        started = time.perf_counter()
        try:
            response = await call_next(exchange)
        except GatewayError as error:
            verdict = Verdict(False, "draft_error", {})
            self._restore(exchange, original_body, original_provider)
            log.info("cascade draft failed (%s), escalating", error.code)
            return await self._escalate(exchange, call_next, rule, requested, verdict, span)
        if response.status >= 400:
            await _discard(response)
            self._restore(exchange, original_body, original_provider)
            return await self._escalate(exchange, call_next, rule, requested, Verdict(False, "draft_error", {}), span)

        if response.stream is not None:
            reader = StreamReader()
            chunks, size = [], 0
            reading = time.perf_counter()
            try:
                async for data in response.stream:
                    size += len(data)
                    if size > self.max_draft_bytes:
                        break
                    chunks.append(data)
                    reader.feed(data)
            except Exception:  # a draft stream that broke is a failed draft
                size = -1
            finally:
                await close_stream(response.stream)
                # The draft's events are upstream time: Server-Timing's gateway figure is the gateway's own.
                exchange.upstream_s += time.perf_counter() - reading
            draft = reader.result()
            if size < 0 or size > self.max_draft_bytes:
                reason = "draft_error" if size < 0 else "draft_too_large"
                self._unserved(exchange, rule, draft)
                self._restore(exchange, original_body, original_provider)
                return await self._escalate(exchange, call_next, rule, requested, Verdict(False, reason, {}), span)
        else:
            draft = draft_from_body(response.body or b"")
        verdict = self._judge(question, draft, rule.threshold, route_scores)
        if span.is_recording():
            span.set_attribute("gateway.cascade.draft_ms", round((time.perf_counter() - started) * 1000, 3))
        if not verdict.accepted:
            self._unserved(exchange, rule, draft)
            self._restore(exchange, original_body, original_provider)
            return await self._escalate(exchange, call_next, rule, requested, verdict, span)

        self._decided(exchange, "accepted", rule.config.draft_model, verdict, span)
        if response.stream is not None:
            events = _without_logprobs(chunks) if added_logprobs else chunks
            response.stream = _replay(events)
        elif added_logprobs:
            response = _strip_logprobs(response)
        return response

    async def _escalate(
        self, exchange: Exchange, call_next: CallNext, rule: _Rule, requested: str, verdict: Verdict, span: Any
    ) -> Response:
        target = rule.config.escalate_model or requested
        if target != requested:
            if rule.escalate_provider is None:
                routed = self._rerouted(exchange, requested, exchange.provider, target)
                if routed is not None:
                    exchange.provider = routed
            exchange.model = target
        if rule.escalate_provider is not None:
            exchange.provider = rule.escalate_provider
        self._decided(exchange, "escalated", target, verdict, span)
        return await call_next(exchange)

    def _decided(self, exchange: Exchange, decision: str, model: str, verdict: Verdict, span: Any) -> None:
        exchange.cascade_decision = decision
        exchange.served_model = model
        exchange.state[VERDICT] = verdict
        exchange.response_headers["x-gateway-cascade"] = decision
        self.figures[decision] += 1
        if verdict.reason is not None:
            self.escalations[verdict.reason] += 1
        if span.is_recording():
            span.set_attributes(
                {
                    "gateway.cascade.decision": decision,
                    "gateway.cascade.model": model,
                    "gateway.cascade.scores": [f"{name}={score:.3f}" for name, score in verdict.scores.items()],
                }
            )
            if verdict.reason is not None:
                span.set_attribute("gateway.cascade.reason", verdict.reason)

    def _route(self, question: Question) -> dict[str, float]:
        """The scores of the validators that judge the question before any draft (complexity)."""
        scores: dict[str, float] = {}
        for validator in self.routes:
            try:
                score = validator.route(question)
            except Exception as exc:  # a broken validator must not take the request down
                log.warning("cascade validator %s failed: %r", validator.name, exc)
                continue
            if score is not None:
                scores[validator.name] = max(0.0, min(1.0, float(score)))
        return scores

    def _judge(self, question: Question, draft: Draft, threshold: float, scores: dict[str, float]) -> Verdict:
        scores = dict(scores)
        for validator in self.checks:
            try:
                score = validator.check(question, draft)
            except Exception as exc:  # a broken validator must not take the request down
                log.warning("cascade validator %s failed: %r", validator.name, exc)
                continue
            if score is not None:
                scores[validator.name] = max(0.0, min(1.0, float(score)))
        low = min(scores.items(), key=lambda item: item[1], default=None)
        if low is not None and low[1] < threshold:
            return Verdict(False, low[0], scores)
        return Verdict(True, None, scores)

    def _rerouted(self, exchange: Exchange, requested: str, provider: Any, model: str) -> Any:
        """Where the routes send ``model``, when ``provider`` is the one they give the
        requested model (not a plugin's own choice); None otherwise, or when no route takes it."""
        route_for = self.route_for
        if route_for is None or route_for(exchange.path, requested) is not provider:
            return None
        return route_for(exchange.path, model)

    @staticmethod
    def _restore(exchange: Exchange, body: bytes, provider: Any) -> None:
        exchange.body = body
        exchange.provider = provider

    @staticmethod
    def _unserved(exchange: Exchange, rule: _Rule, draft: Draft) -> None:
        input_tokens, output_tokens = draft.usage
        if input_tokens is None and output_tokens is None:
            return
        usage = Usage(input_tokens=input_tokens or 0, output_tokens=output_tokens or 0)
        exchange.unserved_usage.append((rule.config.draft_model, usage))

    @hookimpl
    async def complete(self, exchange: Exchange) -> None:
        if exchange.cascade_decision is None or exchange.cost_usd is None:
            return
        self.micro_usd["cost"] += round(exchange.cost_usd * 1_000_000)
        if exchange.baseline_cost_usd is not None:
            self.micro_usd["baseline"] += round(exchange.baseline_cost_usd * 1_000_000)

    @hookimpl
    def stats(self) -> dict[str, Any]:
        accepted, escalated = self.figures["accepted"], self.figures["escalated"]
        decided = accepted + escalated
        cost, baseline = self.micro_usd["cost"], self.micro_usd["baseline"]
        return {
            "accepted": accepted,
            "escalated": escalated,
            "bypassed": self.figures["bypassed"],
            "acceptance_rate": round(accepted / decided, 4) if decided else 0.0,
            "escalations_by_reason": dict(self.escalations),
            "cost_usd": cost / 1_000_000,
            "baseline_cost_usd": baseline / 1_000_000,
            "saving_usd": (baseline - cost) / 1_000_000,
        }


async def _discard(response: Response) -> None:
    if response.stream is not None:
        await close_stream(response.stream)


async def _replay(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _strip_logprobs(response: Response) -> Response:
    """The caller did not ask for logprobs: the answer it gets has none."""
    document = response.json()
    if isinstance(document, dict):
        for choice in document.get("choices") or ():
            if isinstance(choice, dict):
                choice["logprobs"] = None
        return Response.json_response(document, response.status, response.headers)
    return response


def _without_logprobs(chunks: list[bytes]) -> list[bytes]:
    events = SSEBuffer()
    out = []
    for data in chunks:
        for raw in events.feed(data):
            event = StreamEvent(raw)
            document = event.json()
            if isinstance(document, dict) and any(c.get("logprobs") for c in document.get("choices") or ()):
                for choice in document["choices"]:
                    choice["logprobs"] = None
                event.replace(document)
            out.append(event.raw)
    if events.pending:
        out.append(events.pending)
    return out
