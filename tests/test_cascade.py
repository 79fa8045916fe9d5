"""cascade end to end: the draft answers when it is good enough, the strong model when not."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.trace import SpanKind

from gateway.config import ConfigError
from gateway.testing import run_gateway, serve_app
from gateway_plugins.cascade.answer import Draft, Question, StreamReader, draft_from_body
from gateway_plugins.cascade.validators import Complexity, Confidence, JsonAnswer, MinLength, Refusal, ToolArguments

HELLO = [{"role": "user", "content": "What is the capital of France?"}]
DRAFT, STRONG = "gpt-4o-mini", "gpt-4o"


def config(**options):
    cascade = {"draft_model": "gpt-4o-mini", "escalate_model": "gpt-4o", **options}
    return {
        "providers": {"mock": {"type": "mock"}, "flaky": {"type": "mock", "mock": {"error_rate": 1, "error_status": 503}}},
        "plugins": [{"use": "cascade", "config": cascade}],
    }


def weak(kind: str, model: str = "gpt-4o-mini,claude-haiku-4-5") -> dict[str, str]:
    return {"x-mock-weak-model": model, "x-mock-weak-answer": kind}


def client_spans(gw) -> list:
    return [span for span in gw.spans() if span.kind == SpanKind.CLIENT]


async def test_a_good_draft_answers_and_the_strong_model_is_never_asked(tmp_path):
    async with run_gateway(config(), tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
    reply = raw.parse()
    assert reply.model == "gpt-4o-mini"
    assert raw.headers["x-gateway-cascade"] == "accepted"
    assert raw.headers["x-gateway-model"] == "gpt-4o-mini"
    assert reply.choices[0].logprobs is None  # asked of the draft for the confidence check, not shown
    assert [span.attributes["gen_ai.request.model"] for span in client_spans(gw)] == ["gpt-4o-mini"]
    (send,) = gw.spans_named("cascade send")
    assert send.attributes["gateway.cascade.decision"] == "accepted"


@pytest.mark.parametrize(
    ("kind", "reason", "extra"),
    [
        ("refuse", "refusal", {}),
        ("empty", "length", {}),
        ("truncate", "truncation", {}),
        ("unsure", "confidence", {}),
        ("bad-json", "json", {"response_format": {"type": "json_object"}}),
    ],
)
async def test_a_weak_draft_escalates_to_the_strong_model_with_its_reason(tmp_path, kind, reason, extra):
    async with run_gateway(config(), tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, extra_headers=weak(kind), **extra
        )
        async with aiohttp.ClientSession() as session:
            stats = await (await session.get(f"{gw.admin_url}/stats")).json()
    assert raw.parse().model == "gpt-4o"
    assert raw.headers["x-gateway-cascade"] == "escalated"
    assert raw.headers["x-gateway-model"] == "gpt-4o"
    assert [span.attributes["gen_ai.request.model"] for span in client_spans(gw)] == ["gpt-4o-mini", "gpt-4o"]
    figures = stats["plugins"]["cascade"]
    assert figures["escalations_by_reason"] == {reason: 1}
    assert (figures["accepted"], figures["escalated"], figures["acceptance_rate"]) == (0, 1, 0.0)
    (send,) = gw.spans_named("cascade send")
    assert send.attributes["gateway.cascade.reason"] == reason


async def test_a_streamed_draft_is_held_back_until_judged_then_streamed(tmp_path):
    async with run_gateway(config(), tmp_path) as gw:
        client = gw.openai()
        accepted = [chunk async for chunk in await client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)]
        escalated_raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, stream=True, extra_headers=weak("refuse")
        )
        escalated = [chunk async for chunk in escalated_raw.parse()]
    assert {chunk.model for chunk in accepted} == {"gpt-4o-mini"}
    assert "".join(c.choices[0].delta.content or "" for c in accepted if c.choices).startswith("Mock reply to:")
    assert all(c.choices[0].logprobs is None for c in accepted if c.choices)
    assert {chunk.model for chunk in escalated} == {"gpt-4o"}  # nothing of the refused draft reached the caller
    assert escalated_raw.headers["x-gateway-cascade"] == "escalated"


async def test_a_streamed_drafts_events_count_as_upstream_time_in_server_timing(tmp_path):
    """The draft's stream is read whole before the caller gets headers: that wait is the
    upstream's, not the gateway's own (SPEC: Server-Timing gateway;dur, upstream;dur).
    The bound is the mock's own sleep before the draft's first event: never flaky."""
    async with run_gateway(config(), tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, stream=True, extra_headers={"x-mock-ttft-ms": "400"}
        )
        chunks = [chunk async for chunk in raw.parse()]
    assert raw.headers["x-gateway-cascade"] == "accepted" and chunks[-1].model == DRAFT
    timing = dict(part.strip().split(";dur=") for part in raw.headers["Server-Timing"].split(","))
    assert float(timing["upstream"]) >= 400


async def test_anthropic_callers_get_the_draft_in_their_shape_streamed_or_not(tmp_path):
    cascade = {"cascades": [{"models": ["claude-sonnet-*"], "draft_model": "claude-haiku-4-5"}]}
    async with run_gateway({"providers": {"mock": {"type": "mock"}}, "plugins": [{"use": "cascade", "config": cascade}]}, tmp_path) as gw:
        client = gw.anthropic()
        raw = await client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=100, messages=HELLO)
        async with client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=100, messages=HELLO, extra_headers=weak("refuse")
        ) as stream:
            final = await stream.get_final_message()
    assert (await raw.parse()).model == "claude-haiku-4-5"
    assert raw.headers["x-gateway-cascade"] == "accepted"
    assert final.model == "claude-sonnet-4-5"


async def test_cascade_off_header_and_bypass_clients_go_straight_to_the_requested_model(tmp_path):
    async with run_gateway(config(bypass_clients=["batch"]), tmp_path) as gw:
        client = gw.openai()
        off = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, extra_headers={"x-gateway-cascade": "off"}
        )
        batch = await client.chat.completions.create(model="gpt-4o", messages=HELLO, extra_headers={"x-gateway-user": "batch"})
        other = await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert off.parse().model == "gpt-4o" and "x-gateway-cascade" not in off.headers
    assert batch.model == "gpt-4o"
    assert other.model == "gpt-4o-mini"
    assert len(client_spans(gw)) == 3
    assert all("gateway.cascade.decision" not in span.attributes for span in gw.spans_named("cascade send"))


async def test_cascade_off_is_never_answered_from_a_cached_draft(tmp_path):
    """The cache sits before the cascade: a cascaded call stores the draft's answer under
    the caller's model; an identical call with ``x-gateway-cascade: off`` must still get
    the requested model, so the header is part of the cache key. A hit on the draft's
    answer carries x-gateway-model as the first answer did."""
    cascade = {"use": "cascade", "config": {"draft_model": DRAFT, "escalate_model": STRONG}}
    plugins = [{"use": "cache"}, cascade]
    async with run_gateway({"providers": {"mock": {"type": "mock"}}, "plugins": plugins}, tmp_path) as gw:
        client = gw.openai()
        cascaded = await client.chat.completions.with_raw_response.create(model=STRONG, messages=HELLO)
        off = await client.chat.completions.with_raw_response.create(
            model=STRONG, messages=HELLO, extra_headers={"x-gateway-cascade": "off"}
        )
        off_again = await client.chat.completions.with_raw_response.create(
            model=STRONG, messages=HELLO, extra_headers={"x-gateway-cascade": "off"}
        )
        again = await client.chat.completions.with_raw_response.create(model=STRONG, messages=HELLO)
        streamed = await client.chat.completions.with_raw_response.create(model=STRONG, messages=HELLO, stream=True)
        chunks = [chunk async for chunk in streamed.parse()]
    assert (cascaded.parse().model, cascaded.headers["x-gateway-model"]) == (DRAFT, DRAFT)
    assert (off.parse().model, off.headers["x-gateway-cache"]) == (STRONG, "miss")
    assert "x-gateway-model" not in off.headers
    assert (off_again.parse().model, off_again.headers["x-gateway-cache"]) == (STRONG, "hit")
    assert "x-gateway-model" not in off_again.headers
    # A hit on the draft's stored answer still says which model answered (x-gateway-model).
    assert again.parse().model == DRAFT
    assert (again.headers["x-gateway-cache"], again.headers["x-gateway-model"]) == ("hit", DRAFT)
    assert (streamed.headers["x-gateway-cache"], streamed.headers["x-gateway-model"]) == ("hit", DRAFT)
    assert chunks[0].model == DRAFT


@pytest.mark.parametrize("stream", [False, True])
async def test_with_the_cascade_before_the_cache_an_escalation_never_gets_the_rejected_draft(tmp_path, stream):
    """The other order: the cascade's draft call passes through the cache's send with the
    caller's key. It must not be published under that key: the escalation (and any identical
    call in flight) used to follow it and get the draft's refusal, labelled escalated."""
    cascade = {"use": "cascade", "config": {"draft_model": DRAFT, "escalate_model": STRONG}}
    plugins = [cascade, {"use": "cache"}]
    async with run_gateway({"providers": {"mock": {"type": "mock"}}, "plugins": plugins}, tmp_path) as gw:
        client = gw.openai()
        answers = []
        for _ in range(3):
            raw = await client.chat.completions.with_raw_response.create(
                model=STRONG, messages=HELLO, stream=stream, extra_headers=weak("refuse")
            )
            if stream:
                chunks = [chunk async for chunk in raw.parse()]
                text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
                model = chunks[0].model
            else:
                text, model = raw.parse().choices[0].message.content, raw.parse().model
            answers.append((raw.headers["x-gateway-cascade"], raw.headers["x-gateway-cache"], model, text))
    first, second, third = answers
    assert first[:3] == ("escalated", "miss", STRONG) and "can't help" not in first[3]
    # The draft has an entry of its own (its own body); the escalation its own, under the request's key.
    assert second[:3] == ("escalated", "miss", STRONG) and second[3] == first[3]
    assert third[:3] == ("escalated", "hit", STRONG) and third[3] == first[3]


