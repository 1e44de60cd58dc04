"""Job types for the tests of jobs that follow jobs: they report what `ctx.inputs` held."""
from __future__ import annotations

import hashlib
from pathlib import Path

from offload.workers.errors import PermanentError
from offload.workers.registry import FileOutput, job_type
from tests.jobtypes import _wait_for


@job_type("after.inputs")
def inputs(data, ctx):
    """Returns what it was given: each input with its status, value, error and, for a file,
    its name, size and the SHA-256 of the bytes read through `Input.open`."""
    _wait_for(data.get("gate"), ctx)
    seen = []
    for job_id, given in ctx.inputs.items():
        item = {"id": job_id, "type": given.type, "status": given.status, "value": given.value,
                "error": given.error, "filename": given.filename}
        if given.path is not None:
            with given.open() as fh:
                content = fh.read()
            item.update(size=len(content), sha256=hashlib.sha256(content).hexdigest(), absolute=Path(given.path).is_absolute())
        seen.append(item)
    return {"inputs": seen, "tag": data.get("tag")}


@job_type("after.file")
def file(data, ctx):
    """A file result, for a job that follows it to read."""
    _wait_for(data.get("gate"), ctx)
    return FileOutput(data.get("name", "report.txt"), "text/plain", data.get("text", "hello").encode())


@job_type("after.fail")
def fail(data, ctx):
    """Fails for good once `gate` exists."""
    _wait_for(data.get("gate"), ctx)
    raise PermanentError("the parent broke on purpose")
