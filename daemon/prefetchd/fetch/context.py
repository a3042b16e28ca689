"""What one download is given: the parts all downloads share, and nothing of the engine.

The engine builds one `DownloadContext` and hands it to each `Download`
(download.py), as rclone's per-transfer copy gets its source, destination and
options, not the code that started it. What stays the engine's own (single flight,
cancelling, reload) a download cannot reach; what it shares with other downloads it
reaches through owned APIs (the partial keys through `Partials`, never the set).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

from ..config import Settings
from ..log import get_logger
from ..manifest import Manifest
from ..resolve import Resolver, Source
from ..store import Partial, Store
from .commit import GroupCommit
from .ledger import Ledger, Outcome
from .pools import Pools
from .space import SpaceReserve

log = get_logger("prefetchd.fetch")

Progress = Callable[[str, int, int | None], None]
# (file_id, name, total, offset): an attempt starts streaming, `offset` bytes already
# there (a resume), so a watcher neither counts those as speed nor guesses the name.
Started = Callable[[str, str | None, int | None, int], None]


class Transfer(Protocol):
    """What the fleet tier drives of a download (a `Download` is one)."""

    file_id: str
    ctx: DownloadContext
    #: called with the temp file and the expected total after each write to it (the
    #: fleet's cache upload follows the bytes); None when nobody follows
    on_written: Callable[[Partial, int | None], None] | None

    async def from_origin(self, src: Source) -> Outcome: ...

    async def retrying(self, src: Source, *, final: bool = True) -> Outcome: ...


class FleetTier(Protocol):
    """Where a download's bytes come from in a fleet (prefetchd.fleet.Tier): the fetch
    engine knows only this much of it. Its `fetch` may raise Deferred."""

    async def fetch(self, dl: Transfer, src: Source) -> Outcome: ...


class Deferred(Exception):
    """A hand-off, not an error: another host of the fleet is downloading this file,
    and the fleet tier has already deferred the entry (it stays queued, with a note,
    and is looked at again later). Not a PrefetchError, so no handler of errors
    records it as a failure, writes an event or sends it to a client; the daemon's
    fetch loop catches it. Carries the file_id, the reason (its message) and, when
    known, in how many seconds the entry is due again (`due_in`: the daemon wakes
    then instead of at its next look at timers)."""

    def __init__(self, message: str, *, file_id: str, due_in: float | None = None) -> None:
        super().__init__(message)
        self.file_id = file_id
        self.due_in = due_in


class Partials:
    """The keys with partial downloads in tmp/, listed once (a new file needs no
    listing): downloads say which they took over, kept or removed; nobody else
    changes the set."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._keys = store.partial_keys()

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def kept(self, key: str) -> None:
        """An attempt ended with bytes kept for a resume."""
        self._keys.add(key)

    def taken(self, key: str) -> None:
        """An attempt took the key's partial over (`kept` again if it keeps bytes)."""
        self._keys.discard(key)

    def remove_held(self, key: str) -> None:
        """Remove the key's partials; the caller holds the key's lock."""
        self._store.discard_partials(key)
        self._keys.discard(key)

    def drop(self, key: str) -> None:
        """The entry became ready without downloading: no resume will want its partials
        (a killed download's .part and .meta), so they go now, not at the next start or
        reap. Skipped while another process holds the key: it is downloading, and its
        own publish removes its temp."""
        if not self._store.lock_key(key):
            return
        try:
            removed = self._store.discard_partials(key)
        finally:
            self._store.unlock_key(key)
        self._keys.discard(key)
        if removed:
            log.info("partials_removed", key=key, files=removed, reason="entry is ready")


@dataclass(frozen=True)
class DownloadContext:
    """Everything a `Download` uses beyond its own row: one per engine, shared by all
    its downloads (the fleet tier is set after the engine is built: `replace`)."""

    pools: Pools  # settings, resolver, providers, their limits, backoff (reload: in place)
    manifest: Manifest  # the row again after another process's lock; `downloading`
    store: Store  # the file's lock, its partial, publish and link
    partials: Partials  # which keys have partials to resume
    global_limit: asyncio.Semaphore  # downloads under way at once (download.concurrency)
    io: Executor  # worker threads for hashing, writing and sealing
    commits: GroupCommit  # publishes sealed files and records them ready, in groups
    ledger: Ledger  # records ready and failed files; the metrics feed (`observe`)
    space: SpaceReserve  # the free-space reserve and the way for unknown lengths
    fleet: FleetTier | None = None  # the Storage cache and claims, with [fleet]
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep  # the retry wait (tests, get)
    progress: Progress | None = None  # bytes received, for watchers
    started: Started | None = None  # an attempt starts streaming, for watchers
    on_no_space: Callable[[int], None] | None = None  # asks for a cleanup pass

    @property
    def settings(self) -> Settings:
        return self.pools.settings

    @property
    def resolver(self) -> Resolver:
        return self.pools.resolver
