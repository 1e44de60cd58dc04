"""What the worker processes share: everything a worker loads to start and to render an
invoice, the fork server loaded before it forked (a library loaded after the fork would be
each worker's own); and the renderer imports no networking (xml.sax.saxutils would bring
urllib.request, http.client and ssl). Read from `/proc/<pid>/maps`: an extension module's
shared library shows there once it is imported."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import eventually
from tests.server_process import ServerProcess, descendants, post, until


def libraries(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as fh:
        return {Path(line.split()[-1]).name.split(".")[0] for line in fh if ".so" in line}


async def test_workers_start_from_what_the_fork_server_loaded_and_render_without_ssl(tmp_path: Path) -> None:
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
            fork_server = next(pid for pid in descendants(server.pid)
                               if pid not in workers and "forkserver" in Path(f"/proc/{pid}/cmdline").read_text())
            preloaded = libraries(fork_server)
            for pid in workers:
                assert libraries(pid) <= preloaded, (pid, libraries(pid) - preloaded)
            for pid in (fork_server, *workers):
                assert "_ssl" not in libraries(pid), pid
