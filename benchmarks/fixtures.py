"""The bytes every benchmark process agrees on: the request, the upstream's answers.

One module so that the upstreams, the load generators and the correctness checks
cannot drift apart: a target counts as measured only when its answer carries
:data:`MARKER`, the text that only the upstream's fixed answer contains.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")

#: text found only in the upstream's answer: proof that a target really proxied
MARKER = "fixed reply from the benchmark upstream"

#: the request every target gets: a chat call with a system and a user message
REQUEST: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly and precisely."},
        {
            "role": "user",
            "content": "Write one sentence that explains what an API gateway in front of "
            "a large language model does, for a new engineer.",
        },
    ],
    "temperature": 0.2,
    "max_tokens": 128,
}

#: the non-streaming answer, as an OpenAI chat.completion with a full usage block
CHAT_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-bench000000000000000000001",
    "object": "chat.completion",
    "created": 1730000000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": f"Hello! This is a {MARKER}. How can I help you today?",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 25,
        "completion_tokens": 19,
        "total_tokens": 44,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_bench00000",
}

# The streamed answer's content, one piece per content event; the marker is whole in one.
_PIECES = ("Hello!", " This is a", f" {MARKER}.", " How can I", " help you", " today?")


def rotated(items: Sequence[T], turn: int) -> list[T]:
    """``items`` started ``turn`` places on (wrapping): each round of an interleaved
    benchmark starts one target later, so that no target always runs first, or always
    right after the same other one (whose leftover work shares the core)."""
    shift = turn % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


def compact(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def sse_events() -> list[bytes]:
    """The streamed answer: 9 chat.completion.chunk events, then ``data: [DONE]``.

    As OpenAI sends it: a role-only first delta (empty content), the content
    pieces, a finish event and a usage event (empty ``choices``) before [DONE].
    """
    head = {
        "id": "chatcmpl-bench000000000000000000002",
        "object": "chat.completion.chunk",
        "created": 1730000000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_bench00000",
    }

    def choice(delta: dict[str, str], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    chunks = [dict(head, choices=choice({"role": "assistant", "content": ""}))]
    chunks += [dict(head, choices=choice({"content": piece})) for piece in _PIECES]
    chunks.append(dict(head, choices=choice({}, "stop")))
    chunks.append(dict(head, choices=[], usage={"prompt_tokens": 25, "completion_tokens": 19, "total_tokens": 44}))
    return [b"data: " + compact(chunk) + b"\n\n" for chunk in chunks] + [b"data: [DONE]\n\n"]


async def serve_until_signalled(app: web.Application, port: int, ready_line: Callable[[int], str]) -> None:
    """Serve ``app`` on 127.0.0.1:``port``, print ``ready_line(bound port)``, stop on SIGTERM/SIGINT."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(ready_line(runner.addresses[0][1]), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()
