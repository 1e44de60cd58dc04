"""The built-in `image` type end to end through a real server and real worker processes:
uploads (multipart and base64) resized, thumbnailed, cropped and converted, read back with
Pillow; EXIF orientation applied and metadata stripped; several outputs in one zip;
decompression bombs, oversized and bad uploads refused before anything is stored; the
upload deleted by retention; the Python client and the CLI uploading a file."""
from __future__ import annotations

import asyncio
import base64
import io
import struct
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from offload import AsyncClient
from offload.service.app import create_app
from offload.service.config import ConfigError, load_config
from offload.service.keys import RETENTION
from offload.service.models import Clock
from tests.conftest import wait_status, ws_events_until
from tests.conftest import both_backends as store_backend  # noqa: F401  (each test on SQLite and on PostgreSQL)
from tests.test_cli import cli_env
from tests.test_retention import DAY, Wall

RED, BLUE = (255, 0, 0), (0, 0, 255)
MAKE = 0x010F  # the EXIF tag of the camera's make
ORIENTATION = 0x0112


def png(width: int = 200, height: int = 100, colour: tuple[int, ...] = (10, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


def turned_jpeg() -> bytes:
    """40 x 20 as stored, left half red, right half blue, with EXIF orientation 6 (turn it
    90° clockwise to show it): upright it is 20 x 40, red on top. And a camera make."""
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    exif[MAKE] = "OffloadCam"
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A PNG whose header claims width x height, with a few bytes of pixels: decoding it
    would need gigabytes, reading its header costs nothing."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def form(job: dict[str, Any], content: bytes, filename: str = "photo.png") -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("job", orjson.dumps(job).decode(), content_type="application/json")
    data.add_field("file", content, filename=filename, content_type="application/octet-stream")
    return data


def b64(content: bytes, filename: str = "photo.jpg") -> dict[str, str]:
    return {"base64": base64.b64encode(content).decode(), "filename": filename}


async def completed(client: TestClient, response: aiohttp.ClientResponse) -> dict[str, Any]:
    body = await response.json()
    assert response.status == 201, body
    job = await wait_status(client, body["jobId"], "completed", "failed")
    assert job["status"] == "completed", job
    return job


async def download(client: TestClient, job: dict[str, Any]) -> tuple[bytes, str]:
    response = await client.get(job["result"]["url"])
    assert response.status == 200, await response.text()
    return await response.read(), response.headers["Content-Type"]


def stored(results: Path) -> list[str]:
    return sorted(p.name for p in results.iterdir()) if results.exists() else []


async def refused(client: TestClient, response: aiohttp.ClientResponse, status: int) -> str:
    body = await response.json()
    assert response.status == status, body
    return body["error"]["message"]


async def no_jobs(client: TestClient) -> bool:
    return (await (await client.get("/api/jobs")).json())["jobs"] == []


async def test_a_multipart_upload_is_resized_and_converted(start_server, tmp_path):
    client = await start_server()
    job = {"type": "image", "data": {"outputs": [
        {"name": "small", "resize": {"width": 50, "height": 50, "fit": "contain"}, "format": "webp"}]}}
    done = await completed(client, await client.post("/api/jobs", data=form(job, png(200, 100))))
    content, content_type = await download(client, done)
    assert content_type == "image/webp"
    with Image.open(io.BytesIO(content)) as image:
        assert (image.format, image.size) == ("WEBP", (50, 25))
    assert done["result"]["filename"] == "small.webp"
    assert done["result"]["outputs"] == [{"name": "small", "filename": "small.webp", "format": "webp",
                                          "width": 50, "height": 25, "size": len(content)}]
    assert done["result"]["size"] == len(content)
    # The stored job describes its input; the input file is the job's, named by its id.
    stored_job = await (await client.get(f"/api/jobs/{done['id']}")).json()
    assert stored_job["result"]["outputs"][0]["width"] == 50
    assert (tmp_path / "results" / f"{done['id']}-input").read_bytes() == png(200, 100)
    # An idempotent repeat of the same upload answers the first job and leaves no second file.
    keyed = {**job, "options": {"idempotencyKey": "photo-1"}}
    first = await (await client.post("/api/jobs", data=form(keyed, png(200, 100)))).json()
    again = await client.post("/api/jobs", data=form(keyed, png(200, 100)))
    assert again.status == 200 and (await again.json())["jobId"] == first["jobId"]
    other = await client.post("/api/jobs", data=form(keyed, png(201, 100)))
    assert other.status == 422  # the same key with another file
    inputs = sorted(p.name for p in (tmp_path / "results").glob("*-input"))
    assert inputs == sorted([f"{done['id']}-input", f"{first['jobId']}-input"])


async def test_a_base64_jpeg_is_turned_upright_and_its_metadata_stripped_unless_kept(start_server):
    client = await start_server()
    data = {"image": b64(turned_jpeg()), "outputs": [{"name": "upright", "format": "png"}]}
    done = await completed(client, await client.post("/api/jobs", json={"type": "image", "data": data}))
    content, content_type = await download(client, done)
    assert content_type == "image/png"
    with Image.open(io.BytesIO(content)) as image:
        assert (image.format, image.size) == ("PNG", (20, 40))  # orientation applied
        rgb = image.convert("RGB")
        assert rgb.getpixel((10, 5))[0] > 200 and rgb.getpixel((10, 5))[2] < 60  # red on top
        assert rgb.getpixel((10, 35))[2] > 200 and rgb.getpixel((10, 35))[0] < 60  # blue below
        assert len(image.getexif()) == 0 and "exif" not in image.info  # metadata gone

    # The crop's bounds are checked against the upright size, read from the header at submission.
    turned = {**data, "outputs": [{"crop": {"left": 0, "top": 0, "width": 40, "height": 20}}]}
    message = await refused(client, await client.post("/api/jobs", json={"type": "image", "data": turned}), 422)
    assert message.startswith("data.outputs[0].crop.width: must be a whole number from 1 to 20"), message

    data = {**data, "outputs": [{"name": "kept", "format": "jpeg", "quality": 90}], "keepMetadata": True}
    kept = await completed(client, await client.post("/api/jobs", json={"type": "image", "data": data}))
    with Image.open(io.BytesIO((await download(client, kept))[0])) as image:
        assert image.size == (20, 40)
        exif = image.getexif()
        assert exif[MAKE] == "OffloadCam" and exif.get(ORIENTATION, 1) == 1  # kept, and no turn left to do


async def test_several_outputs_are_one_zip_listing_each_with_progress_per_output(start_server):
    client = await start_server()
    outputs = [{"name": "thumb", "thumbnail": {"width": 64, "height": 64}, "format": "webp", "quality": 70},
               {"name": "banner", "resize": {"width": 120, "height": 30, "fit": "cover"}, "format": "jpeg"},
               {"name": "corner", "crop": {"left": 0, "top": 0, "width": 40, "height": 40},
                "resize": {"width": 10, "height": 20, "fit": "fill"}}]
    async with client.ws_connect("/api/ws") as ws:
        await ws.send_json({"op": "subscribe", "all": True})
        response = await client.post("/api/jobs", data=form({"type": "image", "data": {"outputs": outputs}},
                                                            png(200, 100), "holiday.png"))
        job_id = (await response.json())["jobId"]
        events = await ws_events_until(ws, job_id)
    done = await wait_status(client, job_id, "completed")
    content, content_type = await download(client, done)
    assert (content_type, done["result"]["filename"]) == ("application/zip", "holiday.zip")
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert archive.namelist() == ["thumb.webp", "banner.jpg", "corner.png"]
        found = {}
        for name in archive.namelist():
            with Image.open(io.BytesIO(archive.read(name))) as image:
                found[name] = (image.format, image.size)
    assert found == {"thumb.webp": ("WEBP", (64, 32)), "banner.jpg": ("JPEG", (120, 30)),
                     "corner.png": ("PNG", (10, 20))}
    assert [(o["name"], o["format"], o["width"], o["height"]) for o in done["result"]["outputs"]] == [
        ("thumb", "webp", 64, 32), ("banner", "jpeg", 120, 30), ("corner", "png", 10, 20)]
    messages = [e["message"] for e in events if e.get("event") == "progress"]
    expected = ["reading the image", "making thumb (1 of 3)", "making banner (2 of 3)", "making corner (3 of 3)",
                "writing the zip"]
    assert messages and all(m in expected for m in messages), messages
    assert messages == sorted(messages, key=expected.index)  # in order (a slow reader may miss some)


async def test_a_decompression_bomb_and_too_many_pixels_are_refused_before_decoding_and_nothing_stored(
        start_server, tmp_path):
    client = await start_server(jobs={"results_dir": str(tmp_path / "results"), "retry_delay_ms": 10,
                                      "settings": {"image": {"max_pixels": 10_000}}})
    ops = {"type": "image", "data": {"outputs": [{"resize": {"width": 10}}]}}
    message = await refused(client, await client.post("/api/jobs", data=form(ops, bomb_png())), 422)
    assert message.startswith("file: is larger than 10,000 pixels ([jobs.settings.image] max_pixels)"), message
    # A header within Pillow's own limit: the service's check reads the size from it.
    message = await refused(client, await client.post("/api/jobs", data=form(ops, bomb_png(1000, 1000))), 422)
    assert "its header says 1,000 x 1,000" in message, message
    message = await refused(client, await client.post("/api/jobs", json={
        "type": "image", "data": {**ops["data"], "image": b64(png(200, 100))}}), 422)
    assert message.startswith("data.image: is larger than 10,000 pixels"), message
    message = await refused(client, await client.post("/api/jobs", data=form(ops, b"not an image at all")), 422)
    assert message == "file: is not an image offload reads (PNG, JPEG, WebP or GIF)"
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "BMP")
    message = await refused(client, await client.post("/api/jobs", data=form(ops, buffer.getvalue())), 422)
    assert "is not an image offload reads" in message
    assert await no_jobs(client)
    assert stored(tmp_path / "results") == []


async def test_a_gif_is_read_as_its_first_frame(start_server):
    client = await start_server()
    frames = [Image.new("P", (30, 30), i) for i in (1, 2)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    done = await completed(client, await client.post("/api/jobs", data=form(
        {"type": "image", "data": {"outputs": [{"thumbnail": {"width": 15}}]}}, buffer.getvalue(), "a.gif")))
    with Image.open(io.BytesIO((await download(client, done))[0])) as image:
        assert (image.format, image.size) == ("PNG", (15, 15))


async def test_an_upload_past_its_limit_is_413_naming_it_and_nothing_is_stored(start_server, tmp_path):
    client = await start_server(limits={"max_upload_bytes": 64 * 1024, "max_inline_upload_bytes": 2048})
    ops = {"type": "image", "data": {"outputs": [{"resize": {"width": 10}}]}}
    big = png(1, 1) + b"\0" * (100 * 1024)
    message = await refused(client, await client.post("/api/jobs", data=form(ops, big)), 413)
    assert "65,536 bytes ([limits] max_upload_bytes)" in message, message
    message = await refused(client, await client.post("/api/jobs", json={
        "type": "image", "data": {**ops["data"], "image": b64(b"\0" * 4096)}}), 413)
    assert "data.image.base64 is larger than 2,048 bytes decoded ([limits] max_inline_upload_bytes)" in message
    assert await no_jobs(client)
    assert stored(tmp_path / "results") == []


async def test_bad_operations_are_422_naming_the_field_and_nothing_is_stored(start_server, tmp_path):
    client = await start_server()
    cases = {
        "data.outputs": {},
        "data.outputs[0].resize.fit": {"outputs": [{"resize": {"width": 10, "height": 10, "fit": "stretch"}}]},
        "data.outputs[0].resize": {"outputs": [{"resize": {"width": 10, "fit": "cover"}}]},
        "data.outputs[0].crop.width": {"outputs": [{"crop": {"left": 150, "top": 0, "width": 100, "height": 10}}]},
        "data.outputs[0].quality": {"outputs": [{"format": "png", "quality": 80}]},
        "data.outputs[0].format": {"outputs": [{"format": "gif"}]},
        "data.outputs[0].thumbnail": {"outputs": [{"resize": {"width": 5}, "thumbnail": {"width": 5}}]},
        "data.outputs[1].name": {"outputs": [{"name": "a"}, {"name": "A"}]},
        "data.outputs[0].rotate": {"outputs": [{"rotate": 90}]},
    }
    for field, data in cases.items():
        message = await refused(client, await client.post("/api/jobs", data=form({"type": "image", "data": data},
                                                                                 png(200, 100))), 422)
        assert message.startswith(f"{field}: "), (field, message)
    message = await refused(client, await client.post("/api/jobs", data=form(
        {"type": "image", "data": {"image": {"width": 1}, "outputs": [{}]}}, png())), 422)
    assert message.startswith("data.image: comes from the `file` part"), message
    message = await refused(client, await client.post("/api/jobs", json={
        "type": "image", "data": {"image": {"filename": "x.png", "width": 10, "height": 10}, "outputs": [{}]}}), 422)
    assert message.startswith("data.image: must be {\"base64\""), message
    message = await refused(client, await client.post("/api/jobs", json={
        "type": "image", "data": {"image": {"base64": "***"}, "outputs": [{}]}}), 422)
    assert message.startswith("data.image.base64: is not base64"), message
    plain = aiohttp.FormData()  # what an HTML form sends: fields without a content type
    plain.add_field("job", orjson.dumps({"type": "image", "data": {"outputs": [{}]}}).decode())
    plain.add_field("file", png(), filename="photo.png")
    message = await refused(client, await client.post("/api/jobs", data=plain), 415)
    assert message.startswith("the job part must be sent as Content-Type: application/json"), message
    message = await refused(client, await client.post("/api/jobs", data=form({"type": "test.echo", "data": {}},
                                                                             png())), 422)
    assert message == "file: job type 'test.echo' takes no file"
    message = await refused(client, await client.post("/api/jobs/batch", json={"jobs": [
        {"type": "image", "data": {"image": b64(png()), "outputs": [{}]}}]}), 422)
    assert message.startswith("jobs[0]"), message
    assert await no_jobs(client)
    assert stored(tmp_path / "results") == []


async def test_retention_deletes_the_upload_with_its_job(make_config, tmp_path):
    wall = Wall()
    config = make_config(retention={"interval": "1h", "completed": "1d", "cancelled": "1d"})
    results = tmp_path / "results"
    async with TestClient(TestServer(create_app(config, clock=Clock(wall)), host="127.0.0.1")) as client:
        data = {"image": b64(png()), "outputs": [{"thumbnail": {"width": 10}}]}
        done = await completed(client, await client.post("/api/jobs", json={"type": "image", "data": data}))
        response = await client.post("/api/jobs", json={"type": "image", "data": data,
                                                        "options": {"delay": DAY * 365}})
        waiting = (await response.json())["jobId"]
        assert (await client.delete(f"/api/jobs/{waiting}")).status == 200
        assert {f"{done['id']}-input", f"{waiting}-input"} <= set(stored(results))
        wall.ahead_ms += 2 * DAY
        cleaned = await client.app[RETENTION].run_once()  # type: ignore[union-attr]
        assert cleaned.jobs == {"completed": 1, "failed": 0, "cancelled": 1}
        assert stored(results) == []


async def test_the_python_client_and_the_cli_upload_a_file(start_server, tmp_path):
    client = await start_server()
    url = str(client.make_url("")).rstrip("/")
    photo = tmp_path / "photo.png"
    photo.write_bytes(png(200, 100))
    async with AsyncClient(url) as offload:
        content = await offload.run("image", {"outputs": [{"resize": {"width": 20}, "format": "jpeg"}]}, file=photo)
    with Image.open(io.BytesIO(content)) as image:
        assert (image.format, image.size) == ("JPEG", (20, 10))

    ops = tmp_path / "ops.json"
    ops.write_bytes(orjson.dumps({"outputs": [{"name": "a", "thumbnail": {"width": 50}},
                                              {"name": "b", "format": "webp"}]}))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "offload", "submit", "image", "--url", url, "--file", str(photo), "--data", f"@{ops}",
        "--wait", "-o", str(tmp_path / "out.zip"), env=cli_env(), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert archive.namelist() == ["a.png", "b.webp"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "offload", "submit", "image", "--url", url, "--file", str(tmp_path / "missing.png"),
        "--data", f"@{ops}", env=cli_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2 and "--file: cannot read" in stderr.decode(), stderr.decode()


def test_a_bad_image_setting_stops_start_up_naming_it():
    for settings, problem in (({"max_pixels": 0}, "[jobs.settings.image] max_pixels must be a whole number >= 1"),
                              ({"max_pixel": 5}, "[jobs.settings.image] max_pixel is not a setting")):
        with pytest.raises(ConfigError) as caught:
            load_config(None, environ={}, overrides={"jobs": {"settings": {"image": settings}}})
        assert str(caught.value).startswith(problem), caught.value
