"""The async chain runner: config order, short-circuit, the send onion, spans, on_error.

Pluggy cannot await, so the chain is read from ``get_hookimpls()`` once at startup
and frozen into tuples of bound coroutine functions in config order. Per request a
stage is a plain loop; a hook span is made only when the exchange is sampled.

Failure policy, per plugin (``on_error``): ``closed`` turns an exception into the
500 ``plugin_error`` answer; ``open`` logs it, counts it and carries on as if the
plugin were not there. A :class:`GatewayError` is never a failure: it is the
plugin's answer (429, 402...) and always reaches the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any

import pluggy
from opentelemetry import context as otel_context
from opentelemetry import trace

from gateway.errors import GatewayError, StartupError, plugin_error
from gateway.exchange import Exchange, Response, StreamEvent
from gateway.plugins import Plugin
from gateway.redact import record_exception
from gateway.telemetry import start_span

log = logging.getLogger("gateway.chain")

Send = Callable[[Exchange], Awaitable[Response]]


class Hook:
    """One plugin's implementation of one hook, ready to call."""

    __slots__ = (
        "plugin", "name", "function", "index", "label", "fails_open", "span_name", "attributes", "deferred_attributes"
    )

    def __init__(self, plugin: Plugin, name: str, function: Callable[..., Any]) -> None:
        self.plugin = plugin
        self.name = name
        self.function = function
        self.index = plugin.index
        self.label = plugin.label
        self.fails_open = plugin.fails_open
        self.span_name = f"{plugin.label} {name}"
        self.attributes = {"gateway.plugin": plugin.label, "gateway.hook": name}
        self.deferred_attributes = {**self.attributes, "gateway.hook.deferred": True}


