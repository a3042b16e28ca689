"""The daemon: wires the parts, scheduler, signals, sd_notify.

One asyncio loop. It takes the state dir's lock, opens the manifest and the store
once, reconciles SQLite with the disk, then keeps the root in step with the
manifest: it notices writes by other processes through `PRAGMA data_version`
(looked at when the inbox watcher sees the SQLite WAL change, and once a second; no
rescan), dispatches due entries to the fetch engine, watches the inbox, and lets
APScheduler run retention, scrub, temp reaping and inbox cleanup. It calls the
operations (prefetchd.ops) directly; blocking passes run on a few job threads, each
with its own manifest connection for the daemon's lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from .. import log as logsetup
from ..config import Settings, load_settings
from ..errors import ConfigError, PrefetchError
from ..fetch import Engine
from ..fetch.context import Deferred
from ..inbox.watch import Inbox, WalWatch
from ..log import get_logger
from ..manifest import Manifest
from ..manifest.threads import JobThreads
from ..mirror import Mirror
from ..ops.release import evict
from ..records import EventKind, NewEvent, State
from ..runtime import DaemonLock, daemon_pid, sd_notify, watchdog_interval
from ..server import Host, Server, Waits
from ..server.peer import group_id
from ..store import Store
from ..supa import check_fleet_identity
from .jobs import Jobs
from .status import StatusLoop, watchdog
from .workers import Workers

if TYPE_CHECKING:
    from ..fleet import Sync, Tier
    from .metrics import Metrics

log = get_logger("prefetchd.service")

POLL = 1.0            # how often data_version is looked at without a wake-up (the
                      # inbox watcher wakes the loop when the manifest's WAL changes)
RETRY_CHECK = 1.0     # how often timers (retrying, waiting_space) are looked at
DUE_MARGIN = 0.02     # a deferred entry's wake-up comes this late, so that it is due
SPACE_RETRY = 5.0     # how often waiting_space entries are tried again; also the first
                      # backoff of one that ran out again (_PREFETCHD_SPACE_RETRY, seconds,
                      # changes both: tests)
RECEIPTS_EVERY = 0.2  # how often receipts look at new events (see receipts.WRITE_EVERY)


def space_retry() -> float:
    """SPACE_RETRY, or _PREFETCHD_SPACE_RETRY (seconds, > 0) when set: a test's knob."""
    raw = os.environ.get("_PREFETCHD_SPACE_RETRY")
    if not raw:
        return SPACE_RETRY
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ConfigError(f"_PREFETCHD_SPACE_RETRY: {raw!r} is not a positive number of seconds")
    return value


@dataclass
class DaemonHandles:
    """The daemon's manifest and store, open for its lifetime (ops.Handles);
    `settings` follows SIGHUP."""

    settings: Settings
    manifest: Manifest
    store: Store


