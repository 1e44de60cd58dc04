"""The fork server's warm-up loads the primary font only: a fallback font (CJK, Arabic...) is
loaded by the worker whose text first needs it, and the invoice is the one eager loading
gives, byte for byte. (Loading every fallback at warm-up would cost each service several MB
for fonts most invoices never use.)"""
from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

from tests.conftest import invoice
from tests.server_process import ROOT, ServerProcess, post, until

CJK_NAME = "株式会社東京商事"
DROID = "DroidSansFallback"

#: Renders the CJK invoice in a fresh process, with every fallback font loaded first when
#: `eager`, and prints the PDF as base64.
RENDER = """
import base64, sys
from offload.workers.invoice_data import parse_invoice
from offload.workers.invoice_render import render_invoice, worker_fonts
data = {data!r}
if {eager!r}:
    for family in worker_fonts()._families:
        family.faces()
sys.stdout.write(base64.b64encode(render_invoice(parse_invoice(data))).decode())
"""


def cjk_invoice() -> dict:
    data = invoice(3)
    data["order"]["customer"]["name"] = CJK_NAME
    data["order"]["date"] = "2026-12-01"
    return data


def render_in_a_fresh_process(eager: bool) -> bytes:
    code = RENDER.format(data=cjk_invoice(), eager=eager)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return base64.b64decode(out.stdout)


async def test_a_cjk_name_loads_its_fallback_font_in_the_worker_and_renders_as_eager_loading_does(
        tmp_path: Path) -> None:
    with ServerProcess(tmp_path, processes=1, modules=("tests.fonttypes",)) as server:
        await server.start()
        async with server.session() as http:
            async def faces() -> list[str]:
                job = await until(http, await post(http, "test.faces", {}), lambda j: j["status"] == "completed",
                                  "completed")
                return job["result"]["value"]["faces"]

            before = await faces()
            assert any("NotoSans-Regular" in path for path in before)
            assert not any(DROID in path for path in before), "the warm-up loaded the CJK fallback"
            job = await until(http, await post(http, "pdf", cjk_invoice()),
                              lambda j: j["status"] in ("completed", "failed"), "finished", timeout=60)
            assert job["status"] == "completed", job
            assert any(DROID in path for path in await faces())
            async with http.get(f"/api/jobs/{job['id']}/download") as response:
                assert response.status == 200
                served = await response.read()
    assert served == render_in_a_fresh_process(eager=True) == render_in_a_fresh_process(eager=False)
