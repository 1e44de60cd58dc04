"""What the worker processes share: everything a worker loads to start and to render an
invoice, the fork server loaded before it forked (a library loaded after the fork would be
each worker's own); and the renderer imports no networking (xml.sax.saxutils would bring
urllib.request, http.client and ssl). Read from `/proc/<pid>/maps`: an extension module's
shared library shows there once it is imported."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import eventually, invoice
from tests.server_process import ROOT, ServerProcess, descendants, post, until


def libraries(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as fh:
        return {Path(line.split()[-1]).name.split(".")[0] for line in fh if ".so" in line}


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


async def test_workers_load_nothing_the_fork_server_had_not_loaded(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, processes=2, modules=("benchmarks.noop",)) as server:
        await server.start()
        async with server.session() as http:
            async def pids() -> list[int] | None:
                async with http.get("/api/health") as response:
                    found = (await response.json())["workers"]["pids"]
                return found if len(found) == 2 and all(found) else None

            workers = await eventually(pids, 30, "two worker processes")
            job = await until(http, await post(http, "pdf", {"order": {"number": "1", "customer": {"name": "A"}},
                                                             "items": [{"name": "x", "quantity": 1, "unitPrice": 1}]}),
                              lambda j: j["status"] == "completed", "completed")
            assert job["status"] == "completed"
            (fork_server,) = {parent_of(pid) for pid in workers}
            assert fork_server in descendants(server.pid) and parent_of(fork_server) == server.pid
            preloaded = libraries(fork_server)
            for pid in workers:
                assert libraries(pid) <= preloaded, (pid, libraries(pid) - preloaded)


def test_rendering_an_invoice_imports_no_networking() -> None:
    """In a fresh interpreter, as a worker of a fork server started anew would."""
    code = ("import sys, json\n"
            "from offload.workers.invoice import parse_invoice, render_invoice\n"
            f"render_invoice(parse_invoice(json.loads({json.dumps(invoice(5))!r})))\n"
            "print(sorted(m for m in ('ssl', '_ssl', 'http.client', 'urllib.request') if m in sys.modules))\n")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]"

