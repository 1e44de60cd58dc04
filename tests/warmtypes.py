"""Job types with warm-up hooks, for tests/test_warm_up.py. They run in real worker processes
and report what the hooks left behind: which process ran them, and what the runtime saw."""
from __future__ import annotations

import os
import sys
from typing import Any

from offload.workers import runtime
from offload.workers.registry import job_type

#: The pid of the process that ran `_record` (the fork server, or the worker itself), and
#: whether `test.warm`'s handler had already run then.
_warmed_in: int | None = None
_jobs_before_warm_up: int | None = None
_jobs = 0


def _record() -> None:
    global _warmed_in, _jobs_before_warm_up
    _warmed_in, _jobs_before_warm_up = os.getpid(), _jobs


def _broken() -> None:
    raise RuntimeError("this warm-up always fails")


@job_type("test.warm", warm_up=_record)
def warm(data: Any, ctx: Any) -> dict[str, Any]:
    global _jobs
    _jobs += 1
    return {"pid": os.getpid(), "parent": os.getppid(), "warmedIn": _warmed_in,
            "jobsBeforeWarmUp": _jobs_before_warm_up, "warmed": sorted(runtime.warmed()),
            "rendererLoaded": "offload.workers.invoice_render" in sys.modules}


@job_type("test.warm_fails", warm_up=_broken)
def warm_fails(data: Any, ctx: Any) -> str:
    return "served"
