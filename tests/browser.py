"""Headless Chromium for the browser-client tests: Debian's /usr/bin/chromium driven by
Playwright (never a browser Playwright downloads), and a harness page on the
service's own origin, into which a test imports /static/offload.js."""
from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
#: Recorded in the page before its own script runs: every CSP violation the browser reports.
WATCH_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""
HARNESS = "/api/health/live"


def need_chromium() -> None:
    if not CHROMIUM.exists():  # CI must run it: .ci/run installs the browser
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"needs Debian's chromium at {CHROMIUM}")


class Tab:
    """One page plus what it did: its console errors and the WebSocket URLs it opened."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.console: list[str] = []
        self.sockets: list[str] = []
        self.requests: list[Any] = []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        page.on("websocket", lambda ws: self.sockets.append(ws.url))
        page.on("request", lambda r: self.requests.append(r))

    def errors(self) -> list[str]:
        """Script errors and errors logged; not the line Chromium logs for every 4xx/5xx
        answer, which the tests provoke on purpose."""
        return [line for line in self.console if line.startswith(("error", "pageerror"))
                and "Failed to load resource: the server responded" not in line]

    async def harness(self, base_url: str) -> None:
        """Open a page on the service's origin (so that REST and the socket are same-origin,
        as for an application's own page); the test imports the modules into it. The page is
        a real answer of the service (Chromium's local-network checks refuse a socket from a
        page Playwright made up): the liveness probe, which runs no script of its own."""
        await self.page.route("**/favicon.ico", lambda route: route.fulfill(status=204))
        await self.page.goto(f"{base_url}{HARNESS}")

    async def wait_for(self, expression: str, timeout: float = 30) -> Any:
        """Wait until the JS `expression` is truthy in the page; returns its value."""
        # as a function: Playwright would eval() a bare expression, which the page's CSP refuses
        handle = await self.page.wait_for_function(f"() => ({expression})", timeout=timeout * 1000)
        return await handle.json_value()


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A browser; each test opens its tabs with `Tab(await browser.new_page())`."""
    need_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()
