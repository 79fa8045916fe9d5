"""What translation between the OpenAI and Anthropic APIs costs.

Why: a request in one API's shape sent to a provider of the other is translated
on the hot path (request before the call, answer or every stream event after), so
its cost must stay in microseconds and a translated stream's first token must come
as fast as an untranslated one's. This prints Markdown tables; it asserts nothing.

1. Microseconds per call (median of repeated timeit runs) to translate a typical
   chat request and its answer, both ways, from bytes to bytes (decode, map, encode)
   and a stream's events one by one.
2. Time to first token through ``gateway run`` (tracing off) to ``gateway
   mock-upstream``, each its own process: a translated stream against the
   untranslated one that gets the same upstream stream (an OpenAI caller on an
   Anthropic provider against an Anthropic caller on it, and the reverse);
   requests interleaved, one at a time.

    python benchmarks/translate_bench.py            # ~1 min
    REQUESTS=50 python benchmarks/translate_bench.py
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

import aiohttp
import msgspec

from gateway.exchange import SSEBuffer, StreamEvent
from gateway.translate.answers import chat_to_message, message_to_chat
from gateway.translate.requests import chat_to_messages, messages_to_chat
from gateway.translate.streams import AnthropicToChat, ChatToAnthropic

encode = msgspec.json.Encoder().encode
decode = msgspec.json.decode

SYSTEM = "You are a helpful assistant. Answer briefly and precisely."
QUESTION = "Write one sentence that explains what an API gateway in front of a large language model does."
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"]}

#: a typical OpenAI chat request: system prompt, three turns, a tool, a temperature
OPENAI_REQUEST = encode(
    {
        "model": "claude-sonnet-4-5",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": "It routes, secures and observes model calls."},
            {"role": "user", "content": "And in one more sentence, why run it as a sidecar?"},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}}],
        "temperature": 0.3,
        "max_tokens": 400,
    }
)
ANTHROPIC_REQUEST = encode(
    {
        "model": "gpt-4o",
        "max_tokens": 400,
        "system": SYSTEM,
        "messages": [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": "It routes, secures and observes model calls."},
            {"role": "user", "content": "And in one more sentence, why run it as a sidecar?"},
        ],
        "tools": [{"name": "get_weather", "description": "Weather in a city", "input_schema": WEATHER}],
        "temperature": 0.3,
    }
)
ANSWER_TEXT = "A sidecar sits next to the application, so every call to a model passes through it with no extra network hop. " * 2
ANTHROPIC_ANSWER = encode(
    {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": ANSWER_TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 95, "output_tokens": 48, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0},
    }
)
OPENAI_ANSWER = encode(
    {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER_TEXT, "refusal": None}, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 95, "completion_tokens": 48, "total_tokens": 143, "prompt_tokens_details": {"cached_tokens": 0}},
    }
)
ANTHROPIC_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" sidecar"}}\n\n'
OPENAI_DELTA = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":'
    b'[{"index":0,"delta":{"content":" sidecar"},"logprobs":null,"finish_reason":null}]}\n\n'
)


def micros(function, number: int = 2000, repeat: int = 7) -> float:
    return min(timeit.repeat(function, number=number, repeat=repeat)) / number * 1e6


def cpu_table() -> list[str]:
    anthropic_events = AnthropicToChat(include_usage=True)
    anthropic_events.feed(StreamEvent(b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":1}}}\n\n'))
    openai_events = ChatToAnthropic("gpt-4o")
    openai_events.feed(StreamEvent(OPENAI_DELTA))
    rows = [
        ("request, OpenAI -> Anthropic (decode, map, encode)", lambda: encode(chat_to_messages(decode(OPENAI_REQUEST)))),
        ("request, Anthropic -> OpenAI", lambda: encode(messages_to_chat(decode(ANTHROPIC_REQUEST)))),
        ("answer, Anthropic message -> chat.completion", lambda: encode(message_to_chat(decode(ANTHROPIC_ANSWER))[0])),
        ("answer, chat.completion -> Anthropic message", lambda: encode(chat_to_message(decode(OPENAI_ANSWER))[0])),
        ("stream event, Anthropic text delta -> chunk", lambda: anthropic_events.feed(StreamEvent(ANTHROPIC_DELTA))),
        ("stream event, OpenAI chunk -> text delta", lambda: openai_events.feed(StreamEvent(OPENAI_DELTA))),
        ("(reference) decode + encode the OpenAI request unchanged", lambda: encode(decode(OPENAI_REQUEST))),
    ]
    lines = ["| translation | µs per call |", "|---|---:|"]
    for name, function in rows:
        lines.append(f"| {name} | {micros(function):.1f} |")
    return lines


async def first_token_ms(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> float:
    """Milliseconds from sending the request to the first event that carries text."""
    started = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as reply:
        assert reply.status == 200, await reply.text()
        events = SSEBuffer()
        async for data in reply.content.iter_any():
            for raw in events.feed(data):
                if b'"text_delta"' in raw or (b'"content":"' in raw and b'"content":""' not in raw):
                    elapsed = (time.perf_counter() - started) * 1000
                    async for _ in reply.content.iter_any():
                        pass
                    return elapsed
    raise AssertionError("no text in the stream")


async def _start(command: list[str], pattern: str, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env)
    assert process.stdout is not None
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        if not line:
            raise RuntimeError(f"{command[0]} exited before it was ready")
        found = re.search(pattern, line)
        if found:
            return process, found.group(1)


async def ttft_table(requests: int) -> list[str]:
    """The mock and the gateway run as processes of their own, as in production."""
    env = {**os.environ, "OTEL_TRACES_SAMPLER": "always_off", "PYTHONUNBUFFERED": "1"}
    gateway_cli = [sys.executable, "-m", "gateway"]
    mock, mock_url = await _start([*gateway_cli, "mock-upstream", "--port", "0"], r"listening on (http://\S+)", env)
    processes = [mock]
    try:
        config = {
            "listen": "127.0.0.1:0",
            "admin": {"listen": "127.0.0.1:0"},
            "providers": {
                "openai": {"type": "openai", "base_url": mock_url, "api_key": "k"},
                "anthropic": {"type": "anthropic", "base_url": mock_url, "api_key": "k"},
            },
            "routes": [{"model": "claude-*", "provider": "anthropic"}, {"model": "gpt-*", "provider": "openai"}],
            "log": {"level": "warning"},
        }
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "gateway.json"
            path.write_bytes(encode(config))
            gateway, gateway_url = await _start([*gateway_cli, "run", "--config", str(path)], r"ready on (http://\S+)", env)
            processes.append(gateway)
            return await _measure(gateway_url, requests)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            await process.wait()


async def _measure(gateway_url: str, requests: int) -> list[str]:
    chat, messages = f"{gateway_url}/v1/chat/completions", f"{gateway_url}/v1/messages"
    json_headers = {"Content-Type": "application/json"}
    anthropic_headers = {**json_headers, "anthropic-version": "2023-06-01"}

    def openai_body(model: str) -> bytes:
        return encode({"model": model, "stream": True, "messages": [{"role": "user", "content": QUESTION}]})

    def anthropic_body(model: str) -> bytes:
        return encode({"model": model, "max_tokens": 200, "stream": True, "messages": [{"role": "user", "content": QUESTION}]})

    # Pairs that get the same upstream stream: only the translation differs.
    cases = {
        "Anthropic caller -> Anthropic provider (untranslated)": (messages, anthropic_body("claude-sonnet-4-5"), anthropic_headers),
        "OpenAI caller -> Anthropic provider (translated)": (chat, openai_body("claude-sonnet-4-5"), json_headers),
        "OpenAI caller -> OpenAI provider (untranslated)": (chat, openai_body("gpt-4o"), json_headers),
        "Anthropic caller -> OpenAI provider (translated)": (messages, anthropic_body("gpt-4o"), anthropic_headers),
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    async with aiohttp.ClientSession() as session:
        for _ in range(max(5, requests // 10)):  # warm up
            for url, body, headers in cases.values():
                await first_token_ms(session, url, body, headers)
        for _ in range(requests):
            for name, (url, body, headers) in cases.items():
                results[name].append(await first_token_ms(session, url, body, headers))
    lines = ["| stream (same upstream stream in each pair) | TTFT median ms | p90 ms |", "|---|---:|---:|"]
    for name, values in results.items():
        values.sort()
        lines.append(f"| {name} | {statistics.median(values):.3f} | {values[int(len(values) * 0.9)]:.3f} |")
    names = list(results)
    for untranslated, translated in ((names[0], names[1]), (names[2], names[3])):
        delta = statistics.median(results[translated]) - statistics.median(results[untranslated])
        lines.append(f"| translated minus untranslated, {translated.split(' (')[0]} | {delta:+.3f} | |")
    return lines


def main() -> None:
    requests = int(os.environ.get("REQUESTS", "200"))
    print("\n".join(cpu_table()))
    print()
    print("\n".join(asyncio.run(ttft_table(requests))))


if __name__ == "__main__":
    main()
