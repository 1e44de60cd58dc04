"""offload: background jobs for CPU-heavy document work, with live progress.

What an application imports lives here; everything below `offload.service` and
`offload.workers` is internal and may change between releases.

    from offload import job_type, FileOutput, ValidationError          # job types (workers)
    from offload import Client, AsyncClient, JobFailed                 # talking to a service
    from offload import generate_invoice, agenerate_invoice            # the invoice PDF, anywhere

The clients (`offload.client`, which imports aiohttp) and `generate_invoice`
(`offload.invoice`) load on first use, so a worker process that only imports `job_type`
pays for neither; reportlab loads only when an invoice is rendered in this process.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from offload.workers.errors import JobError, PermanentError, ValidationError
from offload.workers.registry import FileOutput, job_type

if TYPE_CHECKING:
    from offload.client import (AsyncClient, Client, Conflict, InvalidRequest, JobCancelled, JobFailed, NotFound,
                                OffloadClientError, ServiceUnreachable, TooManyRequests, Unauthorized, Unavailable)
    from offload.invoice import agenerate_invoice, generate_invoice
    from offload.job import Job, JobResult, JobStatus, Progress, Snapshot, Status

__version__ = "0.1.0"

_LAZY = {
    **dict.fromkeys(("AsyncClient", "Client", "Conflict", "InvalidRequest", "JobCancelled", "JobFailed", "NotFound",
                     "OffloadClientError", "ServiceUnreachable", "TooManyRequests", "Unauthorized", "Unavailable"),
                    "offload.client"),
    **dict.fromkeys(("generate_invoice", "agenerate_invoice"), "offload.invoice"),
    **dict.fromkeys(("Job", "JobResult", "JobStatus", "Progress", "Snapshot", "Status"), "offload.job"),
}

__all__ = [
    "AsyncClient", "Client", "Conflict", "FileOutput", "InvalidRequest", "Job", "JobCancelled", "JobError", "JobFailed",
    "JobResult", "JobStatus", "NotFound", "OffloadClientError", "PermanentError", "Progress", "ServiceUnreachable",
    "Snapshot", "Status", "TooManyRequests", "Unauthorized", "Unavailable", "ValidationError", "__version__",
    "agenerate_invoice", "generate_invoice", "job_type",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'offload' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
