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

from tests.conftest import invoice
from tests.server_process import ROOT, ServerProcess, descendants, libraries, parent_of, post, until, worker_pids


async def test_workers_load_nothing_the_fork_server_had_not_loaded(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, processes=2, modules=("benchmarks.noop",)) as server:
        await server.start()
        async with server.session() as http:
            workers = await worker_pids(http, 2)
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

