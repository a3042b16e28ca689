"""The engine: what every download shares, and single flight.

It holds the provider pools, the global limit, the worker threads for disk work, the
group commit and the free-space reserve, and hands them to each download as one
`DownloadContext` (context.py); it runs at most one download per file_id in a
process (callers share the result) and, through a byte-range lock in the store, one
per file_id across processes. Each download is a `Download` object (download.py),
which never sees the engine.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from ..config import Settings
from ..errors import PermanentError
from ..log import get_logger
from ..manifest import Manifest
from ..records import Entry
from ..store import Store, key_of
from .commit import GroupCommit
from .context import DownloadContext, FleetTier, Partials, Progress, Started
from .download import Download
from .ledger import Ledger, Observe, Outcome
from .pools import Pools
from .space import SpaceReserve

log = get_logger("prefetchd.fetch")


class Engine:
    """Downloads wanted file_ids; shared by the daemon and by in-process `get`.

    `progress(file_id, received, total)` follows streaming (`started` tells where each
    attempt begins); `on_no_space(bytes)` asks
    for a cleanup pass (0: the size is unknown); `observe(kind, provider, bytes)`
    feeds the metrics; `sleep` and `rng` drive the retry backoff (tests replace them).
    """

    def __init__(  # noqa: PLR0913 - the keywords every caller (daemon, get, tests) passes
        self,
        settings: Settings,
        manifest: Manifest,
        store: Store,
        *,
        progress: Progress | None = None,
        started: Started | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
        on_no_space: Callable[[int], None] | None = None,
        observe: Observe | None = None,
    ) -> None:
        self.manifest = manifest
        self.pools = Pools(settings, rng or random.Random())
        self._inflight: dict[str, asyncio.Task[Outcome]] = {}
        self.global_limit = asyncio.Semaphore(settings.download.concurrency)
        self.io = ThreadPoolExecutor(max_workers=settings.download.concurrency + 1,
                                     thread_name_prefix="prefetchd-io")
        self.commits = GroupCommit(manifest, store, self.io)
        self.space = SpaceReserve(store.root, settings.retention.min_free_bytes)
        self.partials = Partials(store)
        self.context = DownloadContext(
            pools=self.pools, manifest=manifest, store=store, partials=self.partials,
            global_limit=self.global_limit, io=self.io, commits=self.commits,
            ledger=Ledger(manifest, store, observe or (lambda _k, _p, _b, _s=None: None)),
            space=self.space, sleep=sleep, progress=progress, started=started,
            on_no_space=on_no_space)

    @property
    def fleet(self) -> FleetTier | None:
        """The fleet's tier (Storage cache, claims), set by the daemon when [fleet] is on."""
        return self.context.fleet

    @fleet.setter
    def fleet(self, tier: FleetTier | None) -> None:
        self.context = replace(self.context, fleet=tier)

    def reconfigure(self, settings: Settings) -> None:
        """Take new settings (SIGHUP); providers are rebuilt on next use, old ones closed
        at the end so downloads in flight keep their connections."""
        self.pools.reconfigure(settings)
        self.space.reserve = settings.retention.min_free_bytes

    async def cancel_all(self) -> None:
        """Stop every download in flight; their partials stay for a later resume."""
        tasks = list(self._inflight.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def unwanted_inflight(self) -> list[str]:
        """Downloads in flight whose file no claim wants any more (released)."""
        out = []
        for fid in list(self._inflight):
            e = self.manifest.get(fid)
            if e is None or not e.wanted:
                out.append(fid)
        return out

    async def cancel(self, file_ids: list[str]) -> None:
        """Stop these downloads and drop their partials (nobody wants the files: no
        resume will). The provider's response is closed, so the origin sees it."""
        tasks = [t for f in file_ids if (t := self._inflight.get(f)) is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for fid in file_ids:
            self.partials.drop(key_of(fid))
            log.info("download_cancelled", file_id=fid, reason="no claim wants it")

    async def aclose(self) -> None:
        await self.cancel_all()
        await self.pools.aclose()
        await self.commits.drain()
        self.io.shutdown(wait=True)

    def semaphore(self, name: str) -> asyncio.Semaphore:
        """The per-provider limit (see Pools.semaphore)."""
        return self.pools.semaphore(name)

    # -- single flight -------------------------------------------------------------------

    async def fetch(self, file_id: str, row: Entry | None = None) -> Outcome:
        """Make a wanted file_id ready; concurrent callers for one id share one download.
        `row`: its manifest row, when the caller read it just now (with many others in
        one read); else it is read here."""
        task = self._inflight.get(file_id)
        if task is None:
            task = asyncio.ensure_future(self._fetch(file_id, row))
            self._inflight[file_id] = task
            task.add_done_callback(lambda _t: self._inflight.pop(file_id, None))
        return await asyncio.shield(task)

    async def _fetch(self, file_id: str, row: Entry | None) -> Outcome:
        if row is None:
            row = self.manifest.get(file_id)
        if row is None:
            raise PermanentError(f"{file_id} is not in the manifest; want it first",
                                 file_id=file_id)
        return await Download(self.context, row).run()
