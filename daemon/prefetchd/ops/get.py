"""get: want the files, then wait until each has settled: through the running daemon,
or by downloading here when none runs (or it goes away meanwhile).

An id settles when it is ready, has failed permanently, has kept failing
transiently (retrying, waiting_space) for download.get_patience, or at the wait's
timeout: so `get` always ends, even for a URL that never answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..config import Settings
from ..errors import PrefetchError
from ..manifest import Manifest, WantSpec
from ..records import Entry, State
from ..runtime import daemon_pid
from ..store import Store
from .here import fetch_here
from .results import POLL_INTERVAL, GaveUpError, GetResult, Wait, format_duration, timed_out

# States in which an entry keeps failing transiently: `get` waits on them at most
# download.get_patience, since nothing says they will ever end.
STUCK_STATES = (State.RETRYING, State.WAITING_SPACE)


def get_many(settings: Settings, manifest: Manifest, store: Store,
             specs: Sequence[WantSpec], wait: Wait) -> list[GetResult]:
    """Want these validated entries and wait; one result per spec, in order."""
    manifest.want(specs)
    file_ids = [s.file_id for s in specs]
    unique = list(dict.fromkeys(file_ids))
    if daemon_pid(settings.lock_path) is not None:
        results = _DaemonWait(settings, manifest, store, wait).run(unique)
    else:
        results = asyncio.run(fetch_here(settings, manifest, store, unique, wait))
    by_id = {r.file_id: _with_state(manifest, r) for r in results}
    return [by_id[f] for f in file_ids]


def _with_state(manifest: Manifest, result: GetResult) -> GetResult:
    e = manifest.get(result.file_id)
    return replace(result, state=e.state if e else None)


class _DaemonWait:
    """Poll the manifest while the daemon works, until every id has settled."""

    def __init__(self, settings: Settings, manifest: Manifest, store: Store,
                 wait: Wait) -> None:
        self.settings = settings
        self.manifest = manifest
        self.store = store
        self.wait = wait
        self.patience = settings.download.get_patience
        self.stuck_since: dict[str, float] = {}
        self.results: dict[str, GetResult] = {}

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
        for fid in file_ids:
            if fid in self.results:
                continue
            e = self.manifest.get(fid)
            result = _settled(fid, e, self.store.root)
            if result is None and e is not None and e.state in STUCK_STATES:
                result = self._stuck(e, now)
            if result is not None:
                self.results[fid] = result

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

    def _finish_here(self, file_ids: list[str], deadline: float | None) -> list[GetResult]:
        missing = [f for f in file_ids if f not in self.results]
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        rest = asyncio.run(fetch_here(self.settings, self.manifest, self.store, missing,
                                      replace(self.wait, timeout=left, progress=None)))
        self.results.update({r.file_id: r for r in rest})
        return [self.results[f] for f in file_ids]

    def _timed_out(self, fid: str) -> GetResult:
        e = self.manifest.get(fid)
        state = e.state if e else "gone"
        return timed_out(fid, self.wait.timeout,
                         f" (state {state}; the daemon carries on)")


def _settled(fid: str, e: Entry | None, root: Path) -> GetResult | None:
    """Whether the daemon is done with an entry, as `get` sees it; None: keep waiting."""
    if e is None:
        return GetResult(fid, None, PrefetchError(f"{fid}: forgotten meanwhile"))
    if e.state == State.READY and e.path:
        return GetResult(fid, root / e.path)
    if e.state == State.FAILED:
        return GetResult(fid, None, PrefetchError(e.error or f"{fid}: failed"))
    if not e.wanted and e.state != State.DOWNLOADING:
        return GetResult(fid, None, PrefetchError(
            f"{fid}: released or unwanted meanwhile (state {e.state})"))
    return None
