"""Properties of translation: text and tool calls survive a request and its answer, streamed or not."""

from __future__ import annotations

import json

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.exchange import SSEBuffer, StreamEvent
from gateway.translate.answers import chat_to_message, message_to_chat
from gateway.translate.requests import chat_to_messages, messages_to_chat
from gateway.translate.streams import AnthropicToChat, ChatToAnthropic

texts = st.text(min_size=1, max_size=24)
names = st.sampled_from(["get_weather", "search", "lookup_order", "f"])
ids = st.builds("call_{:04d}".format, st.integers(0, 9999))
scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8
)
arguments = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
calls = st.lists(st.tuples(ids, names, arguments), max_size=3, unique_by=lambda call: call[0])


@st.composite
def openai_conversations(draw):
    """A chat: user and system turns, assistant turns with text and tool calls, tool results for each call."""
    messages = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["user", "user_parts", "system", "assistant"]))
        if kind == "user":
            messages.append({"role": "user", "content": draw(texts)})
        elif kind == "user_parts":
            messages.append({"role": "user", "content": [{"type": "text", "text": t} for t in draw(st.lists(texts, min_size=1, max_size=3))]})
        elif kind == "system":
            messages.append({"role": draw(st.sampled_from(["system", "developer"])), "content": draw(texts)})
        else:
            made = draw(calls)
            message = {"role": "assistant", "content": draw(st.none() | texts)}
            if made:
                message["tool_calls"] = [
                    {"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(a)}} for i, n, a in made
                ]
            elif message["content"] is None:
                message["content"] = draw(texts)
            messages.append(message)
            messages.extend({"role": "tool", "tool_call_id": i, "content": draw(texts)} for i, _, _ in made)
    messages.append({"role": "user", "content": draw(texts)})
    return {"model": "claude-sonnet-4-5", "messages": messages}


def openai_flat(messages):
    """What must survive: system texts, then every text, call and result in order."""
    system, flat = [], []
    for message in messages:
        role, content = message["role"], message.get("content")
        parts = [content] if isinstance(content, str) else [p["text"] for p in content or ()]
        if role in ("system", "developer"):
            system.extend(parts)
            continue
        if role == "tool":
            flat.append(("result", message["tool_call_id"], content))
            continue
        flat.extend((role, text) for text in parts)
        for call in message.get("tool_calls", ()):
            flat.append(("call", call["id"], call["function"]["name"], json.loads(call["function"]["arguments"])))
    return system, flat


def anthropic_flat(body):
    system = body.get("system", [])
    system = [system] if isinstance(system, str) else [block["text"] for block in system]
    flat = []
    for turn in body["messages"]:
        content = turn["content"]
        for block in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            if block["type"] == "text":
                flat.append((turn["role"], block["text"]))
            elif block["type"] == "tool_use":
                flat.append(("call", block["id"], block["name"], block["input"]))
            elif block["type"] == "tool_result":
                flat.append(("result", block["tool_use_id"], block["content"]))
    return system, flat


@settings(max_examples=60, deadline=None)
@given(openai_conversations())
def test_openai_request_keeps_every_text_call_and_result_in_order(body):
    translated = chat_to_messages(body)
    assert anthropic_flat(translated) == openai_flat(body["messages"])
    roles = [turn["role"] for turn in translated["messages"]]
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False))  # turns alternate
    back = messages_to_chat(translated)
    system, flat = openai_flat(back["messages"])
    assert (system, flat) == openai_flat(body["messages"])


