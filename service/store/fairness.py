"""Sharing the workers between users: which of the due jobs to start next.

Within the best priority that has due jobs, the next job goes to the user with the fewest
jobs running; among those, to the one served least recently; among those (users not yet
served), to the one whose next job has waited longest. So while one user has a backlog of
thousands, another user's new job starts as soon as a slot frees, even with one worker.
Each user's own jobs still start in their order (due time, then submission), and
priorities stay strict: anyone's `high` job goes before anyone's `medium` one.

The backend supplies the figures (running jobs per user, each user's next due jobs of one
priority) and keeps `Served` for as long as it lives; this module only decides, so every
backend shares the rule.
"""
from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping, MutableMapping, Sequence

#: One user's next due jobs of a priority, best first: (due_at, pos) pairs.
Heads = Sequence[Sequence[int]]


class Served:
    """When each user last had a job started, as a counter (no clock: ties are impossible)."""

    def __init__(self, last: Mapping[str, int] | None = None) -> None:
        #: `last`: the state a shared database keeps (PostgreSQL), ticks of its own; the
        #: marks made here count on from the largest of them.
        self.last: dict[str, int] = dict(last or {})
        self._ticks = itertools.count(max(self.last.values(), default=0) + 1)

    def mark(self, owner: str) -> None:
        self.last[owner] = next(self._ticks)
        if len(self.last) > 100_000:  # forget the users served longest ago
            for name, _ in sorted(self.last.items(), key=lambda item: item[1])[:50_000]:
                del self.last[name]


def round_robin(running: MutableMapping[str, int], served: Served, heads: Mapping[str, Heads], limit: int,
                cap: int = 0) -> list[int]:
    """The `pos` of up to `limit` jobs to start, in the order they should start. `running`
    and `served` are updated with the jobs picked, so a caller can go on with the next
    priority. With `cap`, no user gets more than `cap` jobs running at once."""
    picked: list[int] = []
    queue = [(running.get(owner, 0), served.last.get(owner, 0), owned[0][0], owned[0][1], owner, 0)
             for owner, owned in heads.items() if owned and not (cap and running.get(owner, 0) >= cap)]
    heapq.heapify(queue)
    while queue and len(picked) < limit:
        count, _, _, pos, owner, index = heapq.heappop(queue)
        picked.append(pos)
        running[owner] = count + 1
        served.mark(owner)
        if cap and count + 1 >= cap:
            continue
        if index + 1 < len(heads[owner]):
            due_at, next_pos = heads[owner][index + 1]
            heapq.heappush(queue, (count + 1, served.last[owner], due_at, next_pos, owner, index + 1))
    return picked
