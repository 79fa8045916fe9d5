"""Model aliases end to end: a real gateway with the plugin loaded by its entry-point name."""

from gateway.testing import run_gateway

CONFIG = {
    "providers": {"mock": {"type": "mock"}},
    "plugins": [{"use": "model-aliases", "config": {"aliases": {"fast": "gpt-4o-mini"}}}],
}


async def test_an_alias_reaches_the_upstream_as_its_model(tmp_path):
    async with run_gateway(CONFIG, tmp_path) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(
            model="fast", messages=[{"role": "user", "content": "Hi"}]
        )
    assert raw.parse().model == "gpt-4o-mini"
    assert raw.headers["x-model-alias"] == "fast=gpt-4o-mini"


async def test_a_model_that_is_no_alias_passes_unchanged(tmp_path):
    async with run_gateway(CONFIG, tmp_path) as gw:
        reply = await gw.openai().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    assert reply.model == "gpt-4o"