class Chain:
    """The hooks of every stage, in the order they run, built once."""

    def __init__(self, manager: pluggy.PluginManager, plugins: list[Plugin], tracer: trace.Tracer, forward: Send) -> None:
        self.plugins = tuple(plugins)
        self.tracer = tracer
        #: exceptions raised by each plugin's hooks (whatever its ``on_error``), by label
        self.failures: Counter[str] = Counter()
        by_instance = {id(p.instance): p for p in plugins}

        def hooks(name: str) -> tuple[Hook, ...]:
            found = [
                Hook(by_instance[id(impl.plugin)], name, impl.function)
                for impl in getattr(manager.hook, name).get_hookimpls()
                if id(impl.plugin) in by_instance
            ]
            return tuple(sorted(found, key=lambda hook: hook.index))

        self.configure_hooks = hooks("configure")
        self.adopt_hooks = hooks("adopt")
        self.startup_hooks = hooks("startup")
        self.shutdown_hooks = tuple(reversed(hooks("shutdown")))
        self.request_hooks = hooks("request")
        self._request_hook_at = {hook.index: hook for hook in self.request_hooks}
        self.send_hooks = hooks("send")
        self.response_hooks = tuple(reversed(hooks("response")))
        self.chunk_hooks = tuple(reversed(hooks("chunk")))
        self.complete_hooks = tuple(reversed(hooks("complete")))
        self.admin_routes_hooks = hooks("admin_routes")
        self.stats_hooks = hooks("stats")
        self.ready_hooks = hooks("ready")
        self.send = self._onion(forward)
        self.last_index = len(plugins)

    def describe(self) -> list[dict[str, Any]]:
        """The chain as ``gateway check`` and ``GET /plugins`` show it."""
        stages = (
            "request", "send", "response", "chunk", "complete", "adopt", "startup", "shutdown", "admin_routes", "stats",
            "ready",
        )  # fmt: skip
        rows = []
        for plugin in self.plugins:
            implemented = [
                stage
                for stage in stages
                if any(hook.plugin is plugin for hook in getattr(self, f"{stage}_hooks"))
            ]
            factory = type(plugin.instance)
            rows.append(
                {
                    "name": plugin.label,
                    "use": plugin.use,
                    "class": f"{factory.__module__}.{factory.__qualname__}",
                    "on_error": plugin.on_error,
                    "hooks": implemented,
                }
            )
        return rows

    # -- per request -------------------------------------------------------------

    async def request(self, exchange: Exchange) -> Response | None:
        """Forward through ``request`` hooks; the first Response ends the walk. Then the
        decisions hooks deferred (``exchange.defer``), in order: the first refusal wins."""
        try:
            answer = await self._walk(exchange)
        except Exception:
            if exchange._deferred is not None:
                await self._decide(exchange)  # an earlier plugin's refusal comes before this
            raise
        except BaseException:
            _drop(exchange)
            raise
        if exchange._deferred is not None:
            await self._decide(exchange)
        return answer

    async def _walk(self, exchange: Exchange) -> Response | None:
        for hook in self.request_hooks:
            exchange.reached = hook.index
            try:
                if exchange.recording:
                    with self._span(hook):
                        answer = await hook.function(exchange)
                else:
                    answer = await hook.function(exchange)
            except BaseException as exc:
                if not plugin_failure(exc):
                    raise
                self._failed(hook, exc, exchange)
                continue
            if answer is not None:
                if isinstance(answer, Response):
                    return answer
                self._failed(hook, _not_a_response(hook, answer), exchange)
        exchange.reached = self.last_index
        return None

    async def _decide(self, exchange: Exchange) -> None:
        """Await every deferred decision (each runs to its end, so what it holds is
        known to its ``complete`` hook); raise the first one's refusal."""
        pending = exchange._deferred or []
        exchange._deferred = None
        refusal: Exception | None = None
        for position, (index, decision) in enumerate(pending):
            hook = self._request_hook_at[index]
            try:
                if exchange.recording:
                    # The hook's second span, over the wait it deferred; its attributes land here.
                    with _HookSpan(start_span(self.tracer, hook.span_name, hook.deferred_attributes)):
                        await decision
                else:
                    await decision
            except BaseException as exc:
                if not plugin_failure(exc):
                    for _, rest in pending[position + 1 :]:
                        rest.close()
                    raise
                try:
                    self._failed(hook, exc, exchange)
                except Exception as answer:
                    if refusal is None:
                        refusal = answer
        if refusal is not None:
            raise refusal

    async def response(self, exchange: Exchange, response: Response) -> Response:
        """Backward through ``response`` hooks of the plugins whose ``request`` ran."""
        reached = exchange.reached
        for hook in self.response_hooks:
            if hook.index > reached or (exchange._skipped is not None and hook.index in exchange._skipped):
                continue
            try:
                if exchange.recording:
                    with self._span(hook):
                        replaced = await hook.function(exchange, response)
                else:
                    replaced = await hook.function(exchange, response)
            except BaseException as exc:
                if not plugin_failure(exc):
                    raise
                self._failed(hook, exc, exchange)
                continue
            if replaced is not None:
                if isinstance(replaced, Response):
                    response = replaced
                else:
                    self._failed(hook, _not_a_response(hook, replaced), exchange)
        return response

    def chunk_hooks_for(self, exchange: Exchange) -> tuple[Hook, ...]:
        reached, skipped = exchange.reached, exchange._skipped or ()
        return tuple(hook for hook in self.chunk_hooks if hook.index <= reached and hook.index not in skipped)

    async def chunk(self, exchange: Exchange, event: StreamEvent, hooks: tuple[Hook, ...]) -> None:
        """One streamed event through ``hooks`` (from :meth:`chunk_hooks_for`)."""
        for hook in hooks:
            if exchange._skipped is not None and hook.index in exchange._skipped:
                continue  # it failed open on an earlier event
            try:
                await hook.function(exchange, event)
            except BaseException as exc:
                if not plugin_failure(exc):
                    raise
                if exchange._chunk_spans is not None:
                    record_exception(exchange._chunk_spans[hook.index], exc)
                self._failed(hook, exc, exchange)
            if event.drop:
                return

    @contextlib.contextmanager
    def chunk_spans(self, exchange: Exchange, hooks: tuple[Hook, ...]) -> Iterator[None]:
        """One span per chunk hook covering the stream, instead of one per event."""
        if not exchange.recording or not hooks:
            yield
            return
        spans = {hook.index: start_span(self.tracer, hook.span_name, hook.attributes) for hook in hooks}
        exchange._chunk_spans = spans
        try:
            yield
        finally:
            exchange._chunk_spans = None
            for span in spans.values():
                span.end()

    async def complete(self, exchange: Exchange) -> None:
        """Backward through ``complete`` hooks; the answer is gone, so failures are only logged.

        Runs once per exchange, even when the caller leaves while it runs."""
        if exchange.completed:
            return
        exchange.completed = True
        reached = exchange.reached
        for hook in self.complete_hooks:
            if hook.index > reached or (exchange._skipped is not None and hook.index in exchange._skipped):
                continue
            try:
                if exchange.recording:
                    with self._span(hook):
                        await hook.function(exchange)
                else:
                    await hook.function(exchange)
            except BaseException as exc:
                if not plugin_failure(exc):
                    raise
                self.failures[hook.label] += 1
                log.error("plugin %s failed in complete", hook.label, exc_info=exc, extra={"plugin": hook.label})

    def _onion(self, forward: Send) -> Send:
        call = forward
        for hook in reversed(self.send_hooks):
            call = self._layer(hook, call)
        return call

    def _layer(self, hook: Hook, call_next: Send) -> Send:
        function = hook.function

        async def layer(exchange: Exchange) -> Response:
            if exchange._skipped is not None and hook.index in exchange._skipped:
                return await call_next(exchange)  # the plugin failed open earlier: as if it were not there
            recorder = _Recorder(call_next) if hook.fails_open else call_next
            try:
                if exchange.recording:
                    with self._span(hook):
                        answer = await function(exchange, recorder)
                else:
                    answer = await function(exchange, recorder)
                if not isinstance(answer, Response):  # a send hook that forgot to return call_next's answer
                    raise _not_a_response(hook, answer)
                return answer
            except BaseException as exc:
                if not plugin_failure(exc):
                    raise
                self._failed(hook, exc, exchange)
                # Failing open: behave as if the plugin were not there, without
                # calling the upstream twice when the plugin already had its answer.
                assert isinstance(recorder, _Recorder)
                if recorder.result is not None:
                    return recorder.result
                return await call_next(exchange)

        return layer

    def _failed(self, hook: Hook, exc: BaseException, exchange: Exchange) -> None:
        """Re-raise an answer; fail closed (500) or open (log, and go on as if the plugin
        were not there: its later hooks skip this exchange)."""
        if isinstance(exc, GatewayError):
            raise exc
        self.failures[hook.label] += 1
        if hook.fails_open:
            if exchange._skipped is None:
                exchange._skipped = {hook.index}
            else:
                exchange._skipped.add(hook.index)
            log.warning(
                "plugin %s failed in %s, skipped (on_error: open): %r",
                hook.label,
                hook.name,
                exc,
                extra={"plugin": hook.label},
            )
            return
        log.error("plugin %s failed in %s", hook.label, hook.name, exc_info=exc, extra={"plugin": hook.label})
        raise plugin_error(hook.label) from exc

    def _span(self, hook: Hook) -> _HookSpan:
        return _HookSpan(start_span(self.tracer, hook.span_name, hook.attributes))

    # -- lifecycle and admin -----------------------------------------------------------

    def adopt(self, previous: Chain) -> None:
        """On a reload: each plugin's ``adopt`` with the previous chain's instance of
        the same name and class. A failure is logged: that plugin starts afresh."""
        before = {plugin.label: plugin.instance for plugin in previous.plugins}
        for hook in self.adopt_hooks:
            old = before.get(hook.label)
            if old is None or type(old) is not type(hook.plugin.instance):
                continue
            try:
                hook.function(old)
            except Exception:
                log.exception("plugin %s failed to adopt its state; it starts afresh", hook.label, extra={"plugin": hook.label})

    async def startup(self, gateway: Any) -> None:
        for hook in self.startup_hooks:
            started = time.perf_counter()
            try:
                await hook.function(gateway)
            except Exception as exc:
                log.exception("plugin %s failed to start", hook.label, extra={"plugin": hook.label})
                raise StartupError(f"plugin {hook.label} failed to start: {exc}") from exc
            log.debug("plugin %s started in %.1f ms", hook.label, (time.perf_counter() - started) * 1000)

    async def shutdown(self, gateway: Any, timeout_s: float | None = None) -> None:
        """Each plugin's ``shutdown``, in reverse order; one that takes longer than
        ``timeout_s`` is cancelled (logged), so that a hung backend cannot keep the
        process from exiting."""
        for hook in self.shutdown_hooks:
            try:
                async with asyncio.timeout(timeout_s):
                    await hook.function(gateway)
            except TimeoutError:
                label = hook.label
                log.error("plugin %s did not shut down within %g s; cancelled", label, timeout_s, extra={"plugin": label})
            except Exception:
                log.exception("plugin %s failed in shutdown", hook.label, extra={"plugin": hook.label})


