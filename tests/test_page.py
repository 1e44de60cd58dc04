"""The demo page in static/: served by the real service, self-contained (no CDN, no build)."""
from __future__ import annotations

import re
from pathlib import Path

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
    response = await client.get("/static/app.js")
    assert response.status == 200
    assert response.content_type in ("application/javascript", "text/javascript")
    assert "/api/ws" in await response.text()
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
    assert "innerHTML" not in (STATIC / "app.js").read_text()
