"""`get` without a daemon: download in this process, on the caller's handles.

The engine's backoff sleeps tell when an id starts retrying, so get_patience is
counted from its first transient failure; a wait cut short (timeout, patience)
cancels that download and keeps its partial for a resume.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence

from ..config import Settings
from ..errors import PrefetchError
from ..fetch import Engine, Outcome
from ..manifest import Manifest
from ..records import Entry, State
from ..store import Store, key_of
from .results import POLL_INTERVAL, GaveUpError, GetResult, Wait, format_duration, timed_out
from .status import path

# The file_id an in-process fetch works on, so the engine's backoff sleep (which is
# told only a delay) can say which entry is retrying.
_FETCHING: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "prefetchd_fetching", default=None)


async def fetch_here(settings: Settings, manifest: Manifest, store: Store,
                     file_ids: Sequence[str], wait: Wait) -> list[GetResult]:
    """Download these wanted ids here; one result per id, in order."""
    run = _Run(settings.download.get_patience, wait)
    engine = Engine(settings, manifest, store, progress=wait.progress, sleep=run.backoff)
    try:
        # The rows read once for all (500 a read), not once per download.
        await run.until_settled(engine, file_ids, manifest.rows_for(file_ids))
    finally:
        await engine.aclose()  # cancels what is left; partials stay for a resume
        _requeue_interrupted(manifest, [f for f in file_ids if not run.made_ready(f)])
    if run.cut:
        partials = store.partial_keys()
        for fid, why in run.cut.items():
            run.ended[fid] = _cut_short(manifest, store, fid, why, run,
                                        key_of(fid) in partials)
    return [run.ended[f] for f in file_ids]


def _requeue_interrupted(manifest: Manifest, file_ids: Sequence[str]) -> None:
    """A get stopped here (Ctrl-C, --timeout, patience) leaves its files `queued`, not
    `downloading` with nobody downloading them; partials stay for a resume. Only the
    ids not made ready here are read."""
    if not file_ids:
        return
    for fid, e in manifest.rows_for(set(file_ids)).items():
        if e.state == State.DOWNLOADING:
            manifest.update(fid, state=State.QUEUED)


class _Run:
    """One in-process `get`: its tasks, who is retrying since when, how each ended."""

    def __init__(self, patience: float, wait: Wait) -> None:
        self.patience = patience
        self.wait = wait
        self.retrying_since: dict[str, float] = {}
        self.ended: dict[str, GetResult] = {}
        self.cut: dict[str, str] = {}  # id -> why its wait was cut short (timeout/patience)
        self.tasks: dict[str, asyncio.Task[Outcome]] = {}  # each id's fetch

    async def backoff(self, delay: float) -> None:
        fid = _FETCHING.get()
        if fid is not None and fid not in self.retrying_since:
            self.retrying_since[fid] = asyncio.get_running_loop().time()
            self.wait.tell(f"{fid}: failed for now, retrying; waiting up to "
                           f"{format_duration(self.patience)} (download.get_patience)")
        await asyncio.sleep(delay)

    def made_ready(self, fid: str) -> bool:
        """Whether this run's fetch of `fid` ended with the file ready."""
        task = self.tasks.get(fid)
        return (task is not None and task.done() and not task.cancelled()
                and task.exception() is None)

    async def until_settled(self, engine: Engine, file_ids: Sequence[str],
                            rows: dict[str, Entry]) -> None:
        async def fetch_one(fid: str) -> Outcome:
            _FETCHING.set(fid)  # the engine's task for fid copies this context
            return await engine.fetch(fid, rows.get(fid))

        loop = asyncio.get_running_loop()
        tasks = self.tasks = {fid: asyncio.ensure_future(fetch_one(fid)) for fid in file_ids}
        timeout = self.wait.timeout
        deadline = None if timeout is None else loop.time() + timeout
        pending = set(tasks.values())
        while pending:
            _, pending = await asyncio.wait(pending, timeout=self._next_check(
                tasks, pending, deadline, loop.time()))
            self._cut_expired(tasks, pending, deadline, loop.time())
        for fid, task in tasks.items():
            if fid not in self.cut:
                self.ended[fid] = _ended(fid, task)
        await asyncio.gather(*tasks.values(), return_exceptions=True)

    def _next_check(self, tasks: dict[str, asyncio.Task[Outcome]],
                    pending: set[asyncio.Task[Outcome]], deadline: float | None,
                    now: float) -> float:
        # Bare `patience`: an id that starts retrying during this wait expires no
        # sooner (POLL_INTERVAL keeps a zero patience from spinning).
        waits = [max(self.patience, POLL_INTERVAL)] + [
            since + self.patience - now for fid, since in self.retrying_since.items()
            if tasks[fid] in pending]
        if deadline is not None:
            waits.append(deadline - now)
        return max(0.0, min(waits))

    def _cut_expired(self, tasks: dict[str, asyncio.Task[Outcome]],
                     pending: set[asyncio.Task[Outcome]], deadline: float | None,
                     now: float) -> None:
        """Cancel the downloads whose wait ran out (timeout, or patience)."""
        for fid, task in tasks.items():
            if task not in pending:
                continue
            if deadline is not None and now >= deadline:
                self.cut[fid] = "timeout"
            elif fid in self.retrying_since and now - self.retrying_since[fid] >= self.patience:
                self.cut[fid] = "patience"
            else:
                continue
            task.cancel()
            pending.discard(task)


def _ended(fid: str, task: asyncio.Task[Outcome]) -> GetResult:
    """The result of a finished in-process fetch; a non-prefetch exception is a bug
    and surfaces as one."""
    exc = task.exception()
    if isinstance(exc, PrefetchError):
        return GetResult(fid, None, exc)
    if exc is not None:
        raise exc
    return GetResult(fid, task.result().path)


def _cut_short(manifest: Manifest, store: Store, fid: str, why: str, run: _Run,
               partial: bool) -> GetResult:
    """The result of an id whose in-process wait ended early (timeout or patience)."""
    ready = path(manifest, store, fid)
    if ready is not None:  # ready (e.g. --timeout 0 on a file already here)
        return GetResult(fid, ready)
    kept = " (partial kept for resume)" if partial else ""
    if why == "timeout":
        return timed_out(fid, run.wait.timeout, kept)
    return GetResult(fid, None, GaveUpError(
        f"{fid}: still failing after retrying for {format_duration(run.patience)} "
        f"(download.get_patience){kept}; -v shows each attempt's error",
        file_id=fid, patience=run.patience))
