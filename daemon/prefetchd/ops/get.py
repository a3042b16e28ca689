"""get: want the files, then wait until each has settled: through the running daemon,
or by downloading here when none runs (or it goes away meanwhile).

An id settles when it is ready, has failed permanently, has kept failing
transiently (retrying, waiting_space) for download.get_patience, or at the wait's
timeout: so `get` always ends, even for a URL that never answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..config import Settings
from ..errors import PrefetchError, from_json
from ..manifest import Manifest, WantSpec, own_holder
from ..records import Entry, State
from ..runtime import daemon_pid
from ..store import Store
from .here import fetch_here
from .results import POLL_INTERVAL, GaveUpError, GetResult, Wait, format_duration, timed_out
from .want import want

# States in which an entry keeps failing transiently: `get` waits on them at most
# download.get_patience, since nothing says they will ever end.
STUCK_STATES = (State.RETRYING, State.WAITING_SPACE)


def get_many(settings: Settings, manifest: Manifest, store: Store,  # noqa: PLR0913
             specs: Sequence[WantSpec], wait: Wait, holder: str | None = None
             ) -> list[GetResult]:
    """Want these validated entries for `holder` (None: this process's uid) and wait;
    one result per spec, in order: each the holder's own claim (its link, or why
    its claim failed)."""
    who = holder or own_holder()
    want(manifest, store, specs, holder=who)
    file_ids = [s.file_id for s in specs]
    unique = list(dict.fromkeys(file_ids))
    if daemon_pid(settings.lock_path) is not None:
        results = _DaemonWait(settings, manifest, store, wait, who).run(unique)
    else:
        results = asyncio.run(fetch_here(settings, manifest, store, unique, wait))
    views = manifest.views(unique, who)  # two reads per 500 ids, not two per id
    by_id = {r.file_id: _as_claimed(store, r, views.get(r.file_id)) for r in results}
    return [by_id[f] for f in file_ids]


def _as_claimed(store: Store, result: GetResult, e: Entry | None) -> GetResult:
    """A result as the holder's claim (`e`, its view) has it: its own link, or its own
    failure."""
    if e is None:
        return replace(result, state=None)
    if result.path is not None:
        if e.state == State.FAILED:
            return GetResult(result.file_id, None, PrefetchError(e.error or "failed"),
                             state=e.state)
        if e.path:
            return GetResult(result.file_id, store.root / e.path, state=e.state,
                             sha256=e.sha256, size=e.size)
    return replace(result, state=e.state)


class Settle:
    """When `get` stops waiting on an id that a daemon works on: it is ready, failed,
    gone, or has kept failing transiently for download.get_patience.

    Shared by the wait from another process (polling, below) and the daemon's own
    local API (woken by its workers); `stuck_since` is when each id was first seen
    failing transiently.
    """

    def __init__(self, root: Path, patience: float, wait: Wait) -> None:
        self.root = root
        self.patience = patience
        self.wait = wait
        self.stuck_since: dict[str, float] = {}

    def look(self, fid: str, e: Entry | None, now: float) -> GetResult | None:
        """The result of `fid` if its wait is over; None: keep waiting."""
        result = settled(fid, e, self.root)
        if result is None and e is not None and e.state in STUCK_STATES:
            result = self._stuck(e, now)
        return result

    def expires(self, fid: str) -> float | None:
        """When the patience with a stuck id runs out (None: it is not stuck)."""
        since = self.stuck_since.get(fid)
        return None if since is None else since + self.patience

    def _stuck(self, e: Entry, now: float) -> GetResult | None:
        """An entry failing transiently: given up on after get_patience."""
        fid = e.file_id
        if fid not in self.stuck_since:
            self.wait.tell(f"{fid}: {e.state} ({e.error}); waiting up to "
                           f"{format_duration(self.patience)} (download.get_patience)")
        since = self.stuck_since.setdefault(fid, now)
        if now - since < self.patience:
            return None
        return GetResult(fid, None, GaveUpError(
            f"{fid}: still {e.state} after {format_duration(self.patience)} "
            f"(download.get_patience): {e.error}; the daemon keeps trying",
            file_id=fid, patience=self.patience))

    def timed_out(self, fid: str, e: Entry | None) -> GetResult:
        """The result of an id the daemon had not settled when the timeout ran out."""
        state = e.state if e else "gone"
        return timed_out(fid, self.wait.timeout, f" (state {state}; the daemon carries on)")


class _DaemonWait:
    """Poll the manifest while the daemon works, until every id has settled."""

    def __init__(self, settings: Settings, manifest: Manifest, store: Store,  # noqa: PLR0913
                 wait: Wait, holder: str) -> None:
        self.holder = holder
        self.settings = settings
        self.manifest = manifest
        self.store = store
        self.wait = wait
        self.settle = Settle(store.root, settings.download.get_patience, wait)
        self.results: dict[str, GetResult] = {}
        self._mark: tuple[int, int] | None = None  # the manifest's change mark last looked at
        self._timed = False  # an id waits on time or the disk, not only on the manifest

    def run(self, file_ids: list[str]) -> list[GetResult]:
        timeout = self.wait.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        told = False
        while True:
            self._look(file_ids, time.monotonic())
            if len(self.results) == len(file_ids):
                return [self.results[f] for f in file_ids]
            if deadline is not None and time.monotonic() >= deadline:
                return [self.results.get(f) or self._timed_out(f) for f in file_ids]
            if daemon_pid(self.settings.lock_path) is None:  # the daemon went away: finish here
                return self._finish_here(file_ids, deadline)
            if not told:
                self.wait.tell(f"waiting for the daemon to fetch "
                               f"{len(file_ids) - len(self.results)} file(s)")
                told = True
            time.sleep(POLL_INTERVAL)

    def _look(self, file_ids: list[str], now: float) -> None:
        """Settle what can be: the ids still waited on, read in batches (views), and only
        when the manifest changed since the last look or some id waits on something
        else than the manifest (a link being made, the patience with a stuck one)."""
        mark = self.manifest.change_mark()
        if mark == self._mark and not self._timed:
            return
        self._mark = mark
        waiting = [f for f in file_ids if f not in self.results]
        views = self.manifest.views(waiting, self.holder)
        self._timed = False
        for fid in waiting:
            e = views.get(fid)
            result = self.settle.look(fid, e, now)
            if result is not None:
                self.results[fid] = result
            elif e is not None and (e.state in STUCK_STATES or e.state == State.READY):
                self._timed = True  # patience, or a link: look again without a change

    def _finish_here(self, file_ids: list[str], deadline: float | None) -> list[GetResult]:
        missing = [f for f in file_ids if f not in self.results]
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        rest = asyncio.run(fetch_here(self.settings, self.manifest, self.store, missing,
                                      replace(self.wait, timeout=left, progress=None)))
        self.results.update({r.file_id: r for r in rest})
        return [self.results[f] for f in file_ids]

    def _timed_out(self, fid: str) -> GetResult:
        return self.settle.timed_out(fid, self.manifest.get(fid))


def stored_error(e: Entry) -> PrefetchError:
    """A failed file's error as it was raised (its class, from the code the manifest
    kept), else one with its message; a claim's own failure is its message."""
    if e.error_detail and e.error is not None:
        try:
            body = json.loads(e.error_detail)
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("error") == e.error:
            return from_json(body)
    return PrefetchError(e.error or f"{e.file_id}: failed")


def settled(fid: str, e: Entry | None, root: Path) -> GetResult | None:
    """Whether the daemon is done with an entry, as `get` sees it; None: keep waiting."""
    if e is None:
        return GetResult(fid, None, PrefetchError(f"{fid}: forgotten meanwhile"))
    if e.state == State.READY and e.path:
        if not os.path.lexists(root / e.path):
            return None  # ready; this claim's own link is being made
        return GetResult(fid, root / e.path, sha256=e.sha256, size=e.size)
    if e.state == State.FAILED:
        return GetResult(fid, None, stored_error(e))
    if not e.wanted and e.state != State.DOWNLOADING:
        return GetResult(fid, None, PrefetchError(
            f"{fid}: released or unwanted meanwhile (state {e.state})"))
    return None
