"""Retention: finished jobs are deleted once they are older than their status's age
(`[retention] completed`, `failed`, `cancelled`), with their result files; result files can
go sooner (`[retention] results`: the job stays, its download answers 410 Gone).

A pass runs every `[retention] interval` on the service's clock (`models.Clock`, injected by
tests, which call `run_once()` themselves). It never holds the store for long: each batch of
`[retention] batch` jobs is one transaction of its own in the store's writer queue, and the
pass gives way between two batches for as long as the batch took, so submissions and claims
go on at (at least) half the store's speed during a cleanup of any size. Files are deleted
after their rows are committed, in a thread; one already gone is fine. A job's uploaded
input file (`<job id>-input`, `registry.input_name`) goes with the job, and with the result
files of a completed one (it cannot run again): one unlink tried per job, found or not. Then the space the
rows held is given back to the file system (`Store.compact`), a few pages at a time.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from offload.service.config import RetentionConfig
from offload.service.errors import OffloadError
from offload.service.models import Clock, JobStatus, iso
from offload.service.store import Store
from offload.workers.registry import input_name

log = logging.getLogger("offload.retention")

#: The finished statuses and their `[retention]` keys.
AGES = {JobStatus.COMPLETED: "completed", JobStatus.FAILED: "failed", JobStatus.CANCELLED: "cancelled"}
#: Pages given back per step of `compact` (~0.1 ms each, while the writer waits).
COMPACT_PAGES = 256


@dataclass
class Cleaned:
    """What retention deleted: `jobs` per status and `results` (result files of jobs that stay)."""

    jobs: dict[str, int] = field(default_factory=lambda: {key: 0 for key in AGES.values()})
    results: int = 0
    files: int = 0

    def add(self, other: Cleaned) -> None:
        for key, n in other.jobs.items():
            self.jobs[key] += n
        self.results += other.results
        self.files += other.files

    def to_wire(self) -> dict[str, object]:
        return {"jobs": dict(self.jobs), "results": self.results, "files": self.files}


def result_path(results: Path, job_id: str, name: str) -> Path | None:
    """Where a job's result file is, if its stored name is one the service made
    (`<job id>-<attempt><ext>`, no path in it); anything else is never touched."""
    if not name.startswith(f"{job_id}-") or "/" in name or "\\" in name or "\x00" in name:
        return None
    return results / name


def _unlink(paths: list[Path]) -> int:
    removed = 0
    for path in paths:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:  # deleted by hand, or by a pass that stopped half way
            pass
        except OSError as exc:
            log.warning("could not delete result file %s: %s", path, exc.strerror or exc)
    return removed


class Retention:
    """The cleanup task. `stats()` is what an operator reads (the statistics use it)."""

    def __init__(self, config: RetentionConfig, store: Store, clock: Clock, results: Path) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.results = results
        self.ages = {status: config.ms(key) for status, key in AGES.items()}
        self.results_ttl = config.ms("results")
        self.interval_s = (config.ms("interval") or 300_000) / 1000
        #: Since start, and in the last pass.
        self.total = Cleaned()
        self.last = Cleaned()
        self.last_run: int | None = None
        self.runs = 0
        #: Where the walk over completed jobs' result files stopped (`Store.result_files`).
        self._files_after: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._stopping = False

    @property
    def enabled(self) -> bool:
        return any(age is not None for age in self.ages.values()) or self.results_ttl is not None

    def stats(self) -> dict[str, object]:
        """Deleted since start (`total`) and in the last pass (`last`), when that ran."""
        return {"total": self.total.to_wire(), "last": self.last.to_wire(), "lastRun": iso(self.last_run),
                "runs": self.runs}

    def result_expired_at(self, completed_at: int | None) -> int | None:
        """When a completed job's result file expires (`[retention] results`), if it does."""
        if self.results_ttl is None or completed_at is None:
            return None
        return completed_at + self.results_ttl

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="offload-retention")

    async def stop(self) -> None:
        """Stop after the batch in flight, if any: a batch cancelled half way could commit its
        deletions and leave its files behind."""
        self._stopping = True
        if self._task is not None:
            if not self._lock.locked():  # between two passes: nothing to finish
                self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.interval_s)
            try:
                await self.run_once()
            except OffloadError as exc:  # the store is unavailable for now: the next pass goes on
                log.warning("retention pass stopped: %s", exc.message)
            except Exception:
                log.exception("retention pass failed")

    async def run_once(self) -> Cleaned:
        """One pass at the clock's time now: delete what is due, expire result files, give
        the space back. Returns what it deleted (also added to `total`)."""
        async with self._lock, self.store.alone("retention") as mine:
            now = self.clock.now()
            cleaned = Cleaned()
            if not mine:  # another node sharing the database is at it: its pass does this one's work
                return cleaned
            for status, age in self.ages.items():
                if age is not None and not self._stopping:
                    await self._purge(status, now - age, cleaned)
            if self.results_ttl is not None and not self._stopping:
                await self._expire_results(now - self.results_ttl, cleaned)
            if sum(cleaned.jobs.values()):
                await self._compact()
            self.last, self.last_run = cleaned, now
            self.total.add(cleaned)
            self.runs += 1
            if sum(cleaned.jobs.values()) or cleaned.results:
                log.info("retention: deleted %s jobs and %d result files of jobs kept",
                         ", ".join(f"{n} {key}" for key, n in cleaned.jobs.items()), cleaned.results)
            return cleaned

    async def _purge(self, status: JobStatus, before: int, cleaned: Cleaned) -> None:
        while True:
            started = time.monotonic()
            purged = await self.store.purge_finished(status, before, self.config.batch)
            cleaned.jobs[AGES[status]] += len(purged)
            paths = [p for job in purged if job.file
                     for p in [result_path(self.results, job.job_id, job.file)] if p is not None]
            inputs = [self.results / input_name(job.job_id) for job in purged]
            if paths or inputs:
                cleaned.files += await asyncio.to_thread(_unlink, paths + inputs)
            if len(purged) < self.config.batch or self._stopping:
                return
            await self._give_way(started)

    async def _expire_results(self, before: int, cleaned: Cleaned) -> None:
        while True:  # a read walk (the rows stay), from where the last pass stopped
            started, after = time.monotonic(), self._files_after
            files, self._files_after = await self.store.result_files(before, limit=self.config.batch, after=after)
            paths = [p for f in files for p in [result_path(self.results, f.job_id, f.file)] if p is not None]
            inputs = [self.results / input_name(f.job_id) for f in files]
            if paths:
                removed = await asyncio.to_thread(_unlink, paths)
                cleaned.results += removed
                cleaned.files += removed + await asyncio.to_thread(_unlink, inputs)
            if self._files_after == after or self._stopping:
                return
            await self._give_way(started)

    async def _compact(self) -> None:
        left = None
        while True:
            started, before = time.monotonic(), left
            left = await self.store.compact(COMPACT_PAGES)
            if not left or left == before or self._stopping:  # done, or stuck: never loop on the spot
                return
            await self._give_way(started)

    @staticmethod
    async def _give_way(started: float) -> None:
        """Let the other writes go for as long as the last batch took (at most 50 ms)."""
        await asyncio.sleep(min(0.05, time.monotonic() - started))
