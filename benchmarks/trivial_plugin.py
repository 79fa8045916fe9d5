"""The cheapest plugins that still do something.

``Trivial``: one ``request`` hook setting a header. The benchmark runs the gateway with
it next to the empty chain, so the difference between the two is the price of running
one hook per request (the chain loop, one coroutine call, one header on the answer).

``FixedAnswer``: one ``request`` hook answering every call with the benchmark's fixed
chat.completion. What the gateway costs when a plugin answers with no upstream, the
floor under a cache hit (``benchmarks/instructions.py answer``).

    plugins:
      - use: "benchmarks.trivial_plugin:Trivial"   # with the repository root on PYTHONPATH
"""

from __future__ import annotations

from benchmarks.fixtures import CHAT_COMPLETION, compact
from gateway import Exchange, hookimpl
from gateway.exchange import Response

HEADER = "x-bench-trivial"


class Trivial:
    """Marks every answer with ``x-bench-trivial: 1``; takes no options."""

    @hookimpl
    async def request(self, exchange: Exchange) -> None:
        exchange.response_headers[HEADER] = "1"


class FixedAnswer:
    """Answers every call with the benchmark's fixed chat.completion; takes no options."""

    body = compact(CHAT_COMPLETION)

    @hookimpl
    async def request(self, exchange: Exchange) -> Response:
        return Response(200, {"Content-Type": "application/json"}, self.body)
