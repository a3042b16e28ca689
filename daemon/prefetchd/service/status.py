"""What the daemon reports while it runs: systemd's STATUS= line, the metrics' gauges,
and the watchdog pings (apart from service.py, which wires the parts)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from ..manifest import Manifest
from ..manifest.threads import JobThreads
from ..ops.status import queue_length, store_totals
from ..records import State
from ..runtime import sd_notify
from ..shapes import StoreTotals
from ..store import Store
from .workers import Workers

if TYPE_CHECKING:
    from .metrics import Metrics

STATUS_EVERY = 5.0    # how often STATUS= and the metrics' gauges are brought up to date
STORE_TOTALS_EVERY = 60.0  # how often the metrics walk the store's objects


class StatusLoop:
    """STATUS= when it changes, and the metrics' gauges, every STATUS_EVERY seconds.

    Counting costs O(entries) (a walk of the state index; the store's totals, a walk of
    every object), so an idle daemon counts nothing: the counts are taken again only
    when the manifest changed since they were last taken (Manifest.change_mark)."""

    def __init__(self, manifest: Manifest, jobs: JobThreads, workers: Workers,  # noqa: PLR0913
                 metrics: Metrics | None, store: Store) -> None:
        self.manifest = manifest
        self.jobs = jobs
        self.workers = workers
        self.metrics = metrics
        self.store = store
        self._line = ""
        self._counted: tuple[int, int] | None = None  # the change mark counts were taken at
        self._walked: tuple[int, int] | None = None   # ... and the store's totals

    async def run(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(STATUS_EVERY)

    async def tick(self) -> None:
        """One round: count and report, if anything changed."""
        mark = self.manifest.change_mark()
        totals_behind = self.metrics is not None and mark != self._walked
        if mark == self._counted and not totals_behind:
            return
        self._counted = mark
        counts = self.manifest.state_counts()
        line = (f"STATUS={len(self.workers.active)} downloading, "
                f"{counts[State.QUEUED]} queued, {counts[State.RETRYING]} retrying, "
                f"{counts[State.WAITING_SPACE]} waiting for space, "
                f"{counts[State.READY]} ready, {counts[State.FAILED]} failed")
        if line != self._line:
            sd_notify(line)
            self._line = line
        if self.metrics:
            walk = totals_behind and time.monotonic() - self._totals_at >= STORE_TOTALS_EVERY
            backlog, walked = await self.jobs.run(self._gauges, walk)
            if walked is not None:
                self._totals, self._totals_at, self._walked = walked, time.monotonic(), mark
            self.metrics.update(counts, queue_length(counts), backlog, self._totals,
                                len(self.workers.active))

    _totals: StoreTotals | None = None
    _totals_at = float("-inf")

    def _gauges(self, manifest: Manifest, walk_store: bool) -> tuple[int, StoreTotals | None]:
        """The outbox backlog, and (once a minute, not every few seconds) the store's
        totals: walking every object is a command's cost, not a timer's."""
        return manifest.outbox_backlog(), store_totals(self.store) if walk_store else None


async def watchdog(interval: float) -> None:
    # Sent from the event loop itself: if the loop hangs, the pings stop.
    while True:
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval)
