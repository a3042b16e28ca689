"""release: done with these files, delete them now. Also the steps that release,
forget (local or fleet) and retention share: removing an entry's file (or those of
entries a forget is about to remove), and evicting an entry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import PrefetchError
from ..manifest import Manifest
from ..records import Entry, EventKind, Removal, State, WantSource
from ..store import Store


def release(manifest: Manifest, store: Store, file_ids: Sequence[str]) -> Removal:
    """A local user is done with these: unwant and delete now; returns the paths
    removed, with `.kept`: the entries the fleet still wants (their file stays,
    only the local want went).

    A released entry stays (state `evicted`, its history), but its request options
    (provider, sha256, size, dest, ttl, pin) are cleared: a later request starts
    from what it says, not from a wrong --sha256 or --dest given before.
    """
    known_entries(manifest, file_ids)
    manifest.unwant(file_ids, source=WantSource.LOCAL)
    out = Removal()
    for fid in dict.fromkeys(file_ids):
        e = manifest.get(fid)  # as the unwant left it
        if e is None:
            continue  # forgotten meanwhile, with its file
        if e.fleet_want:
            out.kept[fid] = WantSource.FLEET
            continue
        done = evict(manifest, store, e, "release", clear_options=True)
        out.extend(done)  # a fleet want since the get: kept, as above
        out.kept.update(done.kept)
    return out


def known_entries(manifest: Manifest, file_ids: Sequence[str]) -> list[Entry]:
    """The entries of these ids, or one error naming every id the manifest lacks."""
    found = {fid: manifest.get(fid) for fid in dict.fromkeys(file_ids)}
    unknown = [fid for fid, e in found.items() if e is None]
    if unknown:
        raise PrefetchError(f"not in the manifest: {', '.join(unknown)}")
    return [e for e in found.values() if e is not None]


def remove_forgotten_files(manifest: Manifest, store: Store, file_ids: Sequence[str],
                           source: WantSource) -> dict[str, str]:
    """Before `source` forgets these entries: remove the files of those the other
    source does not want (their rows are about to go); returns file_id -> the path
    removed. An entry the other side wants keeps its file (its row stays too).

    Files before rows: a crash in between leaves a row without its file, which the
    daemon re-links or re-fetches, rather than a file no row knows."""
    removed: dict[str, str] = {}
    for fid in dict.fromkeys(file_ids):
        entry = manifest.get(fid)
        if entry is None or (entry.fleet_want if source is WantSource.LOCAL
                             else entry.local_want):
            continue
        if path := remove_file(manifest, store, entry):
            removed[fid] = path
    return removed


def requeue_kept(manifest: Manifest, removed: dict[str, str], kept: Removal) -> None:
    """An entry whose file a forget removed, but which the other source wanted by the
    time its row was to go (a want in between), stays: queue it again so the engine
    puts its file back."""
    for fid in kept.kept:
        if fid in removed:
            manifest.update(fid, state=State.QUEUED, path=None, next_attempt_at=None)


def remove_file(manifest: Manifest, store: Store, entry: Entry) -> str | None:
    """Unlink an entry's file if it is ours, and its object if nothing else uses it;
    returns the path removed."""
    removed = None
    if entry.path and entry.sha256 and store.unlink(entry.path, entry.sha256):
        removed = entry.path
    if entry.sha256 and not manifest.hash_in_use(entry.sha256, entry.file_id):
        store.remove_object(entry.sha256)  # only if no other path links to it
    return removed


def evict(manifest: Manifest, store: Store, entry: Entry, reason: str, *,
          unwant: bool = False, clear_options: bool = False) -> Removal:
    """Delete one entry's file now; its row stays as `evicted` (the history). Returns
    the path removed, if any.

    With `unwant` (a ttl expiry, an entry nobody wanted) or `clear_options` (release),
    every want goes too, but only if the fleet still does not want the entry when the
    row is written (checked in that same statement): a fleet want applied since
    `entry` was read is never wiped. Such an entry is in `.kept` (FLEET), with its
    wants and options; its file is removed already, so it is queued to come back.
    A plain eviction for space touches no want (requeue_evicted brings it back)."""
    removed = remove_file(manifest, store, entry)
    fields: dict[str, Any] = {"state": State.EVICTED, "path": None}
    event = {"kind": EventKind.EVICT, "provider": entry.resolved_provider,
             "destination": removed, "bytes": entry.size, "sha256": entry.sha256,
             "error": reason}
    if not (unwant or clear_options):
        manifest.record(entry.file_id, event, **fields)
        return Removal([removed] if removed else [])
    fields.update(wanted=0, local_want=0, fleet_want=0, pin=0)
    if clear_options:
        fields.update(provider=None, expected_sha256=None, expected_size=None, dest=None,
                      ttl=None)
    if not manifest.record_unless_fleet_wanted(entry.file_id, event,
                                               ready_path=entry.path, **fields):
        return Removal(kept={entry.file_id: WantSource.FLEET})
    return Removal([removed] if removed else [])
