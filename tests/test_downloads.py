"""Result downloads are safe to hand to a browser: never sniffed, never a path, any file
name kept exactly (RFC 6266), and a handler's bad content type fails its job, not the answer."""
from __future__ import annotations

from aiohttp.multipart import content_disposition_filename, parse_content_disposition

from tests.conftest import submit, wait_status
from tests.conftest import both_backends as store_backend  # noqa: F401  (each test on SQLite and on PostgreSQL)


async def download(client, filename: str, content_type: str = "text/plain"):
    job_id = await submit(client, "test.file", {"filename": filename, "contentType": content_type})
    job = await wait_status(client, job_id, "completed", "failed")
    assert job["status"] == "completed", job
    response = await client.get(job["result"]["url"])
    assert response.status == 200, await response.text()
    return job_id, response


def names(response) -> tuple[str, str | None]:
    """The plain `filename` and the name a client that reads `filename*` gets."""
    kind, params = parse_content_disposition(response.headers["Content-Disposition"])
    assert kind == "attachment"
    return params["filename"], content_disposition_filename(params, "filename")


async def test_every_download_says_nosniff(start_server):
    client = await start_server()
    _, response = await download(client, "notes.txt", "text/html")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Type"] == "text/html"
    assert names(response) == ("notes.txt", "notes.txt")
    assert "filename*" not in response.headers["Content-Disposition"]  # plain ASCII needs no second name
    assert await response.read() == b"hello"


async def test_a_dots_only_filename_becomes_the_stored_files_own_name(start_server):
    client = await start_server()
    for filename in ("..", "...", "/..", " . . "):
        job_id, response = await download(client, filename)
        plain, chosen = names(response)
        assert plain == chosen, response.headers["Content-Disposition"]
        assert chosen.startswith(f"{job_id}-1"), (filename, chosen)  # <job id>-<attempt><ext>


async def test_non_ascii_filename_is_kept_exactly_beside_an_ascii_fallback(start_server):
    client = await start_server()
    exact = "Rechnung Müller – 東京 2026.pdf"
    _, response = await download(client, exact, "application/pdf")
    header = response.headers["Content-Disposition"]
    assert header.isascii()
    plain, chosen = names(response)
    assert chosen == exact
    assert plain.isascii() and plain.startswith("Rechnung Muller") and plain.endswith(".pdf")
    assert "filename*=UTF-8''" in header


async def test_a_content_type_with_control_characters_fails_the_job_and_the_service_goes_on(start_server):
    client = await start_server()
    bad = await submit(client, "test.file", {"filename": "x.txt", "contentType": "text/plain\r\nX-Evil: 1"})
    failed = await wait_status(client, bad, "completed", "failed")
    assert failed["status"] == "failed", failed
    assert failed["attempts"] == 1  # the same handler would return the same: no retry
    assert failed["error"]["type"] == "BadContentType"
    assert "text/plain\\r\\nX-Evil: 1" in failed["error"]["message"]
    response = await client.get(f"/api/jobs/{bad}/download")
    assert response.status == 409 and "X-Evil" not in response.headers

    _, response = await download(client, "after.txt")  # the next job runs, on the same workers
    assert await response.read() == b"hello"
