"""A job type that does nothing, to measure the service's own overhead per job."""
from offload.workers.registry import job_type


@job_type("bench.noop")
def noop(data, ctx):
    return None
