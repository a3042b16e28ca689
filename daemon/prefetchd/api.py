"""The Python API that agents import and the CLI fronts: want, get, path, release...

    from prefetchd import api
    path = api.get("report-2024.pdf", provider="mirror")       # waits, returns a Path

A thin facade: `Prefetch` holds one set of handles (settings, manifest, store) and
each method is one operation of `prefetchd.ops` on them. Every call validates its
whole input (prefetchd.requests) before it changes anything, so a bad entry leaves
the manifest untouched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import Settings, load_settings
from .fetch import Progress
from .manifest import Manifest, NoStateError, WantSpec
from .ops import gc as gc_op
from .ops import get as get_op
from .ops import status as status_op
from .ops import verify as verify_op
from .ops.forget import forget as forget_op
from .ops.here import fetch_here
from .ops.readstore import ReadOnlyStore
from .ops.release import release as release_op
from .ops.results import GaveUpError, GetResult, Notice, Wait, format_duration
from .ops.want import apply, unwant
from .requests import Options, Request, want_specs
from .runtime import daemon_pid
from .shapes import GcResult, LsRow, ScrubResult, StatsRow, Status, VerifyRow
from .store import Store

__all__ = ["GaveUpError", "GetResult", "Notice", "Prefetch", "format_duration", "forget",
           "get", "path", "release", "status", "want"]


class Prefetch:
    """One handle on a root and its manifest. Cheap to create; close() when done.

    `read_only=True` (status, ls, path, stats) opens an existing manifest read-only and
    creates nothing: no root, no state dir, no database; with no state there it
    raises NoStateError (exit 1).
    """

    def __init__(self, settings: Settings | None = None, *, read_only: bool = False,
                 **load: Any) -> None:
        self.settings = settings or load_settings(**load)
        self.read_only = read_only
        self.manifest = Manifest(self.settings.db_path, read_only=read_only)
        try:
            self.store = (ReadOnlyStore(self.settings.root) if read_only
                          else Store(self.settings.root))
        except BaseException:
            self.manifest.close()
            raise

    def close(self) -> None:
        self.manifest.close()
        self.store.close()

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests --------------------------------------------------------------------

    def specs(  # noqa: PLR0913 - the public API: one keyword per request field
        self, file_ids: Sequence[str], *, provider: str | None = None,
        sha256: str | None = None, size: int | None = None, dest: str | None = None,
        pin: bool = False, ttl: str | float | None = None,
    ) -> list[WantSpec]:
        """Validate a request and turn it into manifest entries (no side effects)."""
        return want_specs(self.settings, self.manifest, file_ids, Options(
            provider=provider, sha256=sha256, size=size, dest=dest, pin=pin, ttl=ttl))

    def want(self, file_ids: Sequence[str], **opts: Any) -> list[WantSpec]:
        specs = self.specs(file_ids, **opts)
        self.manifest.want(specs)
        return specs

    def unwant(self, file_ids: Sequence[str]) -> None:
        unwant(self.manifest, file_ids)

    def apply_request(self, wants: Sequence[WantSpec], unwants: Sequence[str],
                      forgets: Sequence[str] = ()) -> list[str]:
        """Apply one validated request (forgets' files first, then one transaction);
        returns the paths removed."""
        return apply(self.manifest, self.store,
                     Request(list(wants), list(unwants), list(forgets)))

    # -- getting files ---------------------------------------------------------------

    def daemon_pid(self) -> int | None:
        """The pid of the daemon holding this state dir's lock, or None."""
        return daemon_pid(self.settings.lock_path)

    def get_many(
        self, file_ids: Sequence[str], *, timeout: float | None = None,
        progress: Progress | None = None, notice: Notice | None = None, **opts: Any,
    ) -> list[GetResult]:
        """Want the files and wait until each has settled; one result per id given.

        An id settles when it is ready, has failed permanently, has kept failing
        transiently (retrying, waiting_space) for download.get_patience, or at
        `timeout`: so `get` always ends, even for a URL that never answers.
        """
        return get_op.get_many(self.settings, self.manifest, self.store,
                               self.specs(file_ids, **opts), Wait(timeout, progress, notice))

    def get(self, file_id: str, *, timeout: float | None = None, **opts: Any) -> Path:
        """Want one file and return its path once ready; raise the error that stopped it."""
        (result,) = self.get_many([file_id], timeout=timeout, **opts)
        if result.error is not None:
            raise result.error
        assert result.path is not None
        return result.path

    def path(self, file_id: str) -> Path | None:
        """The absolute path if the file is ready and in place, else None."""
        return status_op.path(self.manifest, self.store, file_id)

    # -- removal ---------------------------------------------------------------------

    def release(self, file_ids: Sequence[str]) -> list[str]:
        """Done with these: unwant and delete now (options cleared; the entry stays as
        `evicted`). Returns the paths removed."""
        return release_op(self.manifest, self.store, file_ids)

    def forget(self, file_ids: Sequence[str]) -> list[str]:
        """Remove the entries with their options and state, and a ready file at its
        destination; their events stay. Returns the paths removed."""
        return forget_op(self.manifest, self.store, file_ids)

    def gc(
        self, dry_run: bool = False, *, now: float | None = None, need_bytes: int = 0
    ) -> GcResult:
        """One retention pass: delete what the policy says, then unreferenced objects."""
        return gc_op.gc(self.settings, self.manifest, self.store, dry_run=dry_run, now=now,
                        need_bytes=need_bytes)

    # -- inspection ------------------------------------------------------------------

    def ls(self, state: str | None = None) -> list[LsRow]:
        return status_op.ls(self.manifest, self.store.root, state)

    def status(self) -> Status:
        return status_op.status(self.settings, self.manifest, self.store)

    def verify(self, file_ids: Sequence[str] | None = None) -> list[VerifyRow]:
        """Re-hash ready files now; quarantine bad objects and, without a daemon to do
        it, re-fetch what used them here."""
        report, refetch = verify_op.verify(self.manifest, self.store, file_ids)
        fetched = self._fetch_here_if_alone(refetch)
        for row in report:
            if row["file_id"] in fetched:
                row["refetched"] = fetched[row["file_id"]].error is None
        return report

    def scrub(self, budget_bytes: int, budget_seconds: float) -> ScrubResult:
        """Re-hash objects within a budget; quarantine bad ones and, without a daemon to
        do it, re-fetch the wanted entries that used them here."""
        res = verify_op.scrub(self.manifest, self.store, budget_bytes, budget_seconds)
        requeued = self.manifest.rows_for(res["requeued"]).values()
        self._fetch_here_if_alone([e.file_id for e in requeued if e.wanted])
        return res

    def _fetch_here_if_alone(self, file_ids: list[str]) -> dict[str, GetResult]:
        if not file_ids or self.daemon_pid() is not None:
            return {}
        results = asyncio.run(fetch_here(self.settings, self.manifest, self.store, file_ids,
                                         Wait()))
        return {r.file_id: r for r in results}

    def stats(self) -> list[StatsRow]:
        """Per provider: downloads, cache_hits, failures, bytes, hit_rate (hits / served)."""
        return status_op.stats(self.manifest)

    def push_stats(self) -> int:
        """Mirror the outbox to Supabase now; returns how many events were sent."""
        from .stats import Mirror

        return Mirror(self.settings).push(self.manifest)


def want(*file_ids: str, **opts: Any) -> None:
    """Module-level shortcut with settings from the environment/default config."""
    with Prefetch() as p:
        p.want(list(file_ids), **opts)


def get(file_id: str, **opts: Any) -> Path:
    with Prefetch() as p:
        return p.get(file_id, **opts)


def path(file_id: str) -> Path | None:
    """The path if ready, else None (also before anything created the state)."""
    try:
        p = Prefetch(read_only=True)
    except NoStateError:
        return None
    with p:
        return p.path(file_id)


def release(*file_ids: str) -> list[str]:
    with Prefetch() as p:
        return p.release(list(file_ids))


def forget(*file_ids: str) -> list[str]:
    """Remove entries with their options and state (their events stay)."""
    with Prefetch() as p:
        return p.forget(list(file_ids))


def status() -> Status:
    with Prefetch(read_only=True) as p:
        return p.status()