async def test_a_hard_question_skips_the_draft(tmp_path):
    question = "Prove step by step that the integral of this function converges, and analyze the trade-offs: " + "x " * 200
    async with run_gateway(config(), tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": question}]
        )
    assert raw.headers["x-gateway-cascade"] == "escalated"
    assert [span.attributes["gen_ai.request.model"] for span in client_spans(gw)] == ["gpt-4o"]
    (send,) = gw.spans_named("cascade send")
    assert send.attributes["gateway.cascade.reason"] == "complexity"


async def test_a_failing_draft_provider_escalates_to_the_routed_one(tmp_path):
    cascade = {"cascades": [{"models": ["gpt-4o"], "draft_model": "gpt-4o-mini", "draft_provider": "flaky"}]}
    async with run_gateway({**config(), "plugins": [{"use": "cascade", "config": cascade}]}, tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
    assert raw.parse().model == "gpt-4o"
    assert raw.headers["x-gateway-provider"] == "mock"
    assert [span.attributes["gateway.provider"] for span in client_spans(gw)] == ["flaky", "mock"]
    (send,) = gw.spans_named("cascade send")
    assert send.attributes["gateway.cascade.reason"] == "draft_error"


async def test_a_third_party_validator_loads_by_module_and_attr(tmp_path):
    validators = ["refusal", {"use": "cascade_validators_example:MustMentionMock", "config": {"word": "zebra"}}]
    async with run_gateway(config(validators=validators), tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
    assert raw.headers["x-gateway-cascade"] == "escalated"
    (send,) = gw.spans_named("cascade send")
    assert send.attributes["gateway.cascade.reason"] == "mentions_mock"


async def test_a_validator_that_raises_is_skipped_and_never_fails_the_request(tmp_path):
    # docs/cascade.md: "A validator that raises is logged and skipped", in route (before the draft) as in check.
    validators = ["refusal", "cascade_validators_example:Broken"]
    async with run_gateway(config(validators=validators), tmp_path) as gw:
        client = gw.openai()
        good = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
        refused = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, extra_headers=weak("refuse")
        )
    assert good.status_code == 200 and good.headers["x-gateway-cascade"] == "accepted"
    assert good.headers["x-gateway-model"] == DRAFT
    assert refused.status_code == 200 and refused.headers["x-gateway-cascade"] == "escalated"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_a_malformed_body_is_the_upstreams_to_judge_never_a_plugin_error(tmp_path, path):
    # SPEC, "What bad input gets": a body the validators cannot read must not make the cascade raise (500).
    async with run_gateway(config(), tmp_path) as gw, aiohttp.ClientSession() as session:
        for odd in ({"messages": 5}, {"messages": HELLO, "tools": 5}, {"messages": HELLO, "system": 5}):
            body = {"model": "gpt-4o", "max_tokens": 50, **odd}
            async with session.post(gw.url + path, json=body) as reply:
                text = await reply.text()
                assert reply.status != 500 and "plugin_error" not in text, (odd, reply.status, text)


@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({"draft_model": "a"}, "config.draft_model", "go together"),
        ({"cascades": [{"models": ["x"], "draft_model": "y", "draft_provider": "nope"}]}, "config.cascades[0].draft_provider", "unknown provider"),
        ({"draft_model": "a", "escalate_model": "b", "validators": ["psychic"]}, "config.validators[0]", "unknown validator"),
        ({"draft_model": "a", "escalate_model": "b", "threshold": 2}, "config.threshold", "at most 1"),
        ({"cascades": [{"models": ["x"], "draft_model": "y", "threshold": 0}]}, "config.cascades[0].threshold", "above 0"),
    ],
)
async def test_config_mistakes_name_the_key(tmp_path, options, key, problem):
    with pytest.raises(ConfigError) as raised:
        async with run_gateway({"providers": {"mock": {"type": "mock"}}, "plugins": [{"use": "cascade", "config": options}]}, tmp_path):
            pass
    assert raised.value.key_path == f"plugins[0].{key}"
    assert problem in raised.value.problem


