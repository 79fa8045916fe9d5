"""The admin trace page in a real headless browser: Debian's chromium driven by Playwright.

The browser is the system's (``/usr/bin/chromium``, installed by .ci/run), never one
Playwright downloads. Nothing here needs the network.
"""

from __future__ import annotations

import os

import aiohttp
import pytest

from gateway import Exchange, hookimpl
from gateway.testing import run_gateway

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HOSTILE_CALLER = '<img src=x onerror="window.__pwned = 1">'
HOSTILE_MODEL = "<script>window.__pwned = 2</script>"
CHAT = [{"role": "user", "content": "hello"}]

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="needs Debian's chromium (apt-get install chromium)"
)


class Outcome:
    """Sets what scan, cache and cascade would, so the list shows their outcome."""

    @hookimpl
    async def request(self, exchange: Exchange) -> None:
        exchange.cache_status = "miss"
        exchange.threat_severity = "LOW"
        exchange.cascade_decision = "accepted"

    @hookimpl
    async def complete(self, exchange: Exchange) -> None:
        exchange.cost_usd = 0.000123


async def test_trace_page_lists_requests_and_shows_a_waterfall_of_plugin_and_client_spans(tmp_path):
    from playwright.async_api import async_playwright

    config = {
        "providers": {"mock": {"type": "mock"}},
        "plugins": [{"use": "test_trace_page:Outcome", "name": "outcome"}],
    }
    async with run_gateway(config, tmp_path) as gw:
        client = gw.openai()
        await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)
        async for _ in stream:
            pass
        async with aiohttp.ClientSession() as session:
            body = {"model": HOSTILE_MODEL, "messages": CHAT}
            async with session.post(
                gw.url + "/v1/chat/completions", json=body, headers={"x-gateway-user": HOSTILE_CALLER}
            ) as r:
                assert r.status == 200

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = await browser.new_page()
                dialogs: list[str] = []
                page.on("dialog", lambda dialog: dialogs.append(dialog.message))
                reply = await page.goto(gw.admin_url + "/traces")
                assert reply is not None and reply.status == 200
                assert "script-src" not in (
                    reply.headers.get("content-security-policy") or "x"
                )  # default-src 'none' covers it
                rows = page.locator("tr.trace")
                assert await rows.count() == 3
                newest = await rows.nth(0).inner_text()
                # The hostile values are shown as text, and nothing of them ran.
                assert HOSTILE_CALLER in newest and HOSTILE_MODEL in newest
                assert await page.evaluate("window.__pwned") is None
                assert await page.locator("tr.trace img, tr.trace script").count() == 0
                oldest = await rows.nth(2).inner_text()
                assert "gpt-4o-mini" in oldest and "cache:miss" in oldest and "threat:LOW" in oldest
                assert "cascade:accepted" in oldest and "0.000123" in oldest and "200" in oldest
                await page.screenshot(path=str(tmp_path / "traces.png"), full_page=True)

                await rows.nth(2).locator("a").click()
                await page.wait_for_selector("table.waterfall")
                names = await page.locator("tr.span .name").all_inner_texts()
                assert names[0] == "POST /v1/chat/completions"
                assert {"outcome request", "outcome complete", "chat gpt-4o-mini"} <= set(names)
                assert await page.locator('tr.span[data-kind="SERVER"]').count() == 1
                client_row = page.locator('tr.span[data-kind="CLIENT"]')
                assert await client_row.count() == 1
                # A span's attributes open on a click.
                await client_row.locator("summary").click()
                attributes = await client_row.locator("dl").first.inner_text()
                assert "gen_ai.request.model" in attributes and "gpt-4o-mini" in attributes
                bar = client_row.locator(".bar")
                assert (await bar.bounding_box())["width"] > 0
                await page.screenshot(path=str(tmp_path / "trace.png"), full_page=True)

                await page.goto(gw.admin_url + "/traces")
                await page.locator("tr.trace").nth(0).locator("a").click()
                await page.wait_for_selector("table.waterfall")
                assert HOSTILE_CALLER in await page.locator("p.summary").inner_text()
                assert await page.evaluate("window.__pwned") is None
                assert dialogs == []
            finally:
                await browser.close()
    for name in ("traces.png", "trace.png"):
        assert (tmp_path / name).stat().st_size > 1000
