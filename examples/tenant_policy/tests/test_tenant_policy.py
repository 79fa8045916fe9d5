"""The tenant policy end to end: a real gateway, virtual client keys, both SDKs."""

import anthropic
import openai
import pytest

from gateway.testing import run_gateway

CONFIG = {
    "providers": {"mock": {"type": "mock"}},
    "clients": {"frontend": {"key": "fe-key"}, "batch": {"key": "batch-key"}},
    "plugins": [
        {
            "use": "tenant-policy",
            "config": {
                "tenants": {
                    "frontend": {"models": ["gpt-4o-mini", "claude-haiku-*"], "max_tokens": 50},
                    "batch": {"models": ["*"]},
                }
            },
        }
    ],
}
HELLO = [{"role": "user", "content": "Hello there"}]


async def test_an_allowed_model_passes_and_gets_the_cap_written_in(tmp_path):
    async with run_gateway(CONFIG, tmp_path) as gw:
        reply = await gw.openai(api_key="fe-key").chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert reply.choices[0].message.content.startswith("Mock reply")


async def test_a_model_outside_the_clients_globs_is_403_in_openai_shape(tmp_path):
    async with run_gateway(CONFIG, tmp_path) as gw:
        with pytest.raises(openai.PermissionDeniedError) as raised:
            await gw.openai(api_key="fe-key").chat.completions.create(model="gpt-4o", messages=HELLO)
    assert raised.value.status_code == 403
    assert raised.value.body["code"] == "permission_denied"
    assert raised.value.body["param"] == "model"


async def test_too_many_tokens_is_403_in_anthropic_shape(tmp_path):
    async with run_gateway(CONFIG, tmp_path) as gw:
        client = gw.anthropic(api_key="fe-key")
        with pytest.raises(anthropic.PermissionDeniedError) as raised:
            await client.messages.create(model="claude-haiku-4-5", max_tokens=500, messages=HELLO)
        reply = await client.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=HELLO)
    assert raised.value.body["error"]["type"] == "permission_denied"
    assert reply.content[0].text


async def test_a_tenant_with_every_model_and_no_cap_passes_anything(tmp_path):
    async with run_gateway(CONFIG, tmp_path) as gw:
        reply = await gw.openai(api_key="batch-key").chat.completions.create(
            model="gpt-4o", messages=HELLO, max_tokens=10_000
        )
    assert reply.model == "gpt-4o"
