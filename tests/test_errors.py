"""Every error the gateway makes, in the route's API shape, raised as the SDKs' own classes."""

from __future__ import annotations

import anthropic
import openai
import pytest

from gateway import errors
from gateway.errors import GatewayError, error_body
from gateway.testing import run_gateway

CHAT = [{"role": "user", "content": "hello"}]

# status, code, the openai SDK's class, the anthropic SDK's class
PLUGIN_ANSWERS = [
    (400, "threat_detected", openai.BadRequestError, anthropic.BadRequestError),
    (402, "budget_exceeded", openai.APIStatusError, anthropic.APIStatusError),
    (429, "rate_limit_exceeded", openai.RateLimitError, anthropic.RateLimitError),
    (503, "circuit_open", openai.InternalServerError, anthropic.InternalServerError),
    (503, "backend_unavailable", openai.InternalServerError, anthropic.InternalServerError),
]


@pytest.mark.parametrize(("status", "code", "openai_class", "anthropic_class"), PLUGIN_ANSWERS)
async def test_plugin_answers_reach_both_sdks_in_their_shape(tmp_path, status, code, openai_class, anthropic_class):
    config = {
        "providers": {"mock": {"type": "mock"}},
        "plugins": [{"use": "probe_plugin:Probe", "config": {"tag": "x", "raise_status": status, "raise_code": code}}],
    }
    async with run_gateway(config, tmp_path) as gw:
        with pytest.raises(openai_class) as from_openai:
            await gw.openai().chat.completions.create(model="m", messages=CHAT)
        with pytest.raises(anthropic_class) as from_anthropic:
            await gw.anthropic().messages.create(model="c", max_tokens=5, messages=CHAT)
    assert from_openai.value.status_code == status
    assert from_openai.value.body == {"message": "x says no", "type": from_openai.value.body["type"], "code": code, "param": None}
    assert from_anthropic.value.status_code == status
    assert from_anthropic.value.body == {"type": "error", "error": {"type": code, "message": "x says no"}}
    assert from_openai.value.response.headers["x-request-id"]


def test_error_helpers_carry_the_contracts_status_and_code():
    cases = {
        errors.invalid_request("m"): (400, "invalid_request"),
        errors.threat_detected("m"): (400, "threat_detected"),
        errors.invalid_api_key(): (401, "invalid_api_key"),
        errors.budget_exceeded("m"): (402, "budget_exceeded"),
        errors.request_too_large(10): (413, "request_too_large"),
        errors.rate_limit_exceeded("m", 2.2): (429, "rate_limit_exceeded"),
        errors.upstream_error("m"): (502, "upstream_error"),
        errors.circuit_open("m", 30): (503, "circuit_open"),
        errors.backend_unavailable("m"): (503, "backend_unavailable"),
        errors.upstream_timeout("m"): (504, "upstream_timeout"),
        errors.plugin_error("p"): (500, "plugin_error"),
    }
    for error, (status, code) in cases.items():
        assert (error.status, error.code) == (status, code)
    assert errors.rate_limit_exceeded("m", 2.2).headers == {"Retry-After": "3"}
    assert errors.circuit_open("m", 0.1).headers == {"Retry-After": "1"}


def test_openai_shape_types():
    body = error_body(GatewayError(429, "rate_limit_exceeded", "slow down"), "openai")
    assert body == b'{"error":{"message":"slow down","type":"rate_limit_error","code":"rate_limit_exceeded","param":null}}'
    body = error_body(GatewayError(504, "upstream_timeout", "late"), "openai")
    assert b'"type":"server_error"' in body


@pytest.mark.parametrize(("seconds", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.0004, "2"), (19.9051, "20")])
def test_retry_after_is_whole_seconds_rounded_up(seconds, header):
    # Waiting Retry-After must be enough: 1.0004 s is 2, not 1 (it was int(x + 0.999)).
    assert errors.rate_limit_exceeded("over", seconds).headers["Retry-After"] == header
    assert errors.circuit_open("open", seconds).headers["Retry-After"] == header
