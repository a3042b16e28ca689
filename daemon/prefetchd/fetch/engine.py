"""The engine: what every download shares, and single flight.

It holds the provider instances, the global and per-provider semaphores, the worker
threads for disk work, the group commit and the free-space reserve; it runs at most
one download per file_id in a process (callers share the result) and, through a
byte-range lock in the store, one per file_id across processes. Each download is a
`Download` object (see download.py).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from ..config import Settings
from ..errors import PermanentError
from ..log import get_logger
from ..manifest import Manifest
from ..providers import Provider, build_provider
from ..resolve import Resolver, Source
from ..store import Store, key_of
from .commit import GroupCommit
from .download import Download
from .ledger import Ledger, Observe, Outcome
from .space import SpaceReserve

log = get_logger("prefetchd.fetch")

Progress = Callable[[str, int, int | None], None]
# (file_id, name, total, offset): an attempt starts streaming, `offset` bytes already
# there (a resume), so a watcher neither counts those as speed nor guesses the name.
Started = Callable[[str, str | None, int | None, int], None]
LOCK_POLL = 0.05  # seconds between tries of a file's lock that another process holds


class FleetTier(Protocol):
    """Where a download's bytes come from in a fleet (prefetchd.fleet.Tier): the fetch
    engine knows only this much of it."""

    async def fetch(self, dl: Download, src: Source) -> Outcome: ...


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**attempt))."""
    return rng.uniform(0, min(cap, base * (2**attempt)))


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
        self.settings = settings
        self.manifest = manifest
        self.store = store
        self.progress = progress
        self.started = started
        self.on_no_space = on_no_space
        self.observe: Observe = observe or (lambda _kind, _provider, _bytes, _seconds=None: None)
        self.sleep = sleep
        self._rng = rng or random.Random()
        self.resolver = Resolver(settings, self._returns_original)
        self._providers: dict[str, Provider] = {}
        self._retired: list[Provider] = []
        self._inflight: dict[str, asyncio.Task[Outcome]] = {}
        self.global_limit = asyncio.Semaphore(settings.download.concurrency)
        self._per: dict[str, asyncio.Semaphore] = {}
        self.io = ThreadPoolExecutor(max_workers=settings.download.concurrency + 1,
                                     thread_name_prefix="prefetchd-io")
        self.commits = GroupCommit(manifest, store, self.io)
        self.ledger = Ledger(manifest, store, self.observe)
        self.space = SpaceReserve(store.root, settings.retention.min_free_bytes)
        # The fleet's tier (Storage cache, claims), set by the daemon when [fleet] is on.
        self.fleet: FleetTier | None = None
        # Keys with partial downloads in tmp/, listed once: a new file needs no listing.
        self.partial_keys = store.partial_keys()

    def reconfigure(self, settings: Settings) -> None:
        """Take new settings (SIGHUP); providers are rebuilt on next use, old ones closed
        at the end so downloads in flight keep their connections."""
        self.settings = settings
        self.resolver = Resolver(settings, self._returns_original)
        self.space.reserve = settings.retention.min_free_bytes
        self._retired.extend(self._providers.values())
        self._providers = {}
        self._per = {}

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
            self.drop_partials(key_of(fid))
            log.info("download_cancelled", file_id=fid, reason="no claim wants it")

    async def aclose(self) -> None:
        await self.cancel_all()
        for p in [*self._providers.values(), *self._retired]:
            await p.aclose()
        self._providers.clear()
        self._retired.clear()
        await self.commits.drain()
        self.io.shutdown(wait=True)

    # -- pools ---------------------------------------------------------------------------

    def provider(self, name: str) -> Provider:
        if name not in self._providers:
            self._providers[name] = build_provider(name, self.settings)
        return self._providers[name]

    def _returns_original(self, name: str) -> bool:
        return self.provider(name).returns_original

    def semaphore(self, name: str) -> asyncio.Semaphore:
        """The per-provider limit: its `concurrency`, else per_provider_concurrency."""
        if name not in self._per:
            cfg = self.settings.provider_config(name)
            n = (cfg.concurrency if cfg is not None and cfg.concurrency else
                 self.settings.download.per_provider_concurrency)
            self._per[name] = asyncio.Semaphore(n)
        return self._per[name]

    def backoff(self, attempt: int) -> float:
        dl = self.settings.download
        return backoff_delay(attempt, dl.backoff_base, dl.backoff_max, self._rng)

    # -- single flight -------------------------------------------------------------------

    async def fetch(self, file_id: str) -> Outcome:
        """Make a wanted file_id ready; concurrent callers for one id share one download."""
        task = self._inflight.get(file_id)
        if task is None:
            task = asyncio.ensure_future(self._fetch(file_id))
            self._inflight[file_id] = task
            task.add_done_callback(lambda _t: self._inflight.pop(file_id, None))
        return await asyncio.shield(task)

    async def _fetch(self, file_id: str) -> Outcome:
        row = self.manifest.get(file_id)
        if row is None:
            raise PermanentError(f"{file_id} is not in the manifest; want it first",
                                 file_id=file_id)
        return await Download(self, row).run()

    async def wait_for_lock(self, key: str) -> None:
        """Wait while another process downloads this key, polling without blocking.

        A blocking lockf in a worker thread cannot be cancelled: a timed-out `get` would
        wait for it at exit, and a cancelled daemon task would end up holding the lock.
        """
        while not self.store.lock_key(key):
            await asyncio.sleep(LOCK_POLL)

    def drop_partials(self, key: str) -> None:
        """The entry became ready without downloading: no resume will want its partials
        (a killed download's .part and .meta), so they go now, not at the next start or
        reap. Skipped while another process holds the key: it is downloading, and its
        own publish removes its temp."""
        if not self.store.lock_key(key):
            return
        try:
            removed = self.store.discard_partials(key)
        finally:
            self.store.unlock_key(key)
        self.partial_keys.discard(key)
        if removed:
            log.info("partials_removed", key=key, files=removed, reason="entry is ready")

