"""Translation between OpenAI chat completions and Anthropic messages, against golden fixtures.

Each fixture under tests/fixtures/translate holds a real-shaped body (or stream)
of one API, written from the API references, and what the gateway must make of
it in the other API. Streams are fed in arbitrary byte cuts, as a network delivers
them, and must come out event by event.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from gateway.errors import GatewayError
from gateway.exchange import SSEBuffer, StreamEvent
from gateway.translate.answers import chat_to_message, error_to_anthropic, error_to_openai, message_to_chat
from gateway.translate.requests import chat_to_messages, default_max_tokens, messages_to_chat
from gateway.translate.streams import AnthropicToChat, ChatToAnthropic

FIXTURES = Path(__file__).parent / "fixtures" / "translate"


def cases(folder: str) -> list:
    paths = sorted((FIXTURES / folder).glob("*.json"))
    return [pytest.param(json.loads(path.read_text()), id=path.stem) for path in paths]


def sse(events: list[dict]) -> bytes:
    out = b""
    for event in events:
        data = event["data"] if isinstance(event["data"], str) else json.dumps(event["data"])
        name = f"event: {event['event']}\n".encode() if "event" in event else b""
        out += name + b"data: " + data.encode() + b"\n\n"
    return out


def events_of(raw: bytes) -> list[dict]:
    events = []
    for block in SSEBuffer().feed(raw):
        event = StreamEvent(block)
        item: dict = {"event": event.name} if event.name else {}
        item["data"] = "[DONE]" if event.is_done else event.json()
        if isinstance(item["data"], dict) and "created" in item["data"]:
            item["data"]["created"] = 0
        events.append(item)
    return events


def run(converter, raw: bytes, seed: int) -> tuple[bytes, list[int]]:
    """Feed ``raw`` cut at random places; returns the output and how many events each whole event made."""
    rng = random.Random(seed)
    buffer, out, sizes, at = SSEBuffer(), b"", [], 0
    while at < len(raw):
        step = rng.randint(1, 40)
        for block in buffer.feed(raw[at : at + step]):
            produced = converter.feed(StreamEvent(block))
            sizes.append(produced.count(b"\n\n"))
            out += produced
        at += step
    return out + converter.end(), sizes


# -- requests -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases("requests/openai_to_anthropic"))
def test_openai_request_becomes_the_golden_anthropic_request(case):
    assert chat_to_messages(case["openai"]) == case["anthropic"]


@pytest.mark.parametrize("case", cases("requests/anthropic_to_openai"))
def test_anthropic_request_becomes_the_golden_openai_request(case):
    assert messages_to_chat(case["anthropic"]) == case["openai"]


def test_openai_parameters_without_equivalent_are_refused_by_name():
    for case in json.loads((FIXTURES / "requests" / "openai_refused.json").read_text()):
        with pytest.raises(GatewayError) as caught:
            chat_to_messages(case["openai"])
        assert (caught.value.status, caught.value.code, caught.value.param) == (400, "invalid_request", case["param"])
        assert case["param"] in caught.value.message


def test_anthropic_parameters_without_equivalent_are_refused_by_name():
    for case in json.loads((FIXTURES / "requests" / "anthropic_refused.json").read_text()):
        with pytest.raises(GatewayError) as caught:
            messages_to_chat(case["anthropic"])
        assert (caught.value.status, caught.value.code, caught.value.param) == (400, "invalid_request", case["param"])


def test_max_tokens_default_is_the_models_output_limit_where_known():
    assert default_max_tokens("claude-sonnet-4-5") == 64000
    assert default_max_tokens("claude-opus-4-1-20250805") == 32000
    assert default_max_tokens("claude-3-5-haiku-latest") == 8192
    assert default_max_tokens("claude-3-haiku-20240307") == 4096
    assert default_max_tokens("my-deployment") == 4096


def test_other_openai_compatible_servers_get_max_tokens():
    body = {"model": "llama", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    assert messages_to_chat(body, "max_tokens")["max_tokens"] == 10


# -- answers and errors ------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases("answers/anthropic_to_openai"))
def test_anthropic_message_becomes_the_golden_chat_completion(case):
    completion, usage = message_to_chat(case["anthropic"])
    assert completion.pop("created") > 0
    expected = dict(case["openai"])
    expected.pop("created")
    assert completion == expected
    assert usage.input_tokens == expected["usage"]["prompt_tokens"]
    assert usage.cached_input_tokens == expected["usage"]["prompt_tokens_details"]["cached_tokens"]


@pytest.mark.parametrize("case", cases("answers/openai_to_anthropic"))
def test_chat_completion_becomes_the_golden_anthropic_message(case):
    message, usage = chat_to_message(case["openai"])
    assert message == case["anthropic"]
    assert usage.input_tokens == case["openai"]["usage"]["prompt_tokens"]


def test_provider_errors_keep_their_message_in_the_callers_shape():
    for case in json.loads((FIXTURES / "answers" / "errors.json").read_text()):
        translate = error_to_openai if case["caller"] == "openai" else error_to_anthropic
        assert json.loads(translate(case["status"], case["provider_body"].encode())) == case["caller_body"], case["name"]


# -- streams --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("case", cases("streams/anthropic_to_openai"))
def test_anthropic_stream_becomes_the_golden_chunks_event_by_event(case, seed):
    out, sizes = run(AnthropicToChat(case["include_usage"]), sse(case["anthropic"]), seed)
    assert events_of(out) == case["openai"]
    assert len(sizes) == len(case["anthropic"])  # one provider event in, its chunks out at once


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("case", cases("streams/openai_to_anthropic"))
def test_openai_stream_becomes_the_golden_anthropic_events_event_by_event(case, seed):
    out, sizes = run(ChatToAnthropic("gpt-4o"), sse(case["openai"]), seed)
    assert events_of(out) == case["anthropic"]
    assert sizes[0] >= 1  # message_start leaves with the first chunk, not at the end


def test_first_text_is_relayed_before_the_stream_ends():
    converter = AnthropicToChat(include_usage=False)
    case = json.loads((FIXTURES / "streams" / "anthropic_to_openai" / "text_with_usage_chunk.json").read_text())
    outputs = [converter.feed(StreamEvent(block)) for block in SSEBuffer().feed(sse(case["anthropic"][:4]))]
    assert b'"content":"Hello"' in b"".join(outputs)


def test_anthropic_error_event_mid_stream_ends_with_the_callers_error():
    events = [
        {"event": "message_start", "data": {"type": "message_start", "message": {"id": "msg_1", "model": "claude", "usage": {"input_tokens": 1, "output_tokens": 1}}}},
        {"event": "error", "data": {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}},
    ]
    converter = AnthropicToChat(include_usage=True)
    with pytest.raises(GatewayError) as caught:
        run(converter, sse(events), 1)
    assert (caught.value.status, caught.value.code, caught.value.message) == (529, "overloaded_error", "Overloaded")


def test_openai_error_mid_stream_ends_with_the_callers_error():
    events = [{"data": {"error": {"message": "The server had an error", "type": "server_error", "code": None}}}]
    with pytest.raises(GatewayError) as caught:
        run(ChatToAnthropic("gpt-4o"), sse(events), 1)
    assert caught.value.message == "The server had an error"


@pytest.mark.parametrize(
    ("converter", "events"),
    [
        (AnthropicToChat(True), [{"event": "message_start", "data": {"type": "message_start", "message": {"id": "m"}}}]),
        (ChatToAnthropic("gpt-4o"), [{"data": {"id": "c", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}}]),
    ],
    ids=["anthropic_without_message_stop", "openai_without_finish_reason"],
)
def test_a_stream_that_stops_short_is_an_upstream_error(converter, events):
    with pytest.raises(GatewayError) as caught:
        run(converter, sse(events), 1)
    assert caught.value.code == "upstream_error"


def test_the_callers_shape_comes_from_the_path_or_the_anthropic_version_header():
    from gateway.exchange import Exchange

    def api(path, **headers):
        return Exchange(None, method="GET", path=path, headers=headers).api

    assert api("/v1/messages") == "anthropic"
    assert api("/v1/messages/count_tokens") == "anthropic"
    assert api("/v1/chat/completions", **{"anthropic-version": "2023-06-01"}) == "openai"
    assert api("/v1/models") == "openai"
    assert api("/v1/models", **{"anthropic-version": "2023-06-01"}) == "anthropic"
