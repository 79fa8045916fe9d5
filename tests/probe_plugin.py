"""A configurable plugin that records every hook it runs, for the chain tests."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from gateway import Exchange, GatewayError, Response, StreamEvent, hookimpl
from gateway.hookspecs import CallNext

#: (tag, hook) in the order hooks ran, across every Probe; tests clear it.
CALLS: list[tuple[str, str]] = []
#: what the probes saw, by tag
SEEN: dict[str, dict[str, Any]] = {}


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tag: str
    answer: bool = False  # answer from `request` instead of the upstream
    fail_in: list[str] = []  # hooks that raise RuntimeError ("send-done": send, once the upstream answered)
    wrong_return: list[str] = []  # hooks that return something that is not a Response (send: None)
    fail_with: str = "RuntimeError"  # or "CancelledError" (a future the plugin awaited was cancelled), "SystemExit"
    raise_status: int = 0  # `request` raises a GatewayError with this status
    raise_code: str = ""
    upper_chunks: bool = False  # `chunk` upper-cases streamed content
    retries: int = 0  # `send` calls the upstream again while it answers >= 500
    defer: bool = False  # raise_status and fail_in ["decide"] happen in a decision deferred by `request`


class Probe:
    Config = Config

    def __init__(self, config: Config) -> None:
        self.config = config
        self.tag = config.tag

    def _run(self, hook: str) -> None:
        CALLS.append((self.tag, hook))
        if hook in self.config.fail_in:
            if self.config.fail_with == "CancelledError":
                raise asyncio.CancelledError()
            if self.config.fail_with == "SystemExit":
                raise SystemExit(3)
            raise RuntimeError(f"{self.tag} fails in {hook} (sk-secret-in-exception)")

    @hookimpl
    async def request(self, exchange: Exchange) -> Response | None:
        self._run("request")
        SEEN[self.tag] = {
            "caller": exchange.caller,
            "client": exchange.client,
            "provider": exchange.provider.name if exchange.provider else None,
            "json": exchange.json() if exchange.has_json_body else None,
            "stream": exchange.stream,
        }
        if self.config.defer:
            exchange.defer(self._decide())
            return None
        self._refuse()
        if self.config.answer:
            return Response.json_response({"answered_by": self.tag}, headers={"x-answered-by": self.tag})
        if "request" in self.config.wrong_return:
            return {"answered_by": self.tag}  # type: ignore[return-value]
        return None

    async def _decide(self) -> None:
        await asyncio.sleep(0)  # a backend's reply
        self._run("decide")
        self._refuse()

    def _refuse(self) -> None:
        if self.config.raise_status:
            raise GatewayError(
                self.config.raise_status, self.config.raise_code, f"{self.tag} says no", headers={"Retry-After": "7"}
            )

    @hookimpl
    async def send(self, exchange: Exchange, call_next: CallNext) -> Response:
        self._run("send")
        response = await call_next(exchange)
        for _ in range(self.config.retries):
            if response.status < 500:
                break
            response = await call_next(exchange)
        self._run("send-done")
        return None if "send" in self.config.wrong_return else response  # type: ignore[return-value]

    @hookimpl
    async def response(self, exchange: Exchange, response: Response) -> None:
        self._run("response")
        response.headers[f"x-probe-{self.tag}"] = "seen"
        if "response" in self.config.wrong_return:
            return response.body  # type: ignore[return-value]

    @hookimpl
    async def chunk(self, exchange: Exchange, event: StreamEvent) -> None:
        self._run("chunk")
        document = event.json()
        if self.config.upper_chunks and isinstance(document, dict):
            for choice in document.get("choices", []):
                delta = choice.get("delta", {})
                if delta.get("content"):
                    delta["content"] = delta["content"].upper()
            event.replace(document)

    @hookimpl
    async def complete(self, exchange: Exchange) -> None:
        self._run("complete")
        usage = exchange.usage
        SEEN.setdefault(self.tag, {})["usage"] = (usage.input_tokens, usage.output_tokens) if usage else None
        SEEN[self.tag]["error"] = exchange.error.code if exchange.error else None
