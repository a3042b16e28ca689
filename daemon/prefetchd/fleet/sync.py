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

from typing import Any

from .. import __version__
from ..config import Settings
from ..errors import PrefetchError
from ..log import get_logger
from ..manifest import Manifest
from ..ops.forget import apply_fleet_request
from ..redact import display_id
from ..requests import Options, Request, check_dest_free, check_file_id, spec
from ..store import Store
from .remote import Remote, id_key

log = get_logger("prefetchd.fleet")

BATCH = 1000


def file_key(file_id: str) -> str:
    """A host's state row key for a file_id (its own manifest has one row per id)."""
    return id_key("", file_id)


class Sync:
    """The wanted-set poll and the state report of one daemon."""

    def __init__(self, settings: Settings, remote: Remote) -> None:
        self.settings = settings
        self.remote = remote
        self.mark = f"revision:{remote.group}"
        self.skipped: dict[str, str] = {}  # file_id -> why, for status (bounded below)

    def poll(self, manifest: Manifest, store: Store) -> dict[str, Any]:
        since = int(manifest.fleet_mark(self.mark) or 0)
        applied = skipped = 0
        while True:
            rows = self.remote.changes(since, BATCH)
            if not rows:
                break
            req, bad = self._request(manifest, rows)
            last = max(int(r["revision"]) for r in rows)
            apply_fleet_request(self.settings, manifest, store, req, self.mark, str(last))
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

    def report(self, manifest: Manifest) -> dict[str, Any]:
        """Send what changed since the last report, and a heartbeat (always)."""
        since = float(manifest.fleet_mark("reported_at") or 0)
        sent = 0
        while True:
            rows = manifest.changed_since(since, BATCH)
            gone = manifest.forgotten_since(since, BATCH)
            states = [{"id_key": file_key(e.file_id), "file_id": display_id(e.file_id),
                       "state": e.state.value, "sha256": e.sha256, "size": e.size}
                      for e in rows]
            states += [{"id_key": file_key(fid), "file_id": display_id(fid),
                        "state": "forgotten", "sha256": None, "size": None}
                       for fid, _at in gone]
            stamps = [e.updated_at for e in rows] + [at for _fid, at in gone]
            full = len(rows) >= BATCH or len(gone) >= BATCH
            if full and len(set(stamps)) > 1:
                # A batch cut inside one timestamp would skip the rest of it next time:
                # leave the last timestamp's rows for the next round.
                top = max(stamps)
                states = [s for s, t in zip(states, stamps, strict=True) if t < top]
                stamps = [t for t in stamps if t < top]
            self.remote.report(states, self._heartbeat(manifest))
            sent += len(states)
            if stamps:
                since = max(stamps)
                manifest.set_fleet_mark("reported_at", repr(since))
            if not full:
                break
        return {"states": sent}

    def _heartbeat(self, manifest: Manifest) -> dict[str, Any]:
        c = manifest.counts()
        return {"ready": c.get("ready", 0), "queued": c.get("queued", 0),
                "failed": c.get("failed", 0), "bytes": c.get("bytes", 0),
                "version": __version__}
