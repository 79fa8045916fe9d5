"""The cheapest plugin that still does something: one ``request`` hook setting a header.

The benchmark runs the gateway with this plugin next to the empty chain, so the
difference between the two is the price of running one hook per request (the
chain loop, one coroutine call, one header on the answer).

    plugins:
      - use: "benchmarks.trivial_plugin:Trivial"   # with the repository root on PYTHONPATH
"""

from __future__ import annotations

from gateway import Exchange, hookimpl

HEADER = "x-bench-trivial"


class Trivial:
    """Marks every answer with ``x-bench-trivial: 1``; takes no options."""

    @hookimpl
    async def request(self, exchange: Exchange) -> None:
        exchange.response_headers[HEADER] = "1"
