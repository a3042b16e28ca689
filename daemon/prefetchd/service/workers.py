"""The daemon's fixed set of download workers, which pull due entries from the manifest.

The daemon's work is bounded whatever the length of the queue: `size` workers each
take one file_id at a time from a small backlog, which is refilled from the
manifest a few entries at a time (`Manifest.due(limit=..., exclude=...)` walks an
index, so a take costs the same with 10 or 100,000 entries queued). A queued entry
costs nothing until a worker takes it; at shutdown only the entries being worked on
are in flight, and the rest simply stay queued in SQLite.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from ..manifest import Manifest

T = TypeVar("T")

log = structlog.get_logger("prefetchd.service.workers")


class Workers:
    """`size` tasks, each running `work(file_id)` for one entry after another."""

    def __init__(self, manifest: Manifest, work: Callable[[str], Awaitable[None]],
                 size: int, backlog: int | None = None) -> None:
        self._manifest = manifest
        self._work = work
        self.size = size
        self._target = backlog if backlog is not None else 2 * size
        self._backlog: deque[str] = deque()
        self.active: set[str] = set()  # being worked on right now
        self._more = asyncio.Event()   # the backlog got entries
        self._low = asyncio.Event()    # the backlog ran low: refill it
        self._closing = False
        self._tasks = [asyncio.ensure_future(self._run()) for _ in range(size)]

    @property
    def claimed(self) -> set[str]:
        return self.active | set(self._backlog)

    def refill(self) -> int:
        """Top the backlog up from the manifest; returns how many entries were added.

        Called by the daemon's loop when the manifest changed, on its timer, and when
        a worker found the backlog low."""
        self._low.clear()
        if self._closing:
            return 0
        room = self._target + self.size - len(self._backlog) - len(self.active)
        if room <= 0:
            return 0
        rows = self._manifest.due(limit=room, exclude=self.claimed)
        for row in rows:
            self._backlog.append(row.file_id)
        if self._backlog:
            self._more.set()
        return len(rows)

    @property
    def wants_refill(self) -> asyncio.Event:
        """Set when the backlog is low and the manifest may have more."""
        return self._low

    async def _run(self) -> None:
        while not self._closing:
            if not self._backlog:
                self._more.clear()
                self._low.set()
                await self._more.wait()
                continue
            file_id = self._backlog.popleft()
            if len(self._backlog) < self.size:
                self._low.set()
            self.active.add(file_id)
            try:
                await self._work(file_id)
            except Exception:  # a worker outlives any one entry's failure: logged, not lost
                log.exception("worker_entry_failed", file_id=file_id)
            finally:
                self.active.discard(file_id)

    async def close(self, grace: float) -> None:
        """Take nothing new; give the entries being worked on `grace` seconds, then
        cancel them (their partials stay for a resume). Backlogged entries stay
        queued in the manifest."""
        self._closing = True
        self._backlog.clear()
        self._more.set()  # idle workers wake up and end
        busy = [t for t in self._tasks if not t.done()]
        if busy:
            done, pending = await asyncio.wait(busy, timeout=grace)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    log.error("worker_failed", error=repr(t.exception()))
