"""Group commit: publish finished downloads and record them ready, many at a time."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..manifest import Manifest
from ..store import Partial, Store

#: a sealed temp, its sha256 and the path to link it at
Publish = tuple[Partial, str, str]


@dataclass
class _Commit:
    publish: Publish | None
    file_id: str
    event: dict[str, Any]
    fields: dict[str, Any]
    done: asyncio.Future[None]


class GroupCommit:
    """Publish finished downloads and record them ready, many files at a time.

    Each fsync ends in a disk cache flush, and a small file needs three (its bytes,
    the objects/ directory, the destination directory): for thousands of small files
    the flushes, not the network, set the pace. A finished download waits here
    while the flusher links every file that finished meanwhile after one syncfs,
    and records them ready in one SQLite transaction after the next syncfs
    (Store.sync_then_link). Where syncfs is missing, each file was published on its
    own and only the records are grouped.
    """

    def __init__(self, manifest: Manifest, store: Store, io: ThreadPoolExecutor) -> None:
        self.manifest = manifest
        self.store = store
        self._io = io
        self._queue: list[_Commit] = []
        self._flusher: asyncio.Task[None] | None = None

    async def commit(self, publish: Publish | None, file_id: str,
                     event: dict[str, Any], fields: dict[str, Any]) -> None:
        """Publish (part, sha, rel) if given, then record; raises what stopped this file."""
        item = _Commit(publish, file_id, event, fields,
                       asyncio.get_running_loop().create_future())
        # Mark an outcome as seen even when its waiter was cancelled (no asyncio warning).
        item.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append(item)
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())
        # A cancelled waiter does not stop the flush: the file is published, and its
        # record lands with the rest of the batch.
        await asyncio.shield(item.done)

    async def drain(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        linked: list[_Commit] = []  # linked; durable after the next syncfs
        try:
            while self._queue or linked:
                batch, self._queue = self._queue, []
                linked = await self._one_round(batch, linked)
        finally:
            self._flusher = None

    async def _one_round(self, batch: list[_Commit], linked: list[_Commit]) -> list[_Commit]:
        """Link `batch`'s files after a syncfs that also makes `linked` durable, record
        `linked` (and `batch`'s record-only items) ready; returns what this round linked."""
        todo = [c for c in batch if c.publish is not None]
        try:
            errors = await asyncio.get_running_loop().run_in_executor(
                self._io, self.store.sync_then_link, [c.publish for c in todo if c.publish],
            ) if todo or linked else []
            ready = linked + [c for c in batch if c.publish is None]
            self.manifest.record_many([(c.file_id, c.event, c.fields) for c in ready])
        except Exception as e:  # noqa: BLE001 - handed to every waiter it concerns
            for c in linked + batch:
                c.done.set_exception(e)
            return []
        for c in ready:
            c.done.set_result(None)
        now_linked = []
        for c, err in zip(todo, errors, strict=True):
            if err is None:
                now_linked.append(c)
            else:
                c.done.set_exception(err)
        return now_linked
