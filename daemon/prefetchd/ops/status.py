"""status, ls, stats: what the manifest and the store say, in the documented shapes.

These only read, so they also work on a read-only manifest and on a root that does
not exist (yet).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import UsageError
from ..manifest import STATES, Manifest
from ..manifest.claims import claim_link
from ..records import Claim, Entry, State, holder_uid
from ..runtime import daemon_pid
from ..shapes import ClaimRow, FleetInfo, LastError, LsRow, StatsRow, Status, StoreTotals
from ..store import Store, key_of

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
        "claims": manifest.claim_counts(),
        "stalled": stalled(manifest, store, counts, pid is not None),
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


def stalled(manifest: Manifest, store: Store, counts: dict[str, int], daemon: bool) -> int:
    """Files left `downloading` with nobody downloading them (a get in this process
    interrupted hard): no daemon runs and nobody holds the file's lock. The next
    `get` (or the daemon's start) takes them up again."""
    if daemon or not counts.get(State.DOWNLOADING):
        return 0
    return sum(1 for e in manifest.rows(State.DOWNLOADING) if store.idle(key_of(e.file_id)))


def not_ready(manifest: Manifest, file_id: str, holder: str | None) -> str:
    """Why `path` has no path for this holder's claim, in one line."""
    e = manifest.view(file_id, holder)
    if e is None:
        return f"{file_id} is not ready (not in the manifest)"
    if e.error and e.state == State.FAILED:
        return f"{file_id} is not ready (state failed): {e.error}"
    return f"{file_id} is not ready (state {e.state})"


LS_PAGE = 500  # files per page of `ls`: what one page holds in memory at most


def ls(manifest: Manifest, root: Path, state: str | None = None,
       mine: int | None = None) -> Iterator[LsRow]:
    """`ls --json`: every file (or those in one state) with its claims; with `mine`
    (a uid), only the files that uid (or its sub-holders) claims, with those claims.

    Rows come a page at a time (ls_page), so memory does not grow with the manifest:
    a million files cost what LS_PAGE of them cost."""
    check_state(state)
    after: str | None = ""
    while after is not None:
        rows, after = ls_page(manifest, root, state, mine, after)
        yield from rows


def check_state(state: str | None) -> None:
    if state is not None and state not in STATES:
        raise UsageError(f"--state: {state!r} is not one of {', '.join(STATES)}")


def ls_page(manifest: Manifest, root: Path, state: str | None, mine: int | None,  # noqa: PLR0913
            after: str, limit: int = LS_PAGE) -> tuple[list[LsRow], str | None]:
    """The files after file_id `after` (at most `limit`, in file_id order) with their
    claims, and the file_id to start the next page after (None: this was the last).
    Two index walks (files and claims by file_id), each from where the last page
    ended: a page costs the same anywhere in a manifest of any size."""
    entries = manifest.files_after(after, limit, state)
    if not entries:
        return [], None
    last = entries[-1].file_id
    by_file: dict[str, list[Claim]] = {}
    for c in manifest.claims_between(after, last):
        if mine is None or holder_uid(c.holder) == mine:
            by_file.setdefault(c.file_id, []).append(c)
    rows = [ls_row(e, root, by_file.get(e.file_id, [])) for e in entries
            if mine is None or e.file_id in by_file]
    return rows, (last if len(entries) == limit else None)


def claim_row(e: Entry, c: Claim, root: Path) -> ClaimRow:
    ready = e.state == State.READY and c.error is None
    return {"holder": c.holder, "wanted": c.wanted, "pin": c.pin, "dest": c.dest,
            "path": str(root / claim_link(e, c)) if ready else None, "sha256": c.sha256,
            "size": c.size, "ttl": c.ttl, "error": c.error}


def ls_row(e: Entry, root: Path, claims: list[Claim] | None = None) -> LsRow:
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
        "claims": [claim_row(e, c, root) for c in claims or []],
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


def path(manifest: Manifest, store: Store, file_id: str,
         holder: str | None = None) -> Path | None:
    """The absolute path of `holder`'s claim (its link; None: the file's own path) if
    the file is ready and that link in place, else None."""
    e = manifest.view(file_id, holder)
    if e is None or e.state != State.READY or not e.path or not e.sha256:
        return None
    if not store.linked(e.sha256, e.path):
        return None
    return store.root / e.path