# -- the validators on their own -------------------------------------------------------------


def test_validators_score_answers_from_zero_to_one():
    question = Question.of({"messages": HELLO})
    good = Draft(text="The capital of France is Paris.", finish="stop")
    assert MinLength({}).check(question, good) == 1.0
    assert MinLength({}).check(question, Draft(text="")) == 0.0
    assert Refusal({}).check(question, Draft(text="Je ne peux pas aider avec cela.")) == 0.0
    assert Refusal({}).check(question, Draft(text="I'm not sure, maybe Lyon?")) == 0.4
    assert Refusal({}).check(question, good) == 1.0
    assert Confidence({}).check(question, Draft(text="x", logprobs=[-0.01, -0.02])) == 1.0
    assert Confidence({}).check(question, Draft(text="x", logprobs=[-1.5, -1.5])) < 0.5
    assert Confidence({}).check(question, good) is None


def test_json_and_tool_arguments_are_checked_against_the_requests_schemas():
    schema = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}
    question = Question.of(
        {
            "messages": HELLO,
            "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
            "tools": [{"type": "function", "function": {"name": "lookup", "parameters": schema}}],
        }
    )
    assert JsonAnswer({}).check(question, Draft(text='{"city": "Paris"}')) == 1.0
    assert JsonAnswer({}).check(question, Draft(text='{"town": "Paris"}')) == 0.0
    assert JsonAnswer({}).check(question, Draft(text="Paris")) == 0.0
    assert ToolArguments({}).check(question, Draft(tool_calls=[("lookup", '{"city": "Paris"}')])) == 1.0
    assert ToolArguments({}).check(question, Draft(tool_calls=[("lookup", '{"city": ')])) == 0.0
    assert ToolArguments({}).check(question, Draft(tool_calls=[("lookup", "{}")])) == 0.0
    assert ToolArguments({}).check(question, Draft(tool_calls=[("delete_all", "{}")])) == 0.0


