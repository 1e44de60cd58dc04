"""The demo page in static/: served by the real service, self-contained (no CDN, no build)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, CHROMIUM_ARGS, WATCH_VIOLATIONS
from tests.users import ALICE, TOKENS

STATIC = Path(__file__).resolve().parent.parent / "static"


async def test_root_serves_the_demo_page(start_server):
    client = await start_server()
    response = await client.get("/")
    assert response.status == 200
    assert response.content_type == "text/html"
    page = await response.text()
    assert 'id="submit-form"' in page
    assert '<script type="module" src="/static/app.js">' in page


async def test_static_files_are_served_with_their_content_types(start_server):
    client = await start_server()
    for path, needle in (("/static/app.js", "./offload.js"), ("/static/offload.js", "/api/ws"),
                         ("/static/offload-react.js", "useBackgroundJob")):
        response = await client.get(path)
        assert response.status == 200, path
        assert response.content_type in ("application/javascript", "text/javascript"), path
        assert needle in await response.text(), path
    response = await client.get("/static/style.css")
    assert response.status == 200
    assert response.content_type == "text/css"


async def test_every_page_asset_is_local_and_served(start_server):
    client = await start_server()
    page = await (await client.get("/")).text()
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets, "the page references no assets"
    for url in assets:
        if url.startswith("data:"):
            continue
        assert url.startswith("/static/"), f"{url} is not served by the service itself"
        response = await client.get(url)
        assert response.status == 200, url


def test_page_script_builds_the_dom_without_inner_html():
    # Job data (names, messages, errors) reaches the page only through textContent.
    for name in ("app.js", "offload.js", "offload-react.js"):
        assert "innerHTML" not in (STATIC / name).read_text(), name


# ---- the page's security headers ------------------------------------------------------------------
def _policy(header: str) -> dict[str, list[str]]:
    directives = (part.split() for part in header.split(";") if part.strip())
    return {name: sources for name, *sources in directives}


async def test_page_and_its_files_send_a_strict_content_security_policy(start_server):
    client = await start_server()
    for path in ("/", "/static/app.js", "/static/style.css"):
        response = await client.get(path)
        assert response.status == 200, path
        headers = response.headers
        assert headers["X-Frame-Options"] == "DENY", path
        assert headers["Referrer-Policy"] == "no-referrer", path
        assert headers["X-Content-Type-Options"] == "nosniff", path
        policy = _policy(headers["Content-Security-Policy"])
        assert policy["default-src"] == ["'none'"], path
        assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'"], path
        host = f"127.0.0.1:{client.port}"
        assert sorted(policy["connect-src"]) == sorted(["'self'", f"ws://{host}", f"wss://{host}"]), path
        assert policy["frame-ancestors"] == ["'none'"], path
        assert "unsafe" not in headers["Content-Security-Policy"], path


def test_page_has_no_inline_script_or_style():
    # what the policy would block: the page must not need it
    page = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", page) and "<style" not in page and " style=" not in page
    assert not re.search(r"\bon[a-z]+=", page)


# ---- the page in a real browser -------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["single-user", "tokens"])
async def test_the_page_renders_an_invoice_under_its_policy_in_a_real_browser(start_server, mode):
    if not CHROMIUM.exists():  # CI must run it: .ci/run installs the browser
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"needs Debian's chromium at {CHROMIUM}")
    from playwright.async_api import async_playwright, expect

    client = await start_server(**(TOKENS if mode == "tokens" else {}))
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
            sockets: list[str] = []
            page.on("websocket", lambda ws: sockets.append(ws.url))
            await page.add_init_script(WATCH_VIOLATIONS)
            if mode == "tokens":  # as if pasted into the Token field before
                await page.add_init_script(f"localStorage.setItem('offload.token', {ALICE!r});")
            await page.goto(f"http://127.0.0.1:{client.port}/")
            await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=20_000)

            await page.locator("input[name=lineItems]").fill("40")
            await page.locator("#submit-form button[type=submit]").click()
            row = page.locator("#jobs li.job").first
            await expect(row.locator("[aria-valuenow]")).to_have_attribute("aria-valuenow", "100", timeout=30_000)
            await expect(row).to_have_attribute("data-status", "completed", timeout=30_000)
            link = row.locator("a.download")
            await expect(link).to_be_visible()
            href = await link.get_attribute("href")
            assert href and href.endswith("/download")

            violations = await page.evaluate("window.__violations")
        finally:
            await browser.close()
    assert violations == []
    assert not [line for line in console if line.startswith(("error", "pageerror"))], console
    assert sockets, "the page opened no WebSocket"
    if mode == "tokens":
        assert all("?ticket=" in url and ALICE not in url for url in sockets), sockets
