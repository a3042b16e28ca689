"""forget: remove entries entirely (options, state, a ready file); events stay."""

from __future__ import annotations

from collections.abc import Sequence

from ..manifest import Manifest
from ..requests import Request
from ..store import Store
from .release import known_entries
from .want import apply


def forget(manifest: Manifest, store: Store, file_ids: Sequence[str]) -> list[str]:
    """Remove the entries with their options and state, and a ready file at its
    destination (like release). Their events stay; their objects stay while other
    entries link them. An id not in the manifest is an error and nothing changes.
    Returns the paths removed."""
    known_entries(manifest, file_ids)
    return apply(manifest, store, Request(forgets=list(file_ids)))
