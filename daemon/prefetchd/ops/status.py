"""status, ls, stats: what the manifest and the store say, in the documented shapes.

These only read, so they also work on a read-only manifest and on a root that does
not exist (yet).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import UsageError
from ..manifest import STATES, Manifest
from ..records import Entry, State
from ..runtime import daemon_pid
from ..shapes import FleetInfo, LastError, LsRow, StatsRow, Status, StoreTotals
from ..store import Store

QUEUE_STATES = (State.QUEUED, State.RETRYING, State.DOWNLOADING, State.WAITING_SPACE)


def status(settings: Settings, manifest: Manifest, store: Store) -> Status:
    """`status --json`. It walks the store's objects: a command's cost, not a timer's."""
    counts = manifest.state_counts()
    pid = daemon_pid(settings.lock_path)
    mirror = manifest.mirror_state()
    last_errors: list[LastError] = [
        {"file_id": e["file_id"], "state": e["state"], "error": e["error"],
         "updated_at": e["updated_at"]} for e in manifest.last_errors()]
    out: Status = {
        "daemon": {"running": pid is not None, "pid": pid if pid and pid > 0 else None},
        "root": str(store.root),
        "state_dir": str(settings.state_dir),
        "states": counts,
        "queue": queue_length(counts),
        "ready_bytes": manifest.ready_bytes(),
        "store": store_totals(store),
        "outbox_backlog": manifest.outbox_backlog(),
        "mirror": {"configured": settings.supabase is not None,
                   "last_push_at": mirror["last_push_at"],
                   "last_error": mirror["last_error"],
                   "last_error_at": mirror["last_error_at"]},
        "last_errors": last_errors,
    }
    if settings.fleet is not None:
        out["fleet"] = fleet_info(settings, manifest)
    return out


def fleet_info(settings: Settings, manifest: Manifest) -> FleetInfo:
    """What the fleet sync left in the manifest's marks (see fleet.sync)."""
    from ..supa import fleet_group, host_name

    def num(key: str) -> float | None:
        v = manifest.fleet_mark(key)
        return float(v) if v else None

    group = fleet_group(settings)
    same = manifest.fleet_mark("group") == group
    return {"group": group, "host": host_name(settings),
            "revision": int(manifest.fleet_mark("revision") or 0) if same else 0,
            "polled_at": num("polled_at"), "reported_at": num("reported_ok_at"),
            "last_error": (manifest.fleet_mark("poll_error")
                           or manifest.fleet_mark("report_error") or None)}


def queue_length(counts: dict[str, int]) -> int:
    return sum(counts[s] for s in QUEUE_STATES)


def store_totals(store: Store) -> StoreTotals:
    """Objects in the store and their bytes (one walk of objects/)."""
    objects = bytes_ = 0
    for _, st in store.objects():
        objects += 1
        bytes_ += st.st_size
    return {"objects": objects, "bytes": bytes_}


def ls(manifest: Manifest, root: Path, state: str | None = None) -> list[LsRow]:
    """`ls --json`: every entry, or those in one state."""
    if state is not None and state not in STATES:
        raise UsageError(f"--state: {state!r} is not one of {', '.join(STATES)}")
    return [ls_row(e, root) for e in manifest.rows(state)]


def ls_row(e: Entry, root: Path) -> LsRow:
    return {
        "file_id": e.file_id,
        "state": e.state,
        "wanted": e.wanted,
        "pin": e.pin,
        "provider": e.resolved_provider or e.provider,
        "size": e.size,
        "sha256": e.sha256,
        "path": str(root / e.path) if e.path else None,
        "error": e.error,
        "updated_at": e.updated_at,
    }


def stats(manifest: Manifest) -> list[StatsRow]:
    """`stats --json`: per provider, with hit_rate = hits / (downloads + hits)."""
    return [_stats_row(r) for r in manifest.stats()]


def _stats_row(r: dict[str, Any]) -> StatsRow:
    downloads, hits = r["downloads"] or 0, r["cache_hits"] or 0
    served = downloads + hits
    return {"provider": r["provider"], "downloads": r["downloads"],
            "cache_hits": r["cache_hits"], "failures": r["failures"], "bytes": r["bytes"],
            "hit_rate": round(hits / served, 4) if served else None}


def path(manifest: Manifest, store: Store, file_id: str) -> Path | None:
    """The absolute path if the file is ready and in place, else None."""
    e = manifest.get(file_id)
    if e is None or e.state != State.READY or not e.path or not e.sha256:
        return None
    if not store.linked(e.sha256, e.path):
        return None
    return store.root / e.path
