"""Make SQLite agree with the disk: at start-up, and (temps only) on a schedule.

The disk says what exists, the hash says if it is good: a download that a crash
interrupted is queued again, a ready entry whose object is gone is fetched again,
a missing link is made again, and temps no wanted file needs are removed, both
at start-up (`reconcile`) and by the daemon's periodic reap (`reap_temps`).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..config import Settings
from ..errors import DownloadError
from ..links import sync
from ..manifest import Manifest
from ..records import Claim, Entry, State
from ..store import Store, default_link, key_of
from .strays import remove_stray_links

PAGE = 500  # entries reconciled per page: what start-up holds in memory at most


def reconcile(settings: Settings, manifest: Manifest, store: Store) -> dict[str, int]:
    """Re-link, re-queue, reset crashed downloads, remove temps no wanted file needs
    and links no entry accounts for. Runs before any download.

    A page of entries (and their claims) at a time, in file_id order: a start with a
    million entries holds a page of them, not the million."""
    counts = {"relinked": 0, "requeued": 0, "reset": 0}
    after = ""
    while rows := manifest.files_after(after, PAGE):
        links = _claim_links(manifest.claims_between(after, rows[-1].file_id))
        for row in rows:
            outcome = _reconcile_entry(manifest, store, row)
            if outcome is not None:
                counts[outcome] += 1
            if row.state == State.READY and row.sha256 and outcome != "requeued":
                counts["relinked"] += _relink_claims(manifest, store, row, links)
        after = rows[-1].file_id
    temps = reap_temps(settings, manifest, store)
    # Before any download runs, every link is either recorded or left by a crash.
    strays = remove_stray_links(manifest, store, min_age=0)
    return {**counts, "temps_removed": temps, "stray_links_removed": len(strays)}


def _reconcile_entry(manifest: Manifest, store: Store, row: Entry) -> str | None:
    """Fix one entry; returns which count it adds to, if any."""
    if row.state == State.DOWNLOADING:
        manifest.update(row.file_id, state=State.QUEUED)
        return "reset"
    if row.state != State.READY or not row.sha256 or not row.path:
        return None
    if store.object_stat(row.sha256) is None:
        manifest.update(row.file_id, state=State.QUEUED, sha256=None,
                        error="object missing from the store; re-fetching")
        return "requeued"
    if store.linked(row.sha256, row.path):
        return None
    try:
        store.link(row.sha256, row.path)
    except (OSError, DownloadError) as e:
        manifest.update(row.file_id, state=State.FAILED, error=str(e))
        return None
    return "relinked"


def _claim_links(claims: Iterable[Claim]) -> dict[str, set[str]]:
    """file_id -> the places its good claims name: their dests, and the default link
    (as "") for a claim without a dest."""
    out: dict[str, set[str]] = {}
    for c in claims:
        if c.error is None:
            out.setdefault(c.file_id, set()).add(c.dest or "")
    return out


def _relink_claims(manifest: Manifest, store: Store, row: Entry,
                   links: dict[str, set[str]]) -> int:
    """A crash between a claim's change and its links (a moved dest, another claim's
    link after a download): make the file's links what its claims name, and drop an
    old place none names. Returns 1 when something was redone."""
    assert row.sha256 is not None
    want = {rel or default_link(row.file_id, row.name) for rel in links.get(row.file_id, ())}
    want = want or {default_link(row.file_id, row.name)}
    if row.path in want and all(store.linked(row.sha256, rel) for rel in want):
        return 0
    sync(manifest, store, row.file_id)
    return 1


def temp_keys_to_keep(manifest: Manifest, active: Iterable[str] = ()) -> set[str]:
    """Keys whose temps a download may still resume: wanted entries not yet ready,
    and the file_ids being downloaded now (`active`)."""
    keep = {key_of(f) for f in manifest.wanted_unready_ids()}
    return keep | {key_of(f) for f in active}


def reap_temps(settings: Settings, manifest: Manifest, store: Store,
               active: Iterable[str] = ()) -> int:
    """Remove temps no wanted file needs, or older than retention.orphan_temp_age;
    returns how many files went. A key another process holds is skipped."""
    keep = temp_keys_to_keep(manifest, active)
    return store.reap_temps(keep, settings.retention.orphan_temp_age)
