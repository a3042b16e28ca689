"""The daemon's scheduled passes: retention, scrub, reap, inbox clean-up, rescan, the
mirror and the fleet's poll and report, each on a job thread with that thread's own
manifest connection (JobThreads), logged as one `job` line and never raised.

Apart from daemon.py, which wires the parts and runs the manifest loop: a pass gets
what it works on (settings, store, mirror, fleet sync, inbox), not the daemon.
`configure` swaps what a SIGHUP changes, and `schedule` puts the passes on the
scheduler again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from ..config import Settings
from ..errors import PrefetchError
from ..inbox.watch import Inbox
from ..log import get_logger
from ..manifest import Manifest
from ..manifest.threads import JobThreads
from ..mirror import Mirror
from ..ops import gc as gc_op
from ..ops import verify as verify_op
from ..ops.reconcile import reap_temps, reconcile
from ..store import Store

if TYPE_CHECKING:
    from ..fleet import Sync
    from .metrics import Metrics

log = get_logger("prefetchd.service")

_OPTS = {"max_instances": 1, "coalesce": True, "misfire_grace_time": 300,
         "replace_existing": True}


class Jobs:
    """The scheduled passes over (settings, manifest, store), run on job threads."""

    def __init__(self, threads: JobThreads, store: Store, *, wake: Callable[[], None],
                 active: Callable[[], set[str]], metrics: Metrics | None) -> None:
        self.threads, self.store, self.metrics = threads, store, metrics
        self._wake = wake          # the manifest loop looks again after each pass
        self._active = active      # the file_ids being downloaded (their temps stay)
        self.settings: Settings | None = None
        self.mirror: Mirror | None = None
        self.sync: Sync | None = None
        self.inbox: Inbox | None = None

    def configure(self, settings: Settings, mirror: Mirror | None, sync: Sync | None) -> None:
        """At start and on SIGHUP: what the passes work with from now on."""
        self.settings, self.mirror, self.sync = settings, mirror, sync

    @property
    def _s(self) -> Settings:
        assert self.settings is not None, "Jobs.configure() first"
        return self.settings

    def schedule(self, scheduler: AsyncIOScheduler) -> None:
        """Put every pass on the scheduler (replacing what was there)."""
        s = self._s
        retention = (CronTrigger.from_crontab(s.retention.cron) if s.retention.cron
                     else IntervalTrigger(seconds=s.retention.interval))
        every = [("retention", retention, self.retention, (0,)),
                 ("scrub", IntervalTrigger(seconds=s.verify.interval), self.scrub, ()),
                 ("reap", IntervalTrigger(seconds=min(3600.0, s.retention.orphan_temp_age)),
                  self.reap, ()),
                 ("inbox_clean", IntervalTrigger(seconds=min(3600.0, s.inbox.keep)),
                  self.inbox_clean, ())]
        if s.supabase is not None:
            every.append(("mirror", IntervalTrigger(seconds=s.supabase.push_interval),
                          self.mirror_pass, ()))
        for name, trigger, fn, args in every:
            scheduler.add_job(self.run, trigger, args=[name, fn, *args], id=name, **_OPTS)
        scheduler.add_job(self.rescan, IntervalTrigger(seconds=s.inbox.rescan_interval),
                          id="rescan", **_OPTS)
        if s.fleet is not None:  # the first poll and report at once, then on their interval
            now = datetime.now(UTC)
            for name, seconds, fn in (("fleet_poll", s.fleet.poll_interval, self.fleet_poll),
                                      ("fleet_report", s.fleet.report_interval,
                                       self.fleet_report)):
                scheduler.add_job(self.run, IntervalTrigger(seconds=seconds), args=[name, fn],
                                  id=name, next_run_time=now, **_OPTS)

    async def run(self, name: str, fn: Callable[..., dict[str, Any]], *args: Any) -> None:
        """Run a blocking pass `fn(manifest, *args)` on a job thread; log, never raise."""
        started = time.monotonic()
        try:
            result = await self.threads.run(fn, *args)
        except (PrefetchError, OSError) as e:
            log.error("job_failed", job=name, error=str(e))
            return
        # The fleet's frequent jobs log at info only when the wanted-set changed.
        quiet = name.startswith("fleet_") and not (result.get("applied")
                                                   or result.get("skipped"))
        (log.debug if quiet else log.info)(
            "job", job=name, duration_ms=int((time.monotonic() - started) * 1000), **result)
        self._wake()

    # -- the passes (on a job thread, with that thread's manifest) ------------------------

    def retention(self, manifest: Manifest, need: int) -> dict[str, Any]:
        """One gc pass (for `need` bytes when a download ran out of space); a scheduled
        pass then queues again entries evicted for space that fit in what is free now."""
        s, store = self._s, self.store
        res = gc_op.gc(s, manifest, store, need_bytes=need)
        for d in res["deleted"]:
            log.info("deleted", file_id=d["file_id"], path=d["path"], reason=d["reason"])
            if self.metrics:
                self.metrics.evictions.labels(d["kind"]).inc()
        out = {"deleted": len(res["deleted"]), "objects_removed": len(res["objects_removed"])}
        if need == 0:  # a space pass made room for the download that asked, not for these
            out["evicted_requeued"] = gc_op.requeue_evicted(s, manifest, store)
        return out

    def scrub(self, manifest: Manifest) -> dict[str, Any]:
        v = self._s.verify
        res = verify_op.scrub(manifest, self.store, v.budget_bytes, v.budget_seconds)
        if res["bad"] and self.metrics:
            self.metrics.verify_failures.inc(len(res["bad"]))
        for sha in res["bad"]:
            log.error("quarantined", sha256=sha, requeued=res["requeued"])
        return {"objects": res["objects"], "bytes": res["bytes"], "bad": len(res["bad"])}

    def push_stats(self, manifest: Manifest) -> int:
        """`stats --push` through the socket (on a job thread)."""
        return (self.mirror or Mirror(self._s)).push(manifest)

    def mirror_pass(self, manifest: Manifest, force: bool = False) -> dict[str, Any]:
        mirror = self.mirror
        if mirror is None:
            return {"skipped": "no [supabase]"}
        if not force and not mirror.due(manifest):
            return {"skipped": "backing off"}
        return {"events": mirror.push(manifest)}

    def reap(self, manifest: Manifest) -> dict[str, Any]:
        return {"temps_removed": reap_temps(self._s, manifest, self.store, self._active())}

    def inbox_clean(self, _manifest: Manifest) -> dict[str, Any]:
        assert self.inbox is not None
        return {"removed": self.inbox.clean(self._s.inbox.keep)}

    def reconcile(self, manifest: Manifest) -> dict[str, int]:
        return reconcile(self._s, manifest, self.store)

    def fleet_poll(self, manifest: Manifest) -> dict[str, Any]:
        if self.sync is None:
            return {"skipped": "no [fleet]"}
        return self.sync.poll(manifest, self.store)

    def fleet_report(self, manifest: Manifest) -> dict[str, Any]:
        if self.sync is None:
            return {"skipped": "no [fleet]"}
        return self.sync.report(manifest)

    async def rescan(self) -> None:
        """The inbox, looked at whole (a watcher can miss events, e.g. on NFS)."""
        assert self.inbox is not None
        self.inbox.scan()
        self.inbox.receipts.refresh(everything=True)