@st.composite
def anthropic_messages(draw):
    blocks = [{"type": "text", "text": t} for t in draw(st.lists(texts, max_size=2))]
    blocks += [{"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in draw(calls)]
    stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else draw(st.sampled_from(["end_turn", "max_tokens", "stop_sequence"]))
    usage = {
        "input_tokens": draw(st.integers(0, 10_000)),
        "output_tokens": draw(st.integers(0, 10_000)),
        "cache_read_input_tokens": draw(st.integers(0, 10_000)),
        "cache_creation_input_tokens": draw(st.integers(0, 1000)),
    }
    return {"id": "msg_" + draw(ids), "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": blocks, "stop_reason": stop, "stop_sequence": None, "usage": usage}


def anthropic_stream(message):
    """The stream the API sends for ``message``: each text and each tool input cut in pieces."""
    start = {**message, "content": [], "stop_reason": None, "usage": {**message["usage"], "output_tokens": 1}}
    events = [{"type": "message_start", "message": start}, {"type": "ping"}]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})
            text = block["text"]
            events += [{"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text[i : i + 5]}} for i in range(0, len(text), 5)]
        else:
            events.append({"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}})
            encoded = json.dumps(block["input"])
            events += [{"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": encoded[i : i + 7]}} for i in range(0, len(encoded), 7)]
        events.append({"type": "content_block_stop", "index": index})
    events.append({"type": "message_delta", "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None}, "usage": {"output_tokens": message["usage"]["output_tokens"]}})
    events.append({"type": "message_stop"})
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + msgspec.json.encode(e) + b"\n\n" for e in events)


def feed(converter, raw):
    out = b"".join(converter.feed(StreamEvent(block)) for block in SSEBuffer().feed(raw))
    return out + converter.end()


def accumulate_chunks(raw):
    """What an OpenAI SDK builds from chunks: text, tool calls, finish reason, usage."""
    text, tool_calls, finish, usage = "", {}, None, None
    for block in SSEBuffer().feed(raw):
        event = StreamEvent(block)
        if event.is_done:
            break
        chunk = event.json()
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            for call in delta.get("tool_calls", ()):
                entry = tool_calls.setdefault(call["index"], {"id": call.get("id"), "name": None, "arguments": ""})
                entry["name"] = call.get("function", {}).get("name") or entry["name"]
                entry["arguments"] += call.get("function", {}).get("arguments") or ""
            finish = choice["finish_reason"] or finish
    return text, [tool_calls[i] for i in sorted(tool_calls)], finish, usage


@settings(max_examples=60, deadline=None)
@given(anthropic_messages())
def test_anthropic_answer_keeps_text_and_tool_calls_buffered_and_streamed_alike(message):
    completion, _ = message_to_chat(message)
    chat_message = completion["choices"][0]["message"]
    texts_in = "".join(b["text"] for b in message["content"] if b["type"] == "text")
    uses = [b for b in message["content"] if b["type"] == "tool_use"]
    assert (chat_message["content"] or "") == texts_in
    calls_out = chat_message.get("tool_calls", [])
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls_out] == [
        (u["id"], u["name"], u["input"]) for u in uses
    ]
    text, streamed_calls, finish, usage = accumulate_chunks(feed(AnthropicToChat(include_usage=True), anthropic_stream(message)))
    assert text == texts_in
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in streamed_calls] == [(u["id"], u["name"], u["input"]) for u in uses]
    assert finish == completion["choices"][0]["finish_reason"]
    assert usage == completion["usage"]


@st.composite
def chat_completions(draw):
    made = draw(calls)
    content = draw(st.none() | texts) if made else draw(texts)
    message = {"role": "assistant", "content": content}
    if made:
        message["tool_calls"] = [{"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(a)}} for i, n, a in made]
    finish = "tool_calls" if made else draw(st.sampled_from(["stop", "length"]))
    prompt, cached = draw(st.integers(0, 10_000)), draw(st.integers(0, 10_000))
    usage = {"prompt_tokens": prompt + cached, "completion_tokens": draw(st.integers(0, 5000)), "prompt_tokens_details": {"cached_tokens": cached}}
    return {"id": "chatcmpl-" + draw(ids), "object": "chat.completion", "created": 1, "model": "gpt-4o", "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}


def openai_stream(completion):
    choice = completion["choices"][0]
    message = choice["message"]
    head = {"id": completion["id"], "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
    chunks = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    text = message["content"] or ""
    chunks += [{**head, "choices": [{"index": 0, "delta": {"content": text[i : i + 4]}, "finish_reason": None}]} for i in range(0, len(text), 4)]
    for position, call in enumerate(message.get("tool_calls", ())):
        opening = {"index": position, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": ""}}
        chunks.append({**head, "choices": [{"index": 0, "delta": {"tool_calls": [opening]}, "finish_reason": None}]})
        encoded = call["function"]["arguments"]
        chunks += [
            {**head, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": position, "function": {"arguments": encoded[i : i + 6]}}]}, "finish_reason": None}]}
            for i in range(0, len(encoded), 6)
        ]
    chunks.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]})
    chunks.append({**head, "choices": [], "usage": completion["usage"]})
    return b"".join(b"data: " + msgspec.json.encode(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def accumulate_events(raw):
    """What the anthropic SDK's stream helper builds: the final message."""
    message = None
    buffers: dict[int, str] = {}
    for block in SSEBuffer().feed(raw):
        event = StreamEvent(block).json()
        kind = event["type"]
        if kind == "message_start":
            message = event["message"]
        elif kind == "content_block_start":
            message["content"].append(dict(event["content_block"]))
        elif kind == "content_block_delta":
            target, delta = message["content"][event["index"]], event["delta"]
            if delta["type"] == "text_delta":
                target["text"] += delta["text"]
            else:
                buffers[event["index"]] = buffers.get(event["index"], "") + delta["partial_json"]
        elif kind == "content_block_stop" and event["index"] in buffers:
            message["content"][event["index"]]["input"] = json.loads(buffers[event["index"]])
        elif kind == "message_delta":
            message["stop_reason"] = event["delta"]["stop_reason"]
            message["usage"].update(event["usage"])
    return message


@settings(max_examples=60, deadline=None)
@given(chat_completions())
def test_openai_answer_keeps_text_and_tool_calls_buffered_and_streamed_alike(completion):
    message, _ = chat_to_message(completion)
    chat_message = completion["choices"][0]["message"]
    expected = ([{"type": "text", "text": chat_message["content"]}] if chat_message["content"] else []) + [
        {"type": "tool_use", "id": c["id"], "name": c["function"]["name"], "input": json.loads(c["function"]["arguments"])}
        for c in chat_message.get("tool_calls", ())
    ]
    assert message["content"] == expected
    streamed = accumulate_events(feed(ChatToAnthropic("gpt-4o"), openai_stream(completion)))
    assert streamed["content"] == expected
    assert streamed["stop_reason"] == message["stop_reason"]
    assert streamed["usage"] == message["usage"]


def exchange_for(path: str, body: dict):
    from gateway.exchange import Exchange

    return Exchange(None, method="POST", path=path, body=msgspec.json.encode(body), headers={"Content-Type": "application/json"})


keys = st.sampled_from(
    ["model", "messages", "system", "tools", "tool_choice", "stop", "stop_sequences", "max_tokens", "content", "role",
     "type", "text", "image_url", "source", "tool_calls", "function", "arguments", "input", "response_format", "metadata"]
)  # fmt: skip
shapes = st.recursive(
    scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(keys, shapes, max_size=6), st.sampled_from(["/v1/chat/completions", "/v1/messages"]))
def test_any_json_body_is_translated_or_refused_with_a_400_never_a_crash(body, path):
    from gateway.errors import GatewayError
    from gateway.translate import translate_request

    target = "anthropic" if path == "/v1/chat/completions" else "openai"
    try:
        translation = translate_request(exchange_for(path, body), target)
    except GatewayError as error:
        assert error.status == 400 and error.code == "invalid_request"
    else:
        assert translation is not None and msgspec.json.decode(translation.body)["messages"] is not None
