"""The Python API that agents import and the CLI fronts: want, get, path, release...

    from prefetchd import api
    path = api.get("report-2024.pdf", provider="mirror", timeout="10m")   # a Path

`Prefetch` decides once, when made, where its calls go. When a daemon answers at its
socket (client.py), every call goes through the daemon's local API, and this process
needs no write access to the state dir or the root. Else the calls run in this
process on its own handles (manifest, store), as the daemon would, provided the
state dir is writable; else DaemonUnavailable says neither is possible. Either way a
call checks its whole input before it changes anything and raises the same errors:
BadRequest (a ValueError) for a bad argument, NotFoundError for a file the provider
does not have, NotReadyError for the path of a file that is not ready.

The library never configures logging and never writes to stdout; the CLI does both.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .api_args import (
    FileIds,
    bad_request,
    file_id_list,
    flat,
    options,
    progress_of,
    result_of,
    timeout_seconds,
    want_body,
    watcher,
    writable,
)
from .client import Client, DaemonUnavailable, Transfer, Watch
from .config import Settings, load_settings
from .errors import BadRequest, NotReadyError, PrefetchError
from .fetch import Progress
from .manifest import Manifest, NoStateError, WantSpec, own_holder
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
from .ops.want import want as want_op
from .records import Removal, holder_uid, parse_holder
from .requests import Request, want_specs
from .runtime import daemon_pid
from .shapes import GcResult, LsRow, ScrubResult, StatsRow, Status, VerifyRow
from .store import Store

__all__ = ["BadRequest", "DaemonUnavailable", "GaveUpError", "GetResult", "Notice",
           "NotReadyError", "Prefetch", "Transfer", "format_duration", "forget", "get",
           "path", "release", "status", "want"]

class Prefetch:
    """One handle on a root: through its daemon, or in this process. close() when done.

    `read_only=True` (status, ls, path, stats) opens an existing manifest read-only and
    creates nothing when no daemon runs: no root, no state dir, no database; with no
    state there it raises NoStateError (exit 1).
    """

    def __init__(self, settings: Settings | None = None, *, read_only: bool = False,
                 **load: Any) -> None:
        self.settings = settings or load_settings(**load)
        self.read_only = read_only
        self.socket = self.settings.api_socket
        self.client = Client.connect(self.socket)
        self._handles: tuple[Manifest, Store] | None = None
        if self.client is None:
            self._check_access()
            self._handles = self._open_here()

    def _check_access(self) -> None:
        """Without a daemon this process does the work: one line if it may not."""
        state = self.settings.state_dir
        if self.read_only:
            if state.exists() and not os.access(state, os.R_OK | os.X_OK):
                raise DaemonUnavailable(f"no daemon is running at {self.socket} and the "
                                        f"state dir {state} is not readable")
        elif not writable(state) or not writable(self.settings.db_path):
            raise DaemonUnavailable(f"no daemon is running at {self.socket} and the "
                                    f"state dir {state} is not writable")

    def _open_here(self) -> tuple[Manifest, Store]:
        # Through a daemon, the handles are only for looking inside: read-only, so
        # nothing here writes behind the daemon's back (nor needs write access).
        read_only = self.read_only or self.client is not None
        manifest = Manifest(self.settings.db_path, read_only=read_only)
        try:
            store = ReadOnlyStore(self.settings.root) if read_only else Store(self.settings.root)
        except BaseException:
            manifest.close()
            raise
        return manifest, store

    @property
    def manifest(self) -> Manifest:
        """The manifest opened in this process. Through a daemon the API's calls never
        use it; tools and tests that look inside open it, read-only, on first use."""
        if self._handles is None:
            self._handles = self._open_here()
        return self._handles[0]

    @property
    def store(self) -> Store:
        """The store opened in this process (on first use through a daemon)."""
        if self._handles is None:
            self._handles = self._open_here()
        return self._handles[1]

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self._handles is not None:
            for handle in self._handles:
                handle.close()
            self._handles = None

    def _without_daemon(self) -> None:
        """The daemon went away: from now on this handle works in this process (its
        read-only handles make way for writable ones)."""
        self.close()
        self.client = None

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests --------------------------------------------------------------------

    def specs(self, file_ids: FileIds, **opts: Any) -> list[WantSpec]:
        """Validate a request here and turn it into manifest entries (no side effects)."""
        with bad_request():
            return want_specs(self.settings, self.manifest, file_id_list(file_ids),
                              options(**opts))

    def want(self, file_ids: FileIds, *, holder: str | None = None, **opts: Any) -> list[str]:
        """Want these files (the daemon fetches them); returns the file_ids wanted.
        Options: provider, sha256, size, dest, pin (True/False), ttl ("24h" or seconds);
        they are the caller's own claim's (or its sub-holder's: `holder="job-42"`): one
        given replaces that claim's old one, one left out keeps it."""
        ids = file_id_list(file_ids)
        if self.client is not None:
            return self.client.want(_with_holder(want_body(ids, options(**opts)), holder))
        specs = self.specs(ids, **opts)
        want_op(self.manifest, self.store, specs, holder=self._holder(holder))
        return [s.file_id for s in specs]

    def unwant(self, file_ids: FileIds, *, holder: str | None = None) -> None:
        ids = file_id_list(file_ids)
        if self.client is not None:
            self.client.unwant(ids, holder)
        else:
            unwant(self.manifest, ids, holder=self._holder(holder))

    def _holder(self, given: str | None, every: bool = False) -> str | None:
        """In this process: whose claims a call acts on (None: this process's uid). A
        sub-holder is the caller's own; another user's claims, or every claim, only
        for root or the state dir's owner (the daemon's user)."""
        uid = os.getuid()
        try:
            holder = parse_holder(given, uid) if given else None
        except ValueError as e:
            raise BadRequest(str(e)) from None
        other = holder is not None and holder_uid(holder) != uid
        if (other or every) and uid != 0 and uid != self.settings.state_dir.stat().st_uid:
            what = "every holder's claims" if every else f"the claims of {holder}"
            raise PrefetchError(f"acting on {what} needs root or the daemon's user")
        return holder

    def apply_request(self, wants: Sequence[WantSpec], unwants: Sequence[str],
                      forgets: Sequence[str] = ()) -> list[str]:
        """Apply one validated request here (forgets' files first, then one
        transaction); returns the paths removed."""
        return apply(self.manifest, self.store,
                     Request(list(wants), list(unwants), list(forgets)))

    # -- getting files ---------------------------------------------------------------

    def daemon_pid(self) -> int | None:
        """The pid of the daemon holding this state dir's lock, or None."""
        return daemon_pid(self.settings.lock_path)

    def get_many(  # noqa: PLR0913 - the public API: the wait's settings are keywords
        self, file_ids: FileIds, *, timeout: float | str | None = None,
        progress: Progress | None = None, notice: Notice | None = None,
        watch: Watch | None = None, **opts: Any,
    ) -> list[GetResult]:
        """Want the files and wait until each has settled; one result per id given.

        An id settles when it is ready, has failed permanently, has kept failing
        transiently (retrying, waiting_space) for download.get_patience, or at
        `timeout` (seconds, or a duration such as "10s"): so `get` always ends, even
        for a URL that never answers. `progress(file_id, done, total)` and
        `watch(Transfer)` follow the downloads; `notice` hears what the wait is for
        (in this process only).
        """
        holder = opts.pop("holder", None)
        ids, seconds = file_id_list(file_ids), timeout_seconds(timeout)
        wait = Wait(seconds, progress_of(progress, watch), notice)
        if self.client is None:
            return get_op.get_many(self.settings, self.manifest, self.store,
                                   self.specs(ids, **opts), wait, self._holder(holder))
        body = _with_holder(want_body(ids, options(**opts)), holder)
        body["timeout"] = seconds
        started = time.monotonic()
        try:
            rows = self.client.get(body, watcher(progress, watch), notice)
        except DaemonUnavailable:
            if not writable(self.settings.db_path):
                raise
            # The daemon stopped during the wait: carry on here, as it would have.
            self._without_daemon()
            left = None if seconds is None else max(0.0, seconds - (time.monotonic() - started))
            return get_op.get_many(self.settings, self.manifest, self.store,
                                   self.specs(ids, **opts), replace(wait, timeout=left),
                                   self._holder(holder))
        # Rows name URLs in their display form: the ids given are the caller's own.
        return [result_of(row, fid) for row, fid in zip(rows, ids, strict=True)]

    def get(self, file_id: str, *, timeout: float | str | None = None, **opts: Any) -> Path:
        """Want one file and return its path once ready; raise the error that stopped it."""
        if not isinstance(file_id, str):
            raise BadRequest(f"get takes one file_id (a str), not {type(file_id).__name__}"
                             "; get_many takes several")
        (result,) = self.get_many(file_id, timeout=timeout, **opts)
        if result.error is not None:
            raise result.error
        assert result.path is not None
        return result.path

    def locate(self, file_id: str, *, holder: str | None = None) -> Path:
        """The absolute path of the caller's claim on a ready file (its own dest, or
        the shared default); NotReadyError says why not."""
        if self.client is not None:
            return Path(self.client.path(file_id, holder))
        who = self._holder(holder) or own_holder()
        found = status_op.path(self.manifest, self.store, file_id, who)
        if found is None:
            raise NotReadyError(status_op.not_ready(self.manifest, file_id, who),
                                file_id=file_id)
        return found

    def path(self, file_id: str, *, holder: str | None = None) -> Path | None:
        """The absolute path if the caller's claim is ready and in place, else None."""
        try:
            return self.locate(file_id, holder=holder)
        except NotReadyError:
            return None

    # -- removal ---------------------------------------------------------------------

    def release(self, file_ids: FileIds, *, holder: str | None = None,
                every: bool = False) -> Removal:
        """Done with these: drop the caller's claims (or its sub-holder's; an admin's
        `holder="uid:N"` or `every=True`: another's, every local one) and their links
        now; a file goes with its last claim (its row stays as `evicted`). Returns the
        paths removed; `.kept` names files other claims still hold."""
        ids = file_id_list(file_ids)
        if self.client is not None:
            return self.client.release(ids, holder, every)
        return release_op(self.manifest, self.store, ids,
                          holder=self._holder(holder, every), every=every)

    def forget(self, file_ids: FileIds, *, holder: str | None = None,
               every: bool = False) -> Removal:
        """Drop the caller's claims entirely (as release, and a file's row goes with
        its last claim; its events stay). Returns the paths removed; `.kept` names
        files other claims still hold."""
        ids = file_id_list(file_ids)
        if self.client is not None:
            return self.client.forget(ids, holder, every)
        return forget_op(self.manifest, self.store, ids,
                         holder=self._holder(holder, every), every=every)

    def gc(
        self, dry_run: bool = False, *, now: float | None = None, need_bytes: int = 0
    ) -> GcResult:
        """One retention pass: delete what the policy says, then unreferenced objects.
        `now` and `need_bytes` (tests, the daemon's space checks) work in-process only."""
        if self.client is not None and now is None and not need_bytes:
            return self.client.gc(dry_run)
        return gc_op.gc(self.settings, self.manifest, self.store, dry_run=dry_run, now=now,
                        need_bytes=need_bytes)

    # -- inspection ------------------------------------------------------------------

    def ls(self, state: str | None = None, *, mine: bool = False) -> list[LsRow]:
        """Files with their claims (`mine`: only the caller's files and claims)."""
        if self.client is not None:
            return self.client.ls(state, mine)
        with bad_request():
            return status_op.ls(self.manifest, self.store.root, state,
                                os.getuid() if mine else None)

    def status(self) -> Status:
        if self.client is not None:
            return self.client.status()
        return status_op.status(self.settings, self.manifest, self.store)

    def verify(self, file_ids: FileIds | None = None) -> list[VerifyRow]:
        """Re-hash ready files now; quarantine bad objects and, without a daemon to do
        it, re-fetch what used them here."""
        ids = None if file_ids is None else file_id_list(file_ids)
        if self.client is not None:
            return self.client.verify(ids or [])
        report, refetch = verify_op.verify(self.manifest, self.store, ids)
        fetched = self._fetch_here_if_alone(refetch)
        for row in report:
            if row["file_id"] in fetched:
                row["refetched"] = fetched[row["file_id"]].error is None
        return report

    def scrub(self, budget_bytes: int, budget_seconds: float) -> ScrubResult:
        """Re-hash objects within a budget here; quarantine bad ones and, without a
        daemon to do it, re-fetch the wanted entries that used them here."""
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
        if self.client is not None:
            return self.client.stats()
        return status_op.stats(self.manifest)

    def push_stats(self) -> int:
        """Mirror the outbox to Supabase now; returns how many events were sent."""
        if self.client is not None:
            return self.client.push_stats()
        from .stats import Mirror

        return Mirror(self.settings).push(self.manifest)


# -- module-level shortcuts, with settings from the environment / default config --------


def _with_holder(body: Any, holder: str | None) -> Any:
    if holder:
        body["holder"] = holder
    return body


def want(*file_ids: FileIds, **opts: Any) -> list[str]:
    """want("a"), want("a", "b") and want(["a", "b"]) alike."""
    with Prefetch() as p:
        return p.want(flat(file_ids), **opts)


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


def release(*file_ids: FileIds) -> list[str]:
    with Prefetch() as p:
        return p.release(flat(file_ids))


def forget(*file_ids: FileIds) -> list[str]:
    """Remove entries with their options and state (their events stay)."""
    with Prefetch() as p:
        return p.forget(flat(file_ids))


def status() -> Status:
    with Prefetch(read_only=True) as p:
        return p.status()
