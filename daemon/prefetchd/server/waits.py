"""`get` through the socket: waiting on the daemon's own workers, not on a second engine.

Every `get` in progress is a `GetWait`; `Waits` indexes them by file_id and runs one
task for all of them. The daemon tells it what moved: a worker finished an entry
(`touch`), another connection committed to the manifest (`changed`), bytes arrived
(`progress`, `started`, from the engine). Only the ids so named are read again, in
batches, so a `get` of 10,000 ids costs no task per id and no read per id per tick;
a slow sweep over every id waited on catches what no hook reports (the inbox's own
writes). When an id's wait is over is decided by ops.get.Settle, as for a `get` that
polls from another process.
"""

from __future__ import annotations

import asyncio
import heapq
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..manifest import Manifest
from ..manifest.claims import claim_view
from ..ops.get import Settle
from ..ops.results import GetResult, Wait

SWEEP_EVERY = 5.0  # seconds between looks at every id waited on (changes no hook reports)
SWEEP_MIN = 0.5    # a manifest change by another connection re-reads them at most this often


@dataclass(frozen=True)
class Stream:
    """A download in flight, as its attempt began: its name, size and resume offset."""

    name: str | None
    total: int | None
    offset: int


@dataclass(eq=False)
class GetWait:
    """One `get`: its ids (unique, in order), what settled, and what moved since the
    handler last wrote (progress per id, notices). `changed` wakes the handler."""

    ids: list[str]
    settle: Settle = field(init=False)
    results: dict[str, GetResult] = field(default_factory=dict)
    moved: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    bases: dict[str, int] = field(default_factory=dict)  # resumed_from per id
    notices: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    aborted: bool = False  # the daemon is stopping: end the stream without a result
    holder: str | None = None  # whose claims the results are (the peer's)

    @classmethod
    def of(cls, ids: list[str], root: Path, patience: float,  # noqa: PLR0913
           timeout: float | None, holder: str | None = None) -> GetWait:
        wait = cls(ids, holder=holder)
        wait.settle = Settle(root, patience, Wait(timeout, notice=wait.tell))
        return wait

    @property
    def done(self) -> bool:
        return len(self.results) == len(self.ids)

    def tell(self, message: str) -> None:
        self.notices.append(message)
        self.changed.set()


class Waits:
    """The `get`s in progress, by file_id, and the one task that settles them."""

    def __init__(self, manifest: Manifest, root: Path) -> None:
        self.manifest = manifest
        self.root = root
        self.streams: dict[str, Stream] = {}  # downloads in flight (at most concurrency)
        self._by_id: dict[str, set[GetWait]] = {}
        self._dirty: set[str] = set()
        self._sweep_wanted = False
        self._expiries: list[tuple[float, str]] = []  # (when, file_id): patience runs out
        self._wake = asyncio.Event()

    # -- what the daemon tells ------------------------------------------------------------

    def started(self, file_id: str, name: str | None, total: int | None, offset: int) -> None:
        """An attempt begins streaming (the engine's `started` hook)."""
        self.streams[file_id] = Stream(name, total, offset)
        for w in self._by_id.get(file_id, ()):
            w.bases[file_id] = offset

    def progress(self, file_id: str, done: int, total: int | None) -> None:
        """Bytes arrived (the engine's `progress` hook): one dict look-up when no
        `get` waits on the id."""
        for w in self._by_id.get(file_id, ()):
            w.bases.setdefault(file_id, done)  # joined mid-stream: count from here
            w.moved[file_id] = (done, total)
            w.changed.set()

    def touch(self, file_id: str) -> None:
        """A worker is done with an entry (or the API changed it): read it again."""
        self.streams.pop(file_id, None)
        if file_id in self._by_id:
            self._dirty.add(file_id)
            self._wake.set()

    def changed(self) -> None:
        """Another connection committed: any id waited on may have moved."""
        if self._by_id:
            self._sweep_wanted = True
            self._wake.set()

    # -- the gets -------------------------------------------------------------------------

    def add(self, wait: GetWait) -> None:
        """Index a wait; its caller checks its ids once (`check`) right away."""
        for fid in wait.ids:
            self._by_id.setdefault(fid, set()).add(wait)

    def remove(self, wait: GetWait) -> None:
        for fid in wait.ids:
            waits = self._by_id.get(fid)
            if waits is not None:
                waits.discard(wait)
                if not waits:
                    del self._by_id[fid]

    def close(self) -> None:
        """The daemon stops: every stream ends without a result line."""
        for waits in self._by_id.values():
            for w in waits:
                w.aborted = True
                w.changed.set()

    # -- the task -------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last_sweep = loop.time()
        while True:
            now = loop.time()
            timers = [last_sweep + SWEEP_EVERY]
            if self._sweep_wanted:
                timers.append(last_sweep + SWEEP_MIN)
            if self._expiries:
                timers.append(self._expiries[0][0])
            if not self._dirty:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), max(0.0, min(timers) - now))
                except TimeoutError:
                    pass
            now = loop.time()
            ids = self._due(now)
            if (self._sweep_wanted and now - last_sweep >= SWEEP_MIN) or (
                    now - last_sweep >= SWEEP_EVERY):
                ids = set(self._by_id)
                self._sweep_wanted, last_sweep = False, now
            self._dirty.clear()
            if ids:
                self.check(ids, now)

    def _due(self, now: float) -> set[str]:
        """The touched ids, and those whose patience ran out."""
        ids = self._dirty & self._by_id.keys()
        while self._expiries and self._expiries[0][0] <= now:
            fid = heapq.heappop(self._expiries)[1]
            if fid in self._by_id:
                ids.add(fid)
        return ids

    def check(self, ids: set[str], now: float) -> None:
        """Read these entries (in batches) and settle the waits they end."""
        entries = self.manifest.rows_for(ids)
        claims = {(c.file_id, c.holder): c
                  for cs in self.manifest.claims_for(ids).values() for c in cs}
        for fid in ids:
            e = entries.get(fid)
            for w in list(self._by_id.get(fid, ())):
                was_stuck = fid in w.settle.stuck_since
                seen = e if e is None or w.holder is None else claim_view(
                    e, claims.get((fid, w.holder)))
                result = w.settle.look(fid, seen, now)
                if result is None:
                    expires = w.settle.expires(fid)
                    if expires is not None and not was_stuck:
                        heapq.heappush(self._expiries, (expires, fid))
                    continue
                w.results[fid] = replace(result, state=seen.state if seen else None)
                w.changed.set()
                self._by_id[fid].discard(w)
            if not self._by_id.get(fid, True):
                del self._by_id[fid]
