"""Group commit: publish finished downloads and record them ready, many at a time."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..links import wanted_links
from ..log import get_logger
from ..manifest import Manifest
from ..records import NewEvent, State
from ..store import OpenDirs, Partial, Store

log = get_logger("prefetchd.fetch")

#: a sealed temp, its sha256 and the path to link it at
Publish = tuple[Partial, str, str]


@dataclass
class _Commit:
    publish: Publish | None
    file_id: str
    event: NewEvent
    fields: dict[str, Any]
    done: asyncio.Future[bool]
    held: int = 0  # bytes of its body held in memory until the committer writes them


#: At most this many bytes of small bodies wait in memory for the committer (see
#: may_hold); past it a body is written to its temp on the loop, as before.
HOLD_MAX = 8 << 20


class GroupCommit:
    """Publish finished downloads and record them ready, many files at a time
    (classic group commit).

    Each fsync ends in a disk cache flush, and a small file needs three (its bytes,
    the objects/ directory, the destination directory): for thousands of small files
    the flushes, not the network, set the pace. A download hands its sealed temp here
    and gives its worker slot back (Download.publish), so the next download starts
    while this one waits. One flusher runs rounds back to back; each round takes
    everything that arrived during the previous one (so a group is as large as what
    arrived during one flush), makes its bytes durable with one syncfs and links it,
    and records the previous round's group ready in one SQLite transaction: that
    round's syncfs made its directories durable. So n groups cost n+1 syncfs, and
    nothing is recorded (or reported) ready before its group is durable
    (Store.sync_then_link). Where syncfs is missing, each file was published on its
    own and only the records are grouped.

    `groups` counts the rounds that linked files, `sizes` their sizes (the last
    1,000), `closings` the rounds that linked nothing and only made the last group
    durable (one ends each run of the flusher; another comes whenever the queue was
    empty as a round began): n groups cost n + closings syncfs. What tests and the
    benchmark read.
    """

    def __init__(self, manifest: Manifest, store: Store, io: ThreadPoolExecutor) -> None:
        self.manifest = manifest
        self.store = store
        self._io = io
        self._queue: list[_Commit] = []
        self._flusher: asyncio.Task[None] | None = None
        self.groups = 0
        self.closings = 0
        self.sizes: list[int] = []
        self.held_bytes = 0  # bodies queued in memory (Partial.hold), not yet written

    def may_hold(self, size: int) -> bool:
        """Whether a small body of `size` bytes may wait in memory for its group (see
        Partial.hold): while the committer is behind (a slow disk, a fast network),
        what waits in memory stays under HOLD_MAX and the rest waits on disk."""
        return self.held_bytes + size <= HOLD_MAX

    async def commit(self, publish: Publish | None, file_id: str,
                     event: NewEvent, fields: dict[str, Any]) -> bool:
        """Publish (part, sha, rel) if given, then record; raises what stopped this file.

        Returns whether the file's links were found complete when it was recorded (its
        claims name only the place it was published at): then there is no link to sync."""
        held = publish[0].held if publish is not None else None
        item = _Commit(publish, file_id, event, fields,
                       asyncio.get_running_loop().create_future(),
                       len(held) if held is not None else 0)
        self.held_bytes += item.held
        item.done.add_done_callback(_seen)
        self._queue.append(item)
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())
        # A cancelled waiter cancels only its future, not the flush: the file is
        # published, and its record lands with the rest of the batch (the flusher
        # tells only the futures still waited on: _tell).
        return await item.done

    async def drain(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        linked: list[_Commit] = []  # linked; durable after the next syncfs
        dirs = self.store.link_dirs()  # opened once for this run of rounds
        try:
            while self._queue or linked:
                batch, self._queue = self._queue, []
                linked = await self._one_round(batch, linked, dirs)
        finally:
            dirs.close()
            self._flusher = None

    async def _one_round(self, batch: list[_Commit], linked: list[_Commit],
                         dirs: OpenDirs) -> list[_Commit]:
        """Link `batch`'s files after a syncfs that also makes `linked` durable, record
        `linked` (and `batch`'s record-only items) ready; returns what this round linked."""
        todo = [c for c in batch if c.publish is not None]
        if todo:
            self.groups += 1
            self.sizes = [*self.sizes[-999:], len(todo)]
        elif linked:
            self.closings += 1
        try:
            try:
                errors = await asyncio.get_running_loop().run_in_executor(
                    self._io, self.store.sync_then_link,
                    [c.publish for c in todo if c.publish], dirs) if todo or linked else []
            finally:  # written (or dropped): no longer in memory
                self.held_bytes -= sum(c.held for c in todo)
            ready = linked + [c for c in batch if c.publish is None]
            if ready:  # one transaction records the group
                self.manifest.record_many([(c.file_id, c.event, c.fields) for c in ready])
        except Exception as e:  # noqa: BLE001 - handed to every waiter it concerns
            for c in linked + batch:
                _tell(c.done, error=e)
            return []
        done = self._settled(ready)
        for c in ready:
            _tell(c.done, c.file_id in done)
        now_linked = []
        for c, err in zip(todo, errors, strict=True):
            if err is None:
                now_linked.append(c)
            else:
                _tell(c.done, error=err)
        return now_linked

    def _settled(self, ready: list[_Commit]) -> set[str]:
        """Those of `ready` whose links are complete as recorded (its claims want it
        linked only where it was published, links.wanted_links): one read of the
        group's claims' (dest, error) instead of a row and the claims for each file
        (links.sync). Also records the directories made for the group's links."""
        placed = {c.file_id: c.fields for c in ready
                  if c.fields.get("state") == State.READY and c.fields.get("path")}
        if not placed:
            return set()
        try:
            places = self.manifest.claim_places(placed)
            self.manifest.add_made_dirs(self.store.take_made_dirs())
        except Exception as e:  # noqa: BLE001 - recorded ready: each file syncs its links
            log.warning("group_links_unread", error=str(e), files=len(placed))
            return set()
        return {fid for fid, fields in placed.items()
                if wanted_links(fid, fields.get("name"), places.get(fid, [])) == [fields["path"]]}


def _seen(done: asyncio.Future[bool]) -> None:
    """Mark an outcome as seen even when its waiter was cancelled after it was set (no
    "exception was never retrieved" warning)."""
    if not done.cancelled():
        done.exception()


def _tell(done: asyncio.Future[bool], settled: bool = False,
          error: BaseException | None = None) -> None:
    """A file's outcome to its waiter, unless the waiter was cancelled meanwhile."""
    if done.done():
        return
    if error is None:
        done.set_result(settled)
    else:
        done.set_exception(error)
