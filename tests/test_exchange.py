"""The exchange record and its helpers, called directly (no server)."""

from __future__ import annotations

import pytest

from gateway.errors import GatewayError
from gateway.exchange import Exchange, Response, SSEBuffer, StashKey, StreamEvent, usage_from


def exchange(body: bytes, content_type: str = "application/json") -> Exchange:
    return Exchange(None, method="POST", path="/v1/chat/completions", headers={"Content-Type": content_type}, body=body)


def test_sse_buffer_yields_whole_events_across_chunk_boundaries():
    buffer = SSEBuffer()
    assert buffer.feed(b"data: {\"a\"") == []
    assert buffer.feed(b": 1}\n") == []
    assert buffer.feed(b"\ndata: [DO") == [b'data: {"a": 1}\n\n']
    assert buffer.feed(b"NE]\n\n") == [b"data: [DONE]\n\n"]
    assert buffer.pending == b""


def test_sse_buffer_understands_crlf_and_mixed_line_ends():
    assert SSEBuffer().feed(b"data: 1\r\n\r\ndata: 2\n\nrest") == [b"data: 1\r\n\r\n", b"data: 2\n\n"]


def test_stream_event_fields_and_replace():
    event = StreamEvent(b'event: message_delta\ndata: {"usage": {"output_tokens": 7}}\n\n')
    assert event.name == "message_delta"
    assert event.json() == {"usage": {"output_tokens": 7}}
    event.replace({"usage": {"output_tokens": 8}})
    assert event.raw == b'event: message_delta\ndata: {"usage":{"output_tokens":8}}\n\n'
    assert StreamEvent(b"data: [DONE]\n\n").is_done
    assert StreamEvent(b"data: [DONE]\n\n").json() is None
    assert StreamEvent(b"data: not json\n\n").json() is None


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"usage": {"prompt_tokens": 3, "completion_tokens": 5}}, (3, 5)),  # chat/completions
        ({"usage": {"prompt_tokens": 4, "total_tokens": 4}}, (4, None)),  # embeddings
        ({"usage": {"input_tokens": 2, "output_tokens": 9}}, (2, 9)),  # messages, responses
        ({"type": "message_start", "message": {"usage": {"input_tokens": 11, "output_tokens": 1}}}, (11, 1)),
        ({"type": "response.completed", "response": {"usage": {"input_tokens": 6, "output_tokens": 2}}}, (6, 2)),
        ({"choices": [], "usage": None}, (None, None)),
        ([1, 2], (None, None)),
    ],
)
def test_usage_from_every_api_shape(document, expected):
    assert usage_from(document) == expected


def test_request_json_is_decoded_once_and_lazily():
    ex = exchange(b'{"model": "m", "stream": true}')
    first = ex.json()
    assert ex.json() is first
    assert ex.model == "m" and ex.stream is True
    ex.model = "other"
    assert ex.body == b'{"model":"other","stream":true}'


def test_a_body_that_is_not_a_json_object_is_400_only_when_read():
    ex = exchange(b"[1]")
    with pytest.raises(GatewayError) as caught:
        ex.json()
    assert (caught.value.status, caught.value.code) == (400, "invalid_request")
    assert exchange(b"").json() is None
    assert exchange(b"--boundary", "multipart/form-data; boundary=x").model is None


def test_usage_is_read_from_a_buffered_answer_on_first_use():
    ex = exchange(b"{}")
    ex.response = Response.json_response({"usage": {"prompt_tokens": 1, "completion_tokens": 2}})
    assert (ex.usage.input_tokens, ex.usage.output_tokens, ex.usage.total_tokens) == (1, 2, 3)


def test_stash_keys_are_typed_and_distinct():
    count, other = StashKey[int]("count"), StashKey[int]("count")
    ex = exchange(b"{}")
    ex.state[count] = 1
    assert ex.state[count] == 1 and ex.state.get(other) is None


def test_provider_urls_do_not_double_v1():
    from gateway.config import ProviderConfig
    from gateway.proxy import Provider

    groq_style = Provider("g", ProviderConfig(type="openai", base_url="https://h/openai/v1/"))
    assert groq_style.url_for("/v1/chat/completions", "") == "https://h/openai/v1/chat/completions"
    assert groq_style.url_for("/v1beta/models", "a=1") == "https://h/openai/v1/v1beta/models?a=1"
    assert Provider("o", ProviderConfig(type="openai")).url_for("/v1/models", "") == "https://api.openai.com/v1/models"
    assert Provider("a", ProviderConfig(type="anthropic")).url_for("/v1/messages", "") == "https://api.anthropic.com/v1/messages"