class Daemon:
    def __init__(self, settings: Settings, reload: Callable[[], Settings] | None = None) -> None:
        self.settings = settings
        self._reload = reload
        self.stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._version: int | None = None  # the manifest's data_version the loop last saw
        self._last_space_pass = 0.0
        self._space_retry_at = 0.0
        self._space_retry = space_retry()
        self.metrics: Metrics | None = None
        self.mirror: Mirror | None = None
        self.fleet: tuple[Sync, Tier] | None = None
        self._retiring: set[asyncio.Task[None]] = set()  # fleet tiers of before a reload
        self._hurry = False  # a second stop signal: cancel downloads in flight now
        self._loaded = settings  # the config as last read (SIGHUP warns about changes to it)
        self.exit_code = 0

    # -- life cycle ----------------------------------------------------------------------

    async def run(self) -> int:
        s = self.settings
        refuse_a_served_root(s)  # a start that is refused creates nothing
        with contextlib.ExitStack() as held:
            if s.metrics.enabled:  # its port is checked before the state dir is made
                from .metrics import Metrics  # prometheus-client only when asked for

                self.metrics = Metrics(s.metrics)
                held.callback(self.metrics.close)
            held.callback(DaemonLock(s.lock_path).release)
            manifest = Manifest(s.db_path)
            held.callback(manifest.close)
            store = Store(s.root)
            held.callback(store.close)
            # A second lock inside the root: one daemon per root, whatever its state dir.
            held.callback(DaemonLock(s.root / ".prefetchd" / "daemon.lock").release)
            self.h = DaemonHandles(s, manifest, store)
            self.threads = JobThreads(s.db_path)
            held.callback(self.threads.close)
            self.jobs = Jobs(self.threads, store, wake=self._wake.set, metrics=self.metrics,
                             active=lambda: set(self.workers.active))
            return await self._serve()
        raise AssertionError("unreachable")  # pragma: no cover (mypy: ExitStack may swallow)

    async def _serve(self) -> int:
        background = await self._start()
        try:
            await self._main_loop()
        finally:
            await self._shut_down(background)
        return self.exit_code

    async def _start(self) -> list[asyncio.Task[None]]:
        """Reconcile, start workers, inbox, scheduler and background loops; READY=1."""
        s, h = self.settings, self.h
        self.mirror = Mirror(s) if s.supabase is not None else None
        self.waits = Waits(h.manifest, h.store.root)
        self.engine = Engine(s, h.manifest, h.store, on_no_space=self._no_space,
                             observe=self.metrics.observe if self.metrics else None,
                             progress=self.waits.progress, started=self.waits.started)
        self.engine.space.backoff_base = self._space_retry
        self._fleet_setup(s)
        self.jobs.configure(s, self.mirror, self.fleet[0] if self.fleet else None)
        log.info("reconciled", **await self.threads.run(self.jobs.reconcile))
        # The local API before READY=1: a client that saw the daemon ready can connect.
        self.server = Server(Host(h, self.threads, self._wake.set, self.jobs.push_stats,
                                  self._cancel_unwanted), self.waits)
        await self.server.start()
        # Twice the download limit: a download gives its slot back when it hands its
        # sealed file to the group commit, and the worker waiting for that commit must
        # not keep the next download from starting (the engine's global limit still
        # bounds the downloads in flight to `concurrency`).
        self.workers = Workers(h.manifest, self._fetch_one, 2 * s.download.concurrency)
        api_group = group_id(s.api.group, "api.group")
        self.inbox = Inbox(h, s.inbox_path, self._wake.set,
                           group=os.getegid() if api_group is None else api_group)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.jobs.inbox = self.inbox
        self.scheduler = AsyncIOScheduler(event_loop=loop)
        self.jobs.schedule(self.scheduler)
        self.scheduler.start()
        watching = asyncio.Event()
        wal = WalWatch(Path(f"{s.db_path.resolve()}-wal"), self._manifest_changed)
        status = StatusLoop(h.manifest, self.threads, self.workers, self.metrics, h.store)
        background = [
            asyncio.ensure_future(self.inbox.watch(self.stopping, s.inbox, started=watching,
                                                   wal=wal)),
            asyncio.ensure_future(status.run()),
            asyncio.ensure_future(self._receipts_loop()),
            asyncio.ensure_future(self.waits.run()),
        ]
        wd = watchdog_interval()
        if wd:
            background.append(asyncio.ensure_future(watchdog(wd)))
        for t in background:
            t.add_done_callback(self._background_ended)
        await asyncio.wait([asyncio.ensure_future(watching.wait()), background[0]],
                           return_when=asyncio.FIRST_COMPLETED)
        sd_notify("READY=1\nSTATUS=serving")
        log.info("ready", root=str(h.store.root), inbox=str(self.inbox.path), pid=os.getpid())
        return background

    async def _shut_down(self, background: list[asyncio.Task[None]]) -> None:
        sd_notify("STOPPING=1\nSTATUS=stopping: letting downloads in flight finish")
        log.info("stopping", in_flight=len(self.workers.active))
        await self.server.stop()  # no new requests; get streams end without a result
        self.scheduler.shutdown(wait=False)
        # Only what workers hold is in flight; queued entries just stay queued.
        await self.workers.close(0.0 if self._hurry else self.settings.download.shutdown_grace)
        await self.engine.aclose()  # cancels what is left; partials stay for resume
        if self.fleet is not None:
            await self.fleet[1].aclose()  # uploads still running: their leases expire
        self.inbox.receipts.refresh()
        if self.mirror is not None:  # best effort: what does not go now goes next start
            await asyncio.wait([asyncio.ensure_future(
                self.jobs.run("mirror", self.jobs.mirror_pass, True))], timeout=5)
        for t in background:
            t.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        self.inbox.close()
        log.info("stopped", exit_code=self.exit_code)

    def _background_ended(self, task: asyncio.Task[None]) -> None:
        """A background task must live as long as the daemon; if one dies, stop with 1
        so systemd restarts us instead of serving without an inbox or watchdog."""
        if task.cancelled() or self.stopping.is_set():
            return
        exc = task.exception()
        log.error("background_task_died", error=repr(exc) if exc else "returned")
        self.exit_code = 1
        self.stop()

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("signal", action="stop")
            self.stopping.set()
            self._wake.set()

    def _stop_signal(self, sig: signal.Signals) -> None:
        """SIGINT/SIGTERM: stop, giving downloads in flight download.shutdown_grace and
        saying so; the same signal again stops them at once (partials stay for resume)."""
        again = "Ctrl-C" if sig == signal.SIGINT else f"{sig.name}"
        if self.stopping.is_set():
            if not self._hurry:
                self._hurry = True
                log.warning("stopping_now", signal=sig.name,
                            message="stopping now: downloads in flight are cancelled, "
                                    "their partials kept for resume")
                if hasattr(self, "workers"):
                    asyncio.ensure_future(self.workers.close(0.0))
            return
        grace = self.settings.download.shutdown_grace
        n = len(self.workers.active) if hasattr(self, "workers") else 0
        waiting = (f"waiting up to {grace:g}s for {n} download{'' if n == 1 else 's'}"
                   if n else "no download in flight")
        log.warning("stop_requested", signal=sig.name,
                    message=f"stopping: {waiting}; {again} again to stop now")
        self.stop()

    def reload(self) -> None:
        """SIGHUP: re-read the config; what needs a restart (root, state_dir) is said so."""
        if self._reload is None:
            return
        try:
            new = self._reload()
            check_fleet_identity(new)
        except PrefetchError as e:
            log.error("reload_failed", error=str(e))
            return
        new, self._loaded = keep_restart_keys(self.settings, self._loaded, new), new
        self.settings = self.h.settings = new
        self.mirror = Mirror(new) if new.supabase is not None else None
        self.engine.reconfigure(new)
        self._fleet_setup(new)
        self.jobs.configure(new, self.mirror, self.fleet[0] if self.fleet else None)
        self.scheduler.remove_all_jobs()
        self.jobs.schedule(self.scheduler)
        log.info("reloaded")
        self._wake.set()

    # -- the manifest loop ------------------------------------------------------------------

    async def _main_loop(self) -> None:
        last_timers = 0.0
        low = self.workers.wants_refill
        while not self.stopping.is_set():
            version = self.h.manifest.data_version()
            now = time.monotonic()
            if version != self._version:
                self.waits.changed()  # another connection committed
                await self._cancel_unwanted()
            if (version != self._version or self._wake.is_set() or low.is_set()
                    or now - last_timers >= RETRY_CHECK):
                self._wake.clear()
                self._version, last_timers = version, now
                self._dispatch()
            woke = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(low.wait())]
            await asyncio.wait(woke, timeout=POLL, return_when=asyncio.FIRST_COMPLETED)
            for t in woke:
                t.cancel()

    async def _cancel_unwanted(self) -> None:
        """Stop the downloads of files whose last claim went (a release); a file the
        group commit published meanwhile, or left `downloading`, is evicted."""
        ids = self.engine.unwanted_inflight()
        if not ids:
            return
        await self.engine.cancel(ids)
        h = self.h
        for fid in ids:
            e = h.manifest.get(fid)
            if e is not None and not e.wanted and e.state in (State.READY, State.DOWNLOADING):
                evict(h.manifest, h.store, e, "released while downloading")
            self.waits.touch(fid)

    def _manifest_changed(self) -> None:
        """The manifest's WAL changed: wake the loop only when another connection
        committed (`prefetchd want`, a job thread); the daemon's own writes, such as
        each download's record, need no wake-up."""
        if self.h.manifest.data_version() != self._version:
            self._wake.set()

    def _dispatch(self) -> None:
        if time.monotonic() >= self._space_retry_at:
            self._space_retry_at = time.monotonic() + self._space_retry
            self.h.manifest.requeue_waiting_space()
        self.workers.refill()

    async def _fetch_one(self, file_id: str) -> None:
        try:
            await self.engine.fetch(file_id)
        except Deferred as e:  # handed to another host of the fleet: the entry waits
            log.debug("fetch_ended", file_id=file_id, error=str(e))
            if e.due_in is not None:  # wake when it is due, not at the next RETRY_CHECK
                asyncio.get_running_loop().call_later(e.due_in + DUE_MARGIN, self._wake.set)
        except PrefetchError as e:
            log.debug("fetch_ended", file_id=file_id, error=str(e))  # recorded by the engine
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug must not take the daemon down; record it on the entry
            log.exception("fetch_crashed", file_id=file_id)
            error = f"internal error ({type(e).__name__}: {e}); see the log"
            self.h.manifest.record(file_id, NewEvent(EventKind.FAILURE, error=error),
                                   state=State.FAILED, error=error)
        finally:
            self.waits.touch(file_id)  # a get through the socket may wait on it

    # -- fleet --------------------------------------------------------------------------

    def _fleet_setup(self, s: Settings) -> None:
        """With [fleet]: the wanted-set poll, the state report and the download tier
        (Storage cache, claims). Without it the daemon is the single-host one."""
        if self.fleet is not None:  # a reload: uploads under way finish first
            retired = asyncio.ensure_future(self.fleet[1].retire())
            self._retiring.add(retired)
            retired.add_done_callback(self._retiring.discard)
        self.fleet, self.engine.fleet = None, None
        if s.fleet is None:
            return
        from ..fleet import Remote, Sync, Tier

        remote = Remote(s)
        self.fleet = (Sync(s, remote), Tier(s, remote))
        self.engine.fleet = self.fleet[1]
        log.info("fleet", group=remote.group, host=remote.host)

    # -- space --------------------------------------------------------------------------

    def _no_space(self, need: int) -> None:
        """A download hit the reserve or ENOSPC: run a cleanup pass now (at most every 5s)."""
        if time.monotonic() - self._last_space_pass < self._space_retry:
            return
        self._last_space_pass = time.monotonic()
        asyncio.get_running_loop().create_task(self.jobs.run("space", self.jobs.retention, need))

    async def _receipts_loop(self) -> None:
        """Receipts follow the events, in batches, off the download path."""
        while True:
            await asyncio.sleep(RECEIPTS_EVERY)
            try:
                self.inbox.receipts.refresh()
            except OSError as e:  # e.g. a full disk: the next pass tries again
                log.error("receipts_failed", error=str(e))


