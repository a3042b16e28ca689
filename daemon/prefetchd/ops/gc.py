"""gc: one retention pass. The policy (prefetchd.retention) decides; this applies it,
then removes links no entry accounts for and objects nothing links to."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

from .. import retention
from ..config import Settings
from ..manifest import Manifest
from ..retention import Item
from ..shapes import GcDeletion, GcResult
from ..store import Store
from .release import evict
from .strays import remove_stray_links


def gc(settings: Settings, manifest: Manifest, store: Store, *, dry_run: bool = False,
       now: float | None = None, need_bytes: int = 0) -> GcResult:
    """Delete what the policy says (make room for `need_bytes` more when a download
    ran out of space), then unreferenced objects; with `dry_run`, only say what."""
    ret = settings.retention
    now = time.time() if now is None else now
    free = free_bytes(store) if ret.min_free_bytes or need_bytes else None
    # Two reads of the ready entries as the manifest streams them (retention.Pass):
    # a pass over a million entries holds its decisions, not the entries.
    decisions = retention.Pass(
        manifest.ready_objects(), now=now, default_ttl=ret.ttl, max_bytes=ret.max_bytes,
        free_bytes=free, min_free_bytes=ret.min_free_bytes, need_bytes=need_bytes,
    ).run(manifest.retention_items(ret.ttl),
          _lazy(lambda: manifest.retention_items(ret.ttl, by_last_use=True)))
    entries = manifest.rows_for([d.file_id for d in decisions])
    kept: set[str] = set()
    if not dry_run:
        for d in decisions:
            # An expiry or an unwanted entry ends its wants, unless the fleet wanted it
            # meanwhile (then it stays, kept); an eviction for space ends none.
            done = evict(manifest, store, entries[d.file_id], d.reason,
                         unwant=d.kind != "evicted")
            kept.update(done.kept)
    deleted: list[GcDeletion] = [
        {"file_id": d.file_id, "path": entries[d.file_id].path, "kind": d.kind,
         "reason": d.reason} for d in decisions if d.file_id not in kept]
    # Links no entry accounts for (a crash between link and record) keep objects
    # alive for ever; older than a download's link-then-record window, they go.
    strays = remove_stray_links(manifest, store, dry_run=dry_run)
    unlinked = store.unreferenced()
    in_use = manifest.ready_hashes_among(unlinked)
    objects = [sha for sha in unlinked if sha not in in_use]
    if not dry_run:
        for sha in objects:
            store.remove_object(sha)
    return {"deleted": deleted, "objects_removed": objects, "strays_removed": strays}


def _lazy(make: Callable[[], Iterator[Item]]) -> Iterator[Item]:
    """The items `make` gives, asked for only when the first one is wanted (the least
    recently used order costs a sort, and most passes never need it)."""
    yield from make()


def requeue_evicted(settings: Settings, manifest: Manifest, store: Store) -> int:
    """Queue again wanted entries evicted for space that fit in what is free above the
    reserve now; returns how many."""
    room = free_bytes(store) - settings.retention.min_free_bytes
    return manifest.requeue_evicted(room)


def free_bytes(store: Store) -> int:
    st = os.statvfs(store.root)
    return st.f_bavail * st.f_frsize

