"""What a handler gets besides its data: progress reporting and cancellation checks."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from offload.workers.errors import Cancelled


class Context:
    """Passed to every handler as `ctx`.

    `ctx.progress(percent, message)` reports progress (0..100, never decreasing within an
    attempt; lower values are raised to the last one). It is cheap to call often: calls that
    change nothing visible are dropped, the rest are coalesced on the way to the clients.
    It raises `Cancelled` once the job was cancelled or timed out, so a handler that reports
    progress stops cooperatively; one that never does is stopped by force.
    """

    __slots__ = ("job_id", "attempt", "settings", "_send", "_is_cancelled", "_percent", "_message")

    def __init__(
        self,
        job_id: str,
        attempt: int,
        settings: Mapping[str, Any],
        send: Callable[[int, str | None], None],
        is_cancelled: Callable[[], bool] = lambda: False,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.settings = settings
        self._send = send
        self._is_cancelled = is_cancelled
        self._percent = 0
        self._message: str | None = None

    @property
    def cancelled(self) -> bool:
        return self._is_cancelled()

    def check_cancelled(self) -> None:
        if self._is_cancelled():
            raise Cancelled(self.job_id)

    def progress(self, percent: float, message: str | None = None) -> None:
        self.check_cancelled()
        value = max(self._percent, min(100, int(percent)))
        if value == self._percent and (message is None or message == self._message):
            return
        self._percent = value
        if message is not None:
            self._message = message
        self._send(value, self._message)