#: keys the daemon reads only when it starts: a SIGHUP that changes one warns, naming it,
#: and keeps the running value
RESTART_KEYS = ("root", "state_dir", "log_level", "inbox.path", "api.socket", "api.group",
                "metrics.enabled", "metrics.address", "metrics.port", "download.concurrency")


def _key(settings: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        settings = getattr(settings, part)
    return settings


def _with(settings: Any, dotted: str, value: Any) -> Any:
    head, _, rest = dotted.partition(".")
    if not rest:
        return settings.model_copy(update={head: value})
    return settings.model_copy(update={head: _with(getattr(settings, head), rest, value)})


def keep_restart_keys(running: Settings, loaded: Settings, new: Settings) -> Settings:
    """`new`, with the running value of each key that needs a restart, and one warning
    per such key that changed since the config was last read (`[api] group`), instead
    of a silent "reloaded"."""
    for dotted in RESTART_KEYS:
        was, now = _key(running, dotted), _key(new, dotted)
        if was == now:
            continue
        if _key(loaded, dotted) == now:  # said at an earlier SIGHUP
            new = _with(new, dotted, was)
            continue
        section, _, name = dotted.rpartition(".")
        shown = f"[{section}] {name}" if section else name
        log.warning("reload_needs_restart", key=dotted,
                    message=f"{shown} changed ({was!r} -> {now!r}): it takes effect when "
                            "the daemon restarts; until then the old value stays")
        new = _with(new, dotted, was)
    return new


def refuse_a_served_root(s: Settings) -> None:
    """Refuse to start, before making anything, when a daemon holds the state dir or
    the root (a second daemon would otherwise leave a new state dir and database)."""
    for lock in (s.lock_path, s.root / ".prefetchd" / "daemon.lock"):
        pid = daemon_pid(lock)
        if pid is not None:
            shown = "unknown" if pid < 0 else pid
            raise PrefetchError(f"another prefetchd (pid {shown}) holds {lock}")


def run_daemon(config: str | None, root: str | None, state_dir: str | None) -> int:
    """Entry point of `prefetchd run`."""

    def load() -> Settings:
        return load_settings(config, root=root, state_dir=state_dir)

    settings = load()
    logsetup.configure(settings.log_level)
    # Build every provider once now, so a missing secret is an error at start.
    from ..providers import build_provider

    async def main() -> int:
        for name in settings.providers:
            await build_provider(name, settings).aclose()
        return await Daemon(settings, reload=load).run()

    return asyncio.run(main())
