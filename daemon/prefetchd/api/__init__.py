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

import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import Settings, load_settings
from ..errors import BadRequest, NotReadyError
from ..fetch import Progress
from ..manifest import Manifest, NoStateError
from ..ops.results import GaveUpError, GetResult, Notice, Wait, format_duration
from ..records import Removal
from ..requests import Options
from ..shapes import GcResult, LsRow, StatsRow, Status, VerifyRow
from ..store import Store
from .args import (
    FileIds,
    file_id_list,
    flat,
    progress_of,
    timeout_seconds,
    want_options,
    watcher,
    writable,
)
from .backends import Backend, LocalBackend, SocketBackend
from .client import Client, DaemonUnavailable, Transfer, Watch

__all__ = ["BadRequest", "DaemonUnavailable", "GaveUpError", "GetResult", "Notice",
           "NotReadyError", "Options", "Prefetch", "Transfer", "format_duration", "forget",
           "get", "path", "release", "status", "want"]

class Prefetch:
    """One handle on a root: through its daemon, or in this process. close() when done.

    The backend is picked once, when the handle is made (api/backends.py): the daemon's
    local API when a daemon answers at its socket, else the operations in this
    process. Every method checks its arguments here and then makes one backend call,
    with the same return type either way.

    `read_only=True` (status, ls, path, stats) opens an existing manifest read-only and
    creates nothing when no daemon runs: no root, no state dir, no database; with no
    state there it raises NoStateError (exit 1).
    """

    def __init__(self, settings: Settings | None = None, *, read_only: bool = False,
                 **load: Any) -> None:
        self.settings = settings or load_settings(**load)
        self.read_only = read_only
        self.socket = self.settings.api_socket
        client = Client.connect(self.socket)
        self._peek: tuple[Manifest, Store] | None = None  # read-only, beside a daemon
        self.backend: Backend
        if client is not None:
            self.backend = SocketBackend(client)
        else:
            self._check_access()
            self.backend = self._local(read_only)

    @property
    def through_daemon(self) -> bool:
        """Whether the calls go through a running daemon (else they run here)."""
        return isinstance(self.backend, SocketBackend)

    @property
    def client(self) -> Client | None:
        """The daemon's client, when the calls go through it."""
        return self.backend.client if isinstance(self.backend, SocketBackend) else None

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

    def _local(self, read_only: bool) -> LocalBackend:
        manifest, store = self._open(read_only)
        return LocalBackend(self.settings, manifest, store)

    def _open(self, read_only: bool) -> tuple[Manifest, Store]:
        manifest = Manifest(self.settings.db_path, read_only=read_only)
        try:
            root = self.settings.root
            store = Store.open_read_only(root) if read_only else Store(root)
        except BaseException:
            manifest.close()
            raise
        return manifest, store

    def _handles(self) -> tuple[Manifest, Store]:
        if isinstance(self.backend, LocalBackend):
            return self.backend.manifest, self.backend.store
        # Through a daemon, the handles are only for looking inside: read-only, so
        # nothing here writes behind the daemon's back (nor needs write access).
        if self._peek is None:
            self._peek = self._open(True)
        return self._peek

    @property
    def manifest(self) -> Manifest:
        """The manifest opened in this process. Through a daemon the API's calls never
        use it; tools and tests that look inside open it, read-only, on first use."""
        return self._handles()[0]

    @property
    def store(self) -> Store:
        """The store opened in this process (on first use through a daemon)."""
        return self._handles()[1]

    def close(self) -> None:
        self.backend.close()
        if self._peek is not None:
            for handle in self._peek:
                handle.close()
            self._peek = None

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests --------------------------------------------------------------------

    def want(self, file_ids: FileIds, *, holder: str | None = None,
             options: Options | None = None, **opts: Any) -> list[str]:
        """Want these files (the daemon fetches them); returns the file_ids wanted.
        Options: provider, sha256, size, dest, pin (True/False), ttl ("24h" or seconds),
        or `options=Options(...)` instead; they are the caller's own claim's (or its
        sub-holder's: `holder="job-42"`): one given replaces that claim's old one, one
        left out keeps it."""
        return self.backend.want(file_id_list(file_ids), want_options(options, opts), holder)

    def unwant(self, file_ids: FileIds, *, holder: str | None = None) -> list[str]:
        """The caller's claims no longer want these (retention removes a file no claim
        wants, later); returns the file_ids."""
        return self.backend.unwant(file_id_list(file_ids), holder)

    # -- getting files ---------------------------------------------------------------

    def get_many(  # noqa: PLR0913 - the public API: the wait's settings are keywords
        self, file_ids: FileIds, *, timeout: float | str | None = None,
        progress: Progress | None = None, notice: Notice | None = None,
        watch: Watch | None = None, holder: str | None = None,
        options: Options | None = None, **opts: Any,
    ) -> list[GetResult]:
        """Want the files and wait until each has settled; one result per id given.

        An id settles when it is ready, has failed permanently, has kept failing
        transiently (retrying, waiting_space) for download.get_patience, or at
        `timeout` (seconds, or a duration such as "10s"): so `get` always ends, even
        for a URL that never answers. `progress(file_id, done, total)` and
        `watch(Transfer)` follow the downloads; `notice` hears what the wait is for.
        Each result is the caller's own claim's: its link, or why its claim failed.
        The options are want()'s (keywords, or `options=Options(...)`).
        """
        ids, seconds = file_id_list(file_ids), timeout_seconds(timeout)
        opt = want_options(options, opts)
        wait = Wait(seconds, progress_of(progress, watch), notice)
        if not self.through_daemon:
            return self.backend.get_many(ids, opt, holder, wait, None)
        started = time.monotonic()
        try:
            return self.backend.get_many(ids, opt, holder, wait, watcher(progress, watch))
        except DaemonUnavailable:
            if not writable(self.settings.db_path):
                raise
            # The daemon stopped during the wait: carry on here, as it would have.
            self.close()
            self.backend = self._local(False)
            left = None if seconds is None else max(0.0, seconds - (time.monotonic() - started))
            return self.backend.get_many(ids, opt, holder, replace(wait, timeout=left), None)

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
        return self.backend.locate(file_id, holder)

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
        return self.backend.release(file_id_list(file_ids), holder, every)

    def forget(self, file_ids: FileIds, *, holder: str | None = None,
               every: bool = False) -> Removal:
        """Drop the caller's claims entirely (as release, and a file's row goes with
        its last claim; its events stay). Returns the paths removed; `.kept` names
        files other claims still hold."""
        return self.backend.forget(file_id_list(file_ids), holder, every)

    def gc(self, dry_run: bool = False) -> GcResult:
        """One retention pass: delete what the policy says, then unreferenced objects."""
        return self.backend.gc(dry_run)

    # -- inspection ------------------------------------------------------------------

    def ls(self, state: str | None = None, *, mine: bool = False) -> list[LsRow]:
        """Files with their claims (`mine`: only the caller's files and claims)."""
        return list(self.backend.ls(state, mine))

    def iter_ls(self, state: str | None = None, *, mine: bool = False) -> Iterator[LsRow]:
        """ls() a row at a time, read while it is used (a page of files at a time from
        the manifest or the daemon): a million files cost what a page costs. Use it up
        (or drop it) before this Prefetch closes."""
        return self.backend.ls(state, mine)

    def status(self) -> Status:
        return self.backend.status()

    def verify(self, file_ids: FileIds | None = None) -> list[VerifyRow]:
        """Re-hash ready files now; quarantine bad objects and, without a daemon to do
        it, re-fetch what used them here."""
        return self.backend.verify(None if file_ids is None else file_id_list(file_ids))

    def stats(self) -> list[StatsRow]:
        """Per provider: downloads, cache_hits, failures, bytes, hit_rate (hits / served)."""
        return self.backend.stats()

    def push_stats(self) -> int:
        """Mirror the outbox to Supabase now; returns how many events were sent."""
        return self.backend.push_stats()


# -- module-level shortcuts, with settings from the environment / default config --------


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
