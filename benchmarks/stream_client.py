"""Streaming latency through each target: time to first content and to ``[DONE]``.

One request at a time, the targets interleaved request by request so that drift
hits them alike. Each request is the benchmark's chat request with
``"stream": true``. TTFB is the time from just before sending to the first event
whose ``delta.content`` is not empty (the upstream's first event carries only the
role); total is the time to ``data: [DONE]``. A stream counts only when its status
is 200, it ends with ``[DONE]`` and its content carries the upstream's marker.
Prints one ``STREAMJSON {...}`` line per target.

    python -m benchmarks.stream_client --requests 200 direct=http://127.0.0.1:18002/v1/chat/completions ...
"""

from __future__ import annotations

import argparse
import json
import random
import re
import string
import time
from typing import Any

import aiohttp

from benchmarks.fixtures import MARKER, REQUEST, compact, rotated

#: the gateway's own time in its answer's headers (SPEC.md: ``Server-Timing: gateway;dur=MS, upstream;dur=MS``)
SERVER_TIMING = re.compile(r"\bgateway;dur=([0-9.]+)")


class Stream:
    """Figures of one target."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self.headers: dict[str, str] = {}
        self.ttfb_ms: list[float] = []
        self.total_ms: list[float] = []
        #: the gateway's own time until the answer's headers (its ``Server-Timing: gateway;dur=``), when it says
        self.gateway_ms: list[float] = []
        self.bad = 0
        self.statuses: dict[str, int] = {}

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": len(self.ttfb_ms),
            "bad": self.bad,
            "statuses": self.statuses,
            "ttfb_p50_ms": percentile(self.ttfb_ms, 50),
            "ttfb_p90_ms": percentile(self.ttfb_ms, 90),
            "ttfb_p99_ms": percentile(self.ttfb_ms, 99),
            "total_p50_ms": percentile(self.total_ms, 50),
            "gateway_p50_ms": percentile(self.gateway_ms, 50),
        }


def percentile(values: list[float], p: float) -> float | None:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (rank - low), 3)


def letters(number: int) -> str:
    """``number`` in base 26, written a-z."""
    out = ""
    while True:
        number, digit = divmod(number, 26)
        out = chr(97 + digit) + out
        if not number:
            return out


def unique_request(tag: str) -> dict[str, Any]:
    """The streaming request with ``tag`` appended to the user's message."""
    messages = [dict(message) for message in REQUEST["messages"]]
    messages[-1]["content"] += f" #{tag}"
    return dict(REQUEST, messages=messages, stream=True)


async def one(
    session: aiohttp.ClientSession, url: str, body: bytes, extra: dict[str, str] | None = None
) -> tuple[str, float | None, float, float | None]:
    """One streamed call: (status or error, TTFB in ms or None if it failed, total ms, the gateway's
    ``Server-Timing`` time in ms or None)."""
    started = time.perf_counter()
    first: float | None = None
    text: list[str] = []
    done = False
    pending = b""
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity", **(extra or {})}
    async with session.post(url, data=body, headers=headers) as answer:
        timing = SERVER_TIMING.search(answer.headers.get("Server-Timing", ""))
        async for data in answer.content.iter_any():
            pending += data
            *events, pending = pending.split(b"\n\n")
            for event in events:
                for line in event.splitlines():
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        continue
                    for choice in json.loads(payload).get("choices") or ():
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            if first is None:
                                first = time.perf_counter()
                            text.append(content)
        status = answer.status
    total = (time.perf_counter() - started) * 1000
    gateway_ms = float(timing.group(1)) if timing else None
    if first is None or status != 200 or not done or MARKER not in "".join(text):
        return str(status), None, total, gateway_ms
    return str(status), (first - started) * 1000, total, gateway_ms


async def run(targets: list[Stream], requests: int, warmup: int, unique: bool = False) -> None:
    body = compact(dict(REQUEST, stream=True))
    # In letters, like wrk_peers.lua's marker: a run of digits would look like a card
    # number and a hex blob to the scan plugin.
    seed = "".join(random.choices(string.ascii_lowercase, k=12))
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for index in range(warmup + requests):
            # rotated each time: what a target leaves to do after its answer (a ledger
            # write, a cache store) runs on the shared core while the next one's request is in flight
            for target in rotated(targets, index):
                if unique:  # a new prompt each time: no cache answers, the scan sees new text
                    body = compact(unique_request(f"{seed} {letters(index)}"))
                try:
                    status, ttfb, total, gateway_ms = await one(session, target.url, body, target.headers)
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    status, ttfb, total, gateway_ms = type(exc).__name__, None, 0.0, None
                if index < warmup:
                    continue
                target.statuses[status] = target.statuses.get(status, 0) + 1
                if ttfb is None:
                    target.bad += 1
                else:
                    target.ttfb_ms.append(ttfb)
                    target.total_ms.append(total)
                    if gateway_ms is not None:
                        target.gateway_ms.append(gateway_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", metavar="NAME=URL")
    parser.add_argument("--requests", type=int, default=200, help="measured requests per target")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests per target first")
    parser.add_argument("--unique", action="store_true", help="a different prompt on every request")
    parser.add_argument(
        "--header", action="append", default=[], metavar="NAME=K: V|K: V", help="extra headers for one target"
    )
    args = parser.parse_args()
    targets = [Stream(*spec.split("=", 1)) for spec in args.targets]
    by_name = {target.name: target for target in targets}
    for spec in args.header:
        name, _, pairs = spec.partition("=")
        for pair in filter(None, pairs.split("|")):
            key, _, value = pair.partition(":")
            by_name[name].headers[key.strip()] = value.strip()
    import uvloop

    uvloop.run(run(targets, args.requests, args.warmup, args.unique))
    for target in targets:
        print("STREAMJSON " + json.dumps(target.summary()), flush=True)


if __name__ == "__main__":
    main()