def test_complexity_sends_only_questions_with_several_signs_of_difficulty_to_the_strong_model():
    easy = Question.of({"messages": HELLO})
    hard = Question.of({"messages": [{"role": "user", "content": "Prove the theorem step by step and analyze its complexity."}]})
    assert Complexity({}).route(easy) > 0.9
    assert Complexity({}).route(hard) < 0.5


def test_drafts_are_read_alike_from_both_apis_buffered_and_streamed():
    anthropic_body = json.dumps(
        {
            "type": "message",
            "content": [{"type": "text", "text": "Hi"}, {"type": "tool_use", "name": "f", "input": {"a": 1}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 3, "output_tokens": 4},
        }
    ).encode()
    draft = draft_from_body(anthropic_body)
    assert (draft.text, draft.finish, draft.tool_calls, draft.usage) == ("Hi", "tool_calls", [("f", '{"a":1}')], (3, 4))
    reader = StreamReader()
    for event in (
        {"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 0}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Par"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "is"}},
        {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 2}},
    ):
        data = json.dumps(event).encode()
        reader.feed(b"event: " + event["type"].encode() + b"\ndata: " + data[: len(data) // 2])
        reader.feed(data[len(data) // 2 :] + b"\n\n")
    streamed = reader.result()
    assert (streamed.text, streamed.finish, streamed.usage) == ("Paris", "length", (5, 2))


async def test_with_cost_an_escalation_pays_for_both_calls_and_stats_show_the_saving(tmp_path):
    plugins = [
        {"use": "cascade", "config": {"draft_model": DRAFT, "escalate_model": STRONG}},
        {"use": "cost", "config": {"store": str(tmp_path / "usage.db")}},
    ]
    async with run_gateway({"providers": {"mock": {"type": "mock"}}, "plugins": plugins}, tmp_path) as gw:
        client = gw.openai()
        accepted = await client.chat.completions.with_raw_response.create(model=STRONG, messages=HELLO)
        escalated = await client.chat.completions.with_raw_response.create(
            model=STRONG, messages=HELLO, extra_headers=weak("refuse")
        )
        async with aiohttp.ClientSession() as session:
            stats = await (await session.get(f"{gw.admin_url}/stats")).json()
    cheap, dear = (float(raw.headers["x-gateway-cost-usd"]) for raw in (accepted, escalated))
    assert 0 < cheap < dear
    figures = stats["plugins"]["cascade"]
    assert figures["cost_usd"] == pytest.approx(cheap + dear)
    # the accepted draft saved what the strong model would have cost minus what it did
    assert figures["saving_usd"] > 0
    assert figures["baseline_cost_usd"] > figures["cost_usd"] - dear


async def test_a_draft_on_a_provider_of_the_other_api_type_answers_in_the_callers_shape(tmp_path, mock_http_upstream):
    cascade = {"cascades": [{"models": ["gpt-4o"], "draft_model": "claude-haiku-4-5", "draft_provider": "claude"}]}
    providers = {"openai": {"type": "openai", "base_url": mock_http_upstream}, "claude": {"type": "anthropic", "base_url": mock_http_upstream}}
    async with run_gateway({"providers": providers, "plugins": [{"use": "cascade", "config": cascade}]}, tmp_path) as gw:
        client = gw.openai()
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
        streamed = [c async for c in await client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)]
    reply = raw.parse()
    assert reply.model == "claude-haiku-4-5" and reply.object == "chat.completion"
    assert reply.choices[0].message.content.startswith("Mock reply to:")
    assert (raw.headers["x-gateway-cascade"], raw.headers["x-gateway-provider"]) == ("accepted", "claude")
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices).startswith("Mock reply to:")


async def test_the_simple_forms_draft_goes_where_model_routes_send_it_across_api_types(tmp_path, mock_http_upstream):
    providers = {
        "openai": {"type": "openai", "base_url": mock_http_upstream},
        "claude": {"type": "anthropic", "base_url": mock_http_upstream},
    }
    config = {
        "providers": providers,
        "routes": [{"model": "claude-*", "provider": "claude"}, {"model": "gpt-*", "provider": "openai"}],
        "plugins": [{"use": "cascade", "config": {"draft_model": "claude-haiku-4-5", "escalate_model": "gpt-4o"}}],
    }
    async with run_gateway(config, tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
        message = await gw.anthropic().messages.with_raw_response.create(model="gpt-4o", max_tokens=100, messages=HELLO)
        weak_raw = await gw.openai().chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, extra_headers=weak("refuse")
        )
    reply = raw.parse()
    assert (raw.headers["x-gateway-cascade"], raw.headers["x-gateway-provider"]) == ("accepted", "claude")
    assert raw.headers["x-gateway-model"] == reply.model == "claude-haiku-4-5"
    assert reply.object == "chat.completion" and reply.id.startswith("msg_")  # Anthropic's answer, translated
    assert (message.headers["x-gateway-cascade"], message.headers["x-gateway-provider"]) == ("accepted", "claude")
    assert (await message.parse()).model == "claude-haiku-4-5"
    assert (weak_raw.headers["x-gateway-cascade"], weak_raw.headers["x-gateway-provider"]) == ("escalated", "openai")
    assert weak_raw.parse().model == "gpt-4o"


async def test_a_draft_tool_call_with_valid_arguments_is_accepted(tmp_path):
    schema = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}
    tools = [{"type": "function", "function": {"name": "weather", "parameters": schema}}]
    async with run_gateway(config(), tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, tools=tools, extra_headers={"x-mock-tool-call": "weather"}
        )
    (call,) = raw.parse().choices[0].message.tool_calls
    assert call.function.name == "weather" and "city" in json.loads(call.function.arguments)
    assert raw.headers["x-gateway-cascade"] == "accepted"
    (send,) = gw.spans_named("cascade send")
    assert "tool_arguments=1.000" in send.attributes["gateway.cascade.scores"]


async def test_a_rejected_drafts_garbage_usage_is_not_charged_and_never_fails_cost(tmp_path):
    # Before: the draft's usage went into the cost as reported; "many" made cost's
    # response hook raise: the caller got a 500 plugin_error for a call the upstream answered.
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        draft = body["model"] == DRAFT
        content = "I'm sorry, but I can't help with that." if draft else "Paris is the capital of France."
        usage = {"prompt_tokens": "many", "completion_tokens": -1} if draft else {"prompt_tokens": 9}
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        document = {"id": "c", "object": "chat.completion", "created": 1, "model": body["model"], "choices": [choice]}
        return web.json_response({**document, "usage": usage})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    plugins = [
        {"use": "cascade", "config": {"draft_model": DRAFT, "escalate_model": STRONG}},
        {"use": "cost", "config": {"store": str(tmp_path / "usage.db"), "flush_interval_s": 0.05}},
    ]
    async with serve_app(app) as url:
        providers = {"oa": {"type": "openai", "base_url": url, "api_key": "sk-test"}}
        async with run_gateway({"providers": providers, "plugins": plugins}, tmp_path) as gw:
            raw = await gw.openai().chat.completions.with_raw_response.create(model=STRONG, messages=HELLO)
            cost = next(p.instance for p in gw.gateway.chain.plugins if p.label == "cost")
            for _ in range(500):  # the complete hooks may still be running
                if cost.records or gw.gateway.chain.failures["cost"]:
                    break
                await asyncio.sleep(0.02)
    assert raw.headers["x-gateway-cascade"] == "escalated"
    assert gw.gateway.chain.failures["cost"] == 0 and cost.records == 1
    assert float(raw.headers["x-gateway-cost-usd"]) > 0
