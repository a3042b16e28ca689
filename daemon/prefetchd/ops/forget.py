"""forget: remove entries entirely (options, state, a ready file); events stay.

A forget comes from one source (a local user, or the fleet's wanted-set): an entry
the other source still wants only loses this source's want, and keeps its row, its
options and its file.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..manifest import Manifest, WantSpec
from ..records import Removal, WantSource
from ..requests import Request
from ..store import Store
from .release import known_entries, remove_forgotten_files, requeue_kept
from .want import apply


def forget(manifest: Manifest, store: Store, file_ids: Sequence[str], *,
           source: WantSource = WantSource.LOCAL) -> Removal:
    """Remove the entries with their options and state, and a ready file at its
    destination (like release). Their events stay; their objects stay while other
    entries link them. An id not in the manifest is an error and nothing changes.
    Returns the paths removed, with `.kept`: the entries the other source still
    wants (only this source's want went)."""
    known_entries(manifest, file_ids)
    return apply(manifest, store, Request(forgets=list(file_ids)), source=source)


def forget_fleet(manifest: Manifest, store: Store, file_ids: Sequence[str]) -> Removal:
    """The fleet forgets these: like `forget`, but an id this host never had is no
    error (the group's set names files a host may not have seen)."""
    return apply_fleet(manifest, store, [], [], file_ids, revision=None)


def apply_fleet(manifest: Manifest, store: Store, specs: Sequence[WantSpec],
                unwants: Sequence[str], forgets: Sequence[str],
                revision: int | None) -> Removal:
    """One batch of the fleet's wanted-set changes, as the fleet sync applies it: the
    files of forgotten entries no local user wants go first, then the wants, unwants
    and forgets with source `fleet` and the `revision` mark in one transaction (None:
    no mark). Returns the paths removed, with `.kept`: forgotten entries a local user
    still wants (their row and file stay, only the fleet's want went)."""
    removed = remove_forgotten_files(manifest, store, forgets, WantSource.FLEET)
    if revision is None:
        result = manifest.apply(specs, unwants, forgets, source=WantSource.FLEET)
    else:
        result = manifest.apply_fleet(specs, unwants, forgets, revision)
    requeue_kept(manifest, removed, result)
    return Removal(removed.values(), result.kept)
