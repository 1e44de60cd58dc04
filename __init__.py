"""offload: background jobs for CPU-heavy document work, with live progress.

What an application imports lives here; everything below `offload.service` and
`offload.workers` is internal and may change between releases.

    from offload import job_type, FileOutput, ValidationError
"""
from __future__ import annotations

from offload.workers.errors import JobError, PermanentError, ValidationError
from offload.workers.registry import FileOutput, job_type

__version__ = "0.1.0"

__all__ = ["FileOutput", "JobError", "PermanentError", "ValidationError", "__version__", "job_type"]
