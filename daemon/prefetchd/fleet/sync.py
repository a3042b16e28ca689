"""The group's wanted-set into the local manifest, and this host's states out.

Poll: the rows written after the last revision this host applied (one indexed query
per 1,000 rows: `group_name = G and revision > R order by revision`), checked like
a request, applied as fleet wants in one manifest transaction together with the new
revision, so a crash between the two cannot apply a change twice or skip one. A row
this host cannot serve (an unknown provider, a dest a local entry holds) is skipped
with a warning, never retried: the revision moves past it.

Report: entries changed since the last report (by their updated_at) and entries
forgotten since then go up as states, with a heartbeat of counts, in one idempotent
call; the watermark moves only after the call succeeded, so an outage delays
reports and loses none.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from .. import __version__
from ..config import Settings
from ..errors import PrefetchError
from ..log import get_logger
from ..manifest import Manifest
from ..ops.forget import apply_fleet
from ..records import fleet_holder
from ..redact import display_id
from ..requests import Options, Request, check_dest_free, check_file_id, spec
from ..store import Store
from .remote import Remote, file_key

log = get_logger("prefetchd.fleet")

BATCH = 1000


class Sync:
    """The wanted-set poll and the state report of one daemon."""

    def __init__(self, settings: Settings, remote: Remote) -> None:
        self.settings = settings
        self.remote = remote

    def poll(self, manifest: Manifest, store: Store) -> dict[str, Any]:
        """Apply the wanted-set's changes; status shows when it last worked, or why not."""
        with self._noted(manifest, "polled_at", "poll_error"):
            return self._poll(manifest, store)

    def report(self, manifest: Manifest) -> dict[str, Any]:
        with self._noted(manifest, "reported_ok_at", "report_error"):
            return self._report(manifest)

    @contextlib.contextmanager
    def _noted(self, manifest: Manifest, mark: str, error: str) -> Iterator[None]:
        """Record when the job last worked, or its error until it works again."""
        try:
            yield
        except PrefetchError as e:
            manifest.set_fleet_mark(error, str(e))
            raise
        manifest.set_fleet_mark(mark, repr(time.time()))
        if manifest.fleet_mark(error):
            manifest.set_fleet_mark(error, "")

    def _poll(self, manifest: Manifest, store: Store) -> dict[str, Any]:
        old = manifest.fleet_mark("group")
        if old != self.remote.group:
            # Another group (or the first poll): the old group's wants end here (nobody
            # in that group would unwant them) and the new group's whole set is read
            # from revision 0 (revisions come from one sequence for every group).
            if old is not None:
                left = manifest.holder_ids(fleet_holder(old))
                apply_fleet(manifest, store, [], left, [], None, fleet_holder(old))
                log.info("fleet_group_changed", old=old, new=self.remote.group,
                         unwanted=len(left))
            manifest.set_fleet_mark("revision", "0")
            manifest.set_fleet_mark("group", self.remote.group)
        since = int(manifest.fleet_mark("revision") or 0)
        applied = skipped = 0
        while True:
            rows = self.remote.changes(since, BATCH)
            if not rows:
                break
            req, bad = self._request(manifest, rows)
            last = max(int(r["revision"]) for r in rows)
            removal = apply_fleet(manifest, store, req.wants, req.unwants, req.forgets, last,
                                  fleet_holder(self.remote.group))
            for line in removal.kept_lines():
                log.info("fleet_forget_kept", detail=line)
            applied += len(rows) - bad
            skipped += bad
            since = last
            if len(rows) < BATCH:
                break
        return {"revision": since, "applied": applied, "skipped": skipped}

    def _request(self, manifest: Manifest, rows: list[dict[str, Any]]) -> tuple[Request, int]:
        req, bad, dests = Request(), 0, set()
        for r in rows:
            fid, action = r["file_id"], r.get("action") or "want"
            try:
                check_file_id(fid)
                if action == "forget":
                    req.forgets.append(fid)
                elif action == "unwant":
                    req.unwants.append(fid)
                else:
                    s = spec(self.settings, fid, Options(
                        provider=r.get("provider"), sha256=r.get("sha256"), size=r.get("size"),
                        dest=r.get("dest"), pin=bool(r.get("pin")), ttl=r.get("ttl")))
                    check_dest_free(manifest, s)
                    if s.dest and s.dest in dests:
                        raise PrefetchError(f"dest {s.dest} is named twice in one poll")
                    if s.dest:
                        dests.add(s.dest)
                    req.wants.append(s)
            except PrefetchError as e:
                bad += 1
                log.warning("fleet_want_skipped", file_id=fid, revision=r.get("revision"),
                            error=str(e))
        return req, bad

    def _report(self, manifest: Manifest) -> dict[str, Any]:
        """Send what changed since the last report, and a heartbeat (always).

        Changed rows and forgotten ids are paged by their (time, file_id) watermarks
        (see Manifest.changed_since), which move only after the call succeeded. A host
        that now reports as another group or host starts from zero, so its new rows
        in fleet_states list everything it has."""
        me = f"{self.remote.group}\n{self.remote.host}"
        if manifest.fleet_mark("reported_as") != me:
            for mark in ("reported_at", "reported_id", "forgotten_at", "forgotten_id"):
                manifest.set_fleet_mark(mark, "")
            manifest.set_fleet_mark("reported_as", me)
        sent = 0
        while True:
            ts = float(manifest.fleet_mark("reported_at") or 0)
            after = manifest.fleet_mark("reported_id") or ""
            gone_ts = float(manifest.fleet_mark("forgotten_at") or 0)
            gone_after = manifest.fleet_mark("forgotten_id") or ""
            rows = manifest.changed_since(ts, BATCH, after)
            gone = manifest.forgotten_since(gone_ts, BATCH, gone_after)
            states = [{"id_key": file_key(e.file_id), "file_id": display_id(e.file_id),
                       "state": e.state.value, "sha256": e.sha256, "size": e.size}
                      for e in rows]
            states += [{"id_key": file_key(fid), "file_id": display_id(fid),
                        "state": "forgotten", "sha256": None, "size": None}
                       for fid, _at in gone]
            self.remote.report(states, self._heartbeat(manifest))
            sent += len(states)
            if rows:
                manifest.set_fleet_mark("reported_at", repr(rows[-1].updated_at or ts))
                manifest.set_fleet_mark("reported_id", rows[-1].file_id)
            if gone:
                manifest.set_fleet_mark("forgotten_at", repr(gone[-1][1]))
                manifest.set_fleet_mark("forgotten_id", gone[-1][0])
            if len(rows) < BATCH and len(gone) < BATCH:
                break
        return {"states": sent}

    def _heartbeat(self, manifest: Manifest) -> dict[str, Any]:
        c = manifest.state_counts()
        return {"ready": c["ready"], "failed": c["failed"] + c["quarantined"],
                "queued": sum(c[s] for s in ("queued", "downloading", "retrying",
                                             "waiting_space")),
                "bytes": manifest.ready_bytes(), "version": __version__}
