"""The page submits a sample of every built-in job type, in a real browser, and each one
completes; the email sample mails the invoice the page submitted before, to a real SMTP server."""
from __future__ import annotations

import os
import re

import pytest

from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.test_email import Mailbox, email_settings, serve_smtp, stop_smtp

SAMPLES = ("invoice", "report", "export", "image", "email")


async def test_the_page_submits_a_sample_of_every_job_type(start_server, make_config):
    if not CHROMIUM.exists():  # CI must run it: .ci/run installs the browser
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"needs Debian's chromium at {CHROMIUM}")
    from playwright.async_api import async_playwright, expect

    box = Mailbox()
    smtp = await serve_smtp(box)
    try:
        base = make_config()
        config = base.replace(jobs={"settings": {**base.jobs.settings, **email_settings(box)["jobs"]["settings"]}})
        client = await start_server(config)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                await page.goto(f"http://127.0.0.1:{client.port}/")
                await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=20_000)
                await page.locator("input[name=lineItems]").fill("25")
                ids: dict[str, str] = {}
                for sample in SAMPLES:
                    await page.locator("select[name=sample]").select_option(sample)
                    await page.locator("#submit-form button[type=submit]").click()
                    notice = page.locator("#notice")
                    await expect(notice).to_have_attribute("data-kind", "ok", timeout=10_000)
                    if ids:  # this submission's notice, not one before it (a list would match element by element)
                        await expect(notice).not_to_contain_text(re.compile("|".join(map(re.escape, ids.values()))))
                    found = re.search(r"as (job_[a-z2-7]{24})\.", await notice.text_content() or "")
                    assert found, await notice.text_content()
                    ids[sample] = found.group(1)
                for job_id in ids.values():
                    row = page.locator(f'#jobs li.job[data-id="{job_id}"]')
                    await expect(row).to_have_attribute("data-status", "completed", timeout=60_000)
                assert errors == []
            finally:
                await browser.close()
        types = {sample: (await (await client.get(f"/api/jobs/{job_id}")).json())["type"] for sample, job_id in ids.items()}
        assert types == {"invoice": "pdf", "report": "pdf", "export": "export", "image": "image", "email": "email"}
        image = await (await client.get(f"/api/jobs/{ids['image']}")).json()
        assert [o["name"] for o in image["result"]["outputs"]] == ["thumb", "banner", "square"]
        (message,) = [m for _, m, _ in box.messages]
        (attachment,) = list(message.iter_attachments())  # the email mailed the invoice before it
        pdf = await (await client.get(f"/api/jobs/{ids['invoice']}/download")).read()
        assert attachment.get_content() == pdf
    finally:
        await stop_smtp(box, smtp)
