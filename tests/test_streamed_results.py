"""Results larger than memory: written as a stream (a generator of chunks, or `ctx.file`),
downloaded with Content-Length and HTTP range requests, and saved by the client and the
CLI a chunk at a time, resuming a broken download where it broke."""
from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from offload.client import AsyncClient
from tests.conftest import eventually, submit, wait_status
from tests.streamtypes import CHUNK, expected
from tests.test_cli import cli_env, offload, url_of

BIG = 50 * CHUNK + 12345  # 50 MiB and a bit: not a whole number of chunks
MODULES = ["tests.jobtypes", "tests.streamtypes"]


@pytest.fixture
async def server(start_server, make_config):
    return await start_server(make_config(workers={"processes": 2, "modules": MODULES}))


def results_folder(client) -> Path:
    from offload.service.keys import CONFIG

    return client.server.app[CONFIG].results_path


def partials(client) -> list[str]:
    """Partial files in the results folder (none may stay, whatever happened)."""
    folder = results_folder(client)
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part")) if folder.exists() else []


async def completed(client, type: str, data: dict[str, Any]) -> dict[str, Any]:
    job = await wait_status(client, await submit(client, type, data), "completed", "failed", "cancelled", timeout=60)
    assert job["status"] == "completed", job
    return job


async def sha_of(response) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    async for chunk in response.content.iter_chunked(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


async def test_a_generator_result_is_written_chunk_by_chunk_and_served_with_ranges(server):
    job = await completed(server, "test.stream_chunks", {"size": BIG})
    assert job["result"]["size"] == BIG
    want = expected(BIG)
    url = job["result"]["url"]

    whole = await server.get(url)
    assert whole.status == 200
    assert int(whole.headers["Content-Length"]) == BIG
    assert whole.headers["Accept-Ranges"] == "bytes"
    etag, modified = whole.headers["ETag"], whole.headers["Last-Modified"]
    assert await sha_of(whole) == (hashlib.sha256(want).hexdigest(), BIG)

    part = await server.get(url, headers={"Range": "bytes=3000000-4000000"})
    assert part.status == 206
    assert part.headers["Content-Range"] == f"bytes 3000000-4000000/{BIG}"
    assert await part.read() == want[3_000_000:4_000_001]

    tail = await server.get(url, headers={"Range": "bytes=-777"})
    assert tail.status == 206 and tail.headers["Content-Range"] == f"bytes {BIG - 777}-{BIG - 1}/{BIG}"
    assert await tail.read() == want[-777:]

    beyond = await server.get(url, headers={"Range": f"bytes={BIG}-"})
    assert beyond.status == 416
    assert beyond.headers["Content-Range"] == f"bytes */{BIG}"

    same = await server.get(url, headers={"Range": "bytes=10-19", "If-Range": etag})
    assert same.status == 206 and await same.read() == want[10:20]
    changed = await server.get(url, headers={"Range": "bytes=10-19", "If-Range": '"another-file"'})
    assert changed.status == 200 and int(changed.headers["Content-Length"]) == BIG  # the whole file instead
    changed.close()

    head = await server.head(url)
    assert head.status == 200 and int(head.headers["Content-Length"]) == BIG
    assert head.headers["ETag"] == etag and head.headers["Last-Modified"] == modified
    assert await head.read() == b""
    assert partials(server) == []


async def test_ctx_file_is_written_in_place_by_the_handler_or_by_a_library_at_its_path(server):
    size = 3 * CHUNK + 5
    for via_path in (False, True):
        job = await completed(server, "test.stream_file", {"size": size, "via_path": via_path,
                                                           "filename": "out.dat"})
        assert job["result"]["filename"] == "out.dat" and job["result"]["size"] == size
        assert job["result"]["contentType"] == "application/octet-stream"
        response = await server.get(job["result"]["url"])
        assert await response.read() == expected(size), via_path
    assert partials(server) == []


async def test_a_failing_cancelled_or_killed_attempt_leaves_no_partial_file(server, tmp_path):
    failed = await wait_status(server, await submit(server, "test.stream_file", {"size": 4 * CHUNK,
                               "fail_after": 2 * CHUNK}, maxRetries=0), "failed", "completed")
    assert failed["status"] == "failed" and "broke off" in failed["error"]["message"]

    gate = tmp_path / "gate"
    job_id = await submit(server, "test.stream_file", {"size": 4 * CHUNK, "gate": str(gate)})
    await wait_status(server, job_id, "running")

    async def writing() -> bool:
        return bool(partials(server))

    await eventually(writing, what="the partial file to appear")
    assert (await server.delete(f"/api/jobs/{job_id}")).status in (200, 202)
    assert (await wait_status(server, job_id, "cancelled"))["status"] == "cancelled"

    killed = await wait_status(server, await submit(server, "test.stream_file", {"size": 4 * CHUNK, "exit": True},
                               maxRetries=0), "failed", "completed")
    assert killed["status"] == "failed", killed
    assert partials(server) == []
    assert not any(p.name.startswith(job_id) for p in results_folder(server).iterdir())


async def test_an_async_handler_may_return_a_streamed_file_output(server):
    job = await completed(server, "test.stream_async", {"size": 2 * CHUNK + 1})
    response = await server.get(job["result"]["url"])
    assert await response.read() == expected(2 * CHUNK + 1)


class CuttingProxy:
    """A loopback TCP proxy that cuts its first connection after `cut` bytes of the answer,
    as a network would, and records the head of every request it forwards."""

    def __init__(self, upstream: tuple[str, int], cut: int) -> None:
        self.upstream, self.cut = upstream, cut
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = not self.requests
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        up_writer.write(head)
        await up_writer.drain()
        sent = 0
        try:
            while chunk := await up_reader.read(65536):
                if first and sent + len(chunk) >= self.cut:
                    writer.write(chunk[:self.cut - sent])
                    await writer.drain()
                    writer.transport.abort()  # the connection breaks mid-body
                    return
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
        finally:
            up_writer.close()
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_the_client_streams_a_download_to_a_file_and_resumes_it_with_a_range(server, tmp_path):
    job = await completed(server, "test.stream_chunks", {"size": BIG})
    proxy = CuttingProxy((server.server.host, server.server.port), cut=7 * CHUNK)
    url = await proxy.start()
    try:
        async with AsyncClient(url) as client:
            target = await client.download_to(job["id"], tmp_path / "big.bin")
    finally:
        await proxy.close()
    assert target.stat().st_size == BIG
    assert hashlib.sha256(target.read_bytes()).hexdigest() == hashlib.sha256(expected(BIG)).hexdigest()
    assert len(proxy.requests) == 2, proxy.requests
    resumed = proxy.requests[1].decode().lower()
    assert "\r\nrange: bytes=" in resumed and "\r\nif-range: " in resumed, resumed
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


async def test_the_cli_saves_a_large_result_to_a_file_and_to_stdout(server, tmp_path):
    job = await completed(server, "test.stream_chunks", {"size": 6 * CHUNK + 3})
    out = tmp_path / "saved.bin"
    result = await offload("download", job["id"], "-o", str(out), "--url", url_of(server), env=cli_env())
    assert result.code == 0, result
    assert out.read_bytes() == expected(6 * CHUNK + 3)
    piped = await asyncio.create_subprocess_shell(
        f"{sys.executable} -m offload download {job['id']} -o - --url {url_of(server)} | sha256sum",
        env=cli_env(), stdout=asyncio.subprocess.PIPE)
    stdout, _ = await asyncio.wait_for(piped.communicate(), 60)
    assert stdout.split()[0].decode() == hashlib.sha256(expected(6 * CHUNK + 3)).hexdigest()


def test_the_runtime_itself_discards_the_file_of_an_attempt_that_fails_or_returns_json(tmp_path, monkeypatch):
    """In the worker, before the pool's own clean-up of killed attempts: nothing is left."""
    from offload.workers import runtime
    from offload.workers.registry import Registry

    monkeypatch.setattr(runtime, "_types", Registry.from_modules(MODULES))
    outcome = runtime.run("job_unit", 1, "test.stream_file", {"size": 3 * CHUNK, "fail_after": CHUNK}, {},
                          str(tmp_path))
    assert outcome["outcome"] == "failed" and "broke off" in outcome["error"]["message"]
    assert list(tmp_path.iterdir()) == []
    outcome = runtime.run("job_unit", 2, "test.stream_file", {"size": CHUNK}, {}, str(tmp_path))
    assert outcome["outcome"] == "completed" and [p.name for p in tmp_path.iterdir()] == ["job_unit-2.bin"]