def _drop(exchange: Exchange) -> None:
    """Cancelled: deferred decisions are never awaited; close them."""
    pending, exchange._deferred = exchange._deferred, None
    for _, decision in pending or ():
        decision.close()


def plugin_failure(exc: BaseException) -> bool:
    """Whether what a hook raised is the plugin's failure (handled under its ``on_error``)
    rather than the gateway's business: any ``Exception``; ``SystemExit`` or
    ``KeyboardInterrupt`` (the process's signals are the gateway's: a plugin's
    ``sys.exit()`` stopped it without a line); a ``CancelledError`` while this task is
    not being cancelled (a task or future the plugin awaited was cancelled: passed on, it
    dropped the caller's connection as if the caller had left)."""
    if isinstance(exc, Exception):
        return True
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        return task is not None and task.cancelling() == 0
    return isinstance(exc, (SystemExit, KeyboardInterrupt))


def _not_a_response(hook: Hook, value: Any) -> TypeError:
    expected = "a Response" if hook.name == "send" else "a Response or None"
    return TypeError(f"{hook.name} returned {type(value).__name__}, not {expected}")


class _HookSpan:
    """A hook's span, current while the hook runs: what ``start_as_current_span`` does
    (an exception is recorded on it and makes it an ERROR), in a plain class instead of
    two nested generator context managers, which cost about 4 µs a hook."""

    __slots__ = ("span", "token")

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def __enter__(self) -> None:
        self.token = otel_context.attach(trace.set_span_in_context(self.span))

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        otel_context.detach(self.token)
        span = self.span
        if exc is not None and plugin_failure(exc):
            record_exception(span, exc)
        span.end()


class _Recorder:
    """``call_next`` for a fail-open send hook: remembers the answer it returned."""

    __slots__ = ("call_next", "result")

    def __init__(self, call_next: Send) -> None:
        self.call_next = call_next
        self.result: Response | None = None

    async def __call__(self, exchange: Exchange) -> Response:
        self.result = await self.call_next(exchange)
        return self.result
