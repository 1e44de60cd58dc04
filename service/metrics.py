"""`GET /metrics`: the service in the Prometheus text format, written by prometheus-client.

Each application has its own `CollectorRegistry` (never the library's global default one:
tests build many applications in one process). Job counters and the queue-wait and
run-time histograms are fed by the store's change stream, read the same way as the
statistics (`stats.observe`); the store's commits by its `on_commit` hook. Gauges are read
when Prometheus scrapes: the queue depth from the store (the statistics' cached read of
the partial pending index), the workers, their memory and the WebSockets from memory.

Who may scrape: operators on the main port (`[auth] admins` with tokens; anyone in
single-user mode, which listens on loopback only), or anyone reaching the optional
token-free listener `[metrics] listen`, which binds loopback addresses only.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from offload.service.models import Job, Priority
from offload.service.stats import STARTED, ProcessProbe, Statistics

#: Seconds: from a few milliseconds (no-op jobs) to the default five-minute timeout.
JOB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Seconds: a commit takes tens of microseconds (NORMAL) to milliseconds (FULL, a slow disk).
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class Metrics:
    def __init__(self, stats: Statistics) -> None:
        self.stats = stats
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs = Counter("offload_jobs", "Jobs by type and outcome: completed, failed, cancelled, or retried "
                            "(an attempt failed and the job was queued again).", ["type", "outcome"],
                            registry=self.registry)
        self.queue_wait = Histogram("offload_job_queue_wait_seconds", "Time from a job being due to its attempt "
                                    "starting, by type.", ["type"], buckets=JOB_BUCKETS, registry=self.registry)
        self.run_time = Histogram("offload_job_run_seconds", "Run time of a job's last attempt (completed or "
                                  "failed), by type.", ["type"], buckets=JOB_BUCKETS, registry=self.registry)
        self.commit_latency = Histogram("offload_store_commit_seconds", "Time of one store write batch, "
                                        "from its start to its commit.", buckets=COMMIT_BUCKETS,
                                        registry=self.registry)
        self.batch_size = Histogram("offload_store_batch_writes", "Writes (transitions, inserts, progress) "
                                    "committed together in one batch.", buckets=BATCH_BUCKETS, registry=self.registry)
        self._children: dict[tuple[Any, ...], Any] = {}
        self._gauges = _Gauges(stats)
        self.registry.register(self._gauges)

    def observed(self, change: Job, what: str, ms: int | None) -> None:
        """A change as `stats.observe` read it (`Statistics.observers`): counted once there."""
        if what is STARTED:
            assert ms is not None
            self._child(self.queue_wait, change.type).observe(ms / 1000)
            return
        self._child(self.jobs, change.type, what).inc()
        if ms is not None:
            self._child(self.run_time, change.type).observe(ms / 1000)

    def _child(self, metric: Any, *labels: str) -> Any:
        """The labelled series, looked up once per label set (`labels()` costs more than the count)."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def on_commit(self, seconds: float, writes: int) -> None:
        self.commit_latency.observe(seconds)
        self.batch_size.observe(writes)

    async def render(self) -> bytes:
        """The text exposition, after reading what only the store knows (the queue depth)."""
        self._gauges.unfinished = await self.stats.unfinished(None)
        return generate_latest(self.registry)


class _Gauges:
    """What is read at scrape time rather than counted as it happens."""

    def __init__(self, stats: Statistics) -> None:
        self.stats = stats
        self.probe = ProcessProbe()
        self.unfinished: dict[str, Any] | None = None

    def describe(self) -> Iterable[Metric]:
        return []  # the families vary with the pool's size: nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        stats = self.stats
        if self.unfinished is not None:
            depth = GaugeMetricFamily("offload_queue_depth", "Pending jobs due now, by priority.", labels=["priority"])
            for label, n in self.unfinished["queue"].items():
                depth.add_metric([label], n)
            yield depth
            delayed = GaugeMetricFamily("offload_jobs_delayed", "Pending jobs not yet due (runAt, retry backoff).")
            delayed.add_metric([], self.unfinished["delayed"])
            yield delayed
            running = GaugeMetricFamily("offload_jobs_running", "Running jobs, by priority.", labels=["priority"])
            for p in Priority:
                running.add_metric([p.label], self.unfinished["byPriority"][p.label]["running"])
            yield running
        scheduler = stats.scheduler
        if scheduler is not None:
            # Counters and worker gauges are this node's (sum them over the nodes); the
            # queue gauges above are the shared database's (the same on every node).
            node = GaugeMetricFamily("offload_node_info", "This node: its name (the lease owner of the jobs it "
                                     "runs) and its store's backend.", labels=["node", "store"])
            node.add_metric([scheduler.node, scheduler.store.backend], 1)
            yield node
            pool = scheduler.pool
            described = pool.describe()
            yield _gauge("offload_workers_alive", "Worker processes alive.", described["processes"])
            yield _gauge("offload_workers_busy", "Worker processes running a job.", described["busy"])
            yield _gauge("offload_workers_max", "The most worker processes ([workers] processes).",
                         described["maxProcesses"])
            restarts = CounterMetricFamily("offload_worker_restarts", "Worker processes that ended (crashed, "
                                           "killed to stop a job) and were replaced.")
            restarts.add_metric([], pool.replaced)
            yield restarts
            live = pool.processes()
            usage = self.probe.read([pid for _, pid, _ in live])
            memory = GaugeMetricFamily("offload_worker_memory_bytes", "Resident memory of each worker process, by "
                                       "slot.", labels=["slot"])
            for index, pid, _ in live:
                read = usage.get(pid)
                if read is not None:
                    memory.add_metric([str(index)], read[1])
            yield memory
        yield _gauge("offload_websocket_connections", "Open WebSocket connections.", stats.connections())
        counts = stats.hub.counts
        for name, text, value in (("sent", "Messages written to WebSocket clients.", counts.sent),
                                  ("coalesced", "Progress events replaced by a newer one before they were sent.",
                                   counts.coalesced),
                                  ("dropped", "Events a WebSocket refused or discarded: its client fell behind.",
                                   counts.dropped)):
            family = CounterMetricFamily(f"offload_websocket_events_{name}", text)
            family.add_metric([], value)
            yield family


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def metrics_response(body: bytes) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
