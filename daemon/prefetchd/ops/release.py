"""release: done with these files, drop the caller's claims and their links now. Also
the steps that release, forget (local or fleet) and retention share: choosing whose
claims a request acts on, removing a file's links, and evicting a file.

A holder acts only on its own claims; `every` (an admin's `--all`) acts on every
local claim of the file. The file goes with its last claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import PrefetchError
from ..links import all_links, claim_link, settle_dirs, sync
from ..manifest import Manifest, own_holder
from ..records import (
    Claim,
    Entry,
    EventKind,
    NewEvent,
    Removal,
    State,
    WantSource,
    holder_label,
    is_fleet,
)
from ..store import Store, key_of


def release(manifest: Manifest, store: Store, file_ids: Sequence[str], *,  # noqa: PLR0913
            holder: str | None = None, every: bool = False,
            in_daemon: bool = False) -> Removal:
    """Drop the holder's claims on these files now, with their links; a file whose
    last claim this was is evicted (object and links gone, its row stays `evicted`
    with its history; a download of it stops: `in_daemon`, the daemon's engine
    cancels it, else its idle partial goes here). Returns the paths removed, with
    `.kept`: files other claims still hold (their file stays)."""
    chosen = chosen_claims(manifest, file_ids, holder=holder, every=every, verb="release")
    left = manifest.drop_claims([(c.file_id, c.holder) for cs in chosen.values() for c in cs])
    out = Removal()
    for fid, (entry, claims) in _entries(manifest, chosen).items():
        if left.get(fid, 0):
            out.extend(sync(manifest, store, fid, gone=[claim_link(entry, c) for c in claims]))
            out.kept[fid] = _kept_by(manifest, fid)
            continue
        done = evict(manifest, store, entry, "release", claims=claims)
        if not in_daemon and entry.state != State.READY and not done.kept:
            drop_idle_partials(store, fid)
        out.extend(done)
        out.kept.update(done.kept)
    return out


def _entries(manifest: Manifest, chosen: dict[str, list[Claim]]
             ) -> dict[str, tuple[Entry, list[Claim]]]:
    out = {}
    for fid, claims in chosen.items():
        e = manifest.get(fid)
        if e is not None:
            out[fid] = (e, claims)
    return out


def _kept_by(manifest: Manifest, file_id: str) -> WantSource:
    holders = [c.holder for c in manifest.claims_of(file_id)]
    return WantSource.FLEET if any(is_fleet(h) for h in holders) else WantSource.LOCAL


def chosen_claims(manifest: Manifest, file_ids: Sequence[str], *, holder: str | None,
                  every: bool, verb: str) -> dict[str, list[Claim]]:
    """The claims a release/forget/unwant acts on, per file: the holder's own, or with
    `every` each local claim (the fleet's claim changes only through the fleet). One
    error names every id that is unknown or that the holder holds no claim on, and
    nothing changes then."""
    who = holder or own_holder()
    found = manifest.claims_for(file_ids)
    unknown, unclaimed, out = [], [], {}
    for fid, claims in found.items():
        if not claims and manifest.get(fid) is None:
            unknown.append(fid)
            continue
        mine = [c for c in claims if (not is_fleet(c.holder)) if every or c.holder == who]
        if not mine:
            others = ", ".join(sorted({holder_label(c.holder) for c in claims})) or "nobody"
            unclaimed.append(f"{fid} (held by {others})")
            continue
        out[fid] = mine
    if unknown:
        raise PrefetchError(f"not in the manifest: {', '.join(unknown)}")
    if unclaimed:
        raise PrefetchError(f"no claim of {holder_label(who)} to {verb}: "
                            f"{'; '.join(unclaimed)}")
    return out


def remove_file(manifest: Manifest, store: Store, entry: Entry,
                claims: Sequence[Claim] = ()) -> list[str]:
    """Unlink every link of a file that is ours (its path and each claim's, given or
    still in the manifest), its object if nothing else uses it, and the directories
    prefetchd made that are left empty; returns the paths removed."""
    removed: list[str] = []
    if entry.sha256:
        links = all_links(entry, [*claims, *manifest.claims_of(entry.file_id)])
        removed = [rel for rel in sorted(links) if store.unlink(rel, entry.sha256)]
        if not manifest.hash_in_use(entry.sha256, entry.file_id):
            store.remove_object(entry.sha256)  # only if no other path links to it
    settle_dirs(manifest, store, removed)
    return removed


def drop_idle_partials(store: Store, file_id: str) -> int:
    """A file nobody claims any more: its partial download goes, unless another
    process is downloading it (it holds the key's lock; its own engine stops it when
    it sees the file unwanted). Not for the daemon's own process, where POSIX locks
    do not exclude its downloads: the daemon cancels those (Engine.cancel_unwanted)."""
    key = key_of(file_id)
    if not store.lock_key(key):
        return 0
    try:
        return store.discard_partials(key)
    finally:
        store.unlock_key(key)


def evict(manifest: Manifest, store: Store, entry: Entry, reason: str, *,
          unwant: bool = False, claims: Sequence[Claim] = ()) -> Removal:
    """Delete one file's links and object now; its row stays as `evicted` (the
    history). Returns the paths removed.

    With `unwant` (a ttl expiry, a file nobody wants) the local claims stop wanting
    it too. Unless a claim still wants the file when the row is written (the fleet's,
    or one made since `entry` was read; checked in that same transaction): then it is
    in `.kept`, its file already removed, so it is queued to come back. A release
    (`claims`: the claims it just dropped, whose links go too) evicts only a file
    left without claims. A plain eviction for space touches no claim
    (requeue_evicted brings it back)."""
    removed = remove_file(manifest, store, entry, claims)
    fields: dict[str, Any] = {"state": State.EVICTED, "path": None}
    event = NewEvent(EventKind.EVICT, provider=entry.resolved_provider,
                     destination=removed[0] if removed else None, bytes=entry.size,
                     sha256=entry.sha256, error=reason)
    if not (unwant or claims):
        manifest.record(entry.file_id, event, **fields)
        return Removal(removed)
    if not manifest.record_eviction(entry.file_id, event, ready_path=entry.path,
                                    expire=unwant, **fields):
        return Removal(kept={entry.file_id: _kept_by(manifest, entry.file_id)})
    return Removal(removed)
