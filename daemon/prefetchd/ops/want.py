"""want, unwant, and applying one validated request (CLI, inbox, API).

Requests are validated before they get here (prefetchd.requests); these only change
the manifest, and for a forget the file it had placed.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import PrefetchError
from ..manifest import Manifest
from ..requests import Request
from ..store import Store
from .release import remove_file


def unwant(manifest: Manifest, file_ids: Sequence[str]) -> None:
    """Mark entries not wanted (retention deletes them later); unknown ids are an error."""
    unknown = manifest.unwant(file_ids)
    if unknown:
        raise PrefetchError(f"not in the manifest: {', '.join(unknown)}")


def apply(manifest: Manifest, store: Store, request: Request) -> list[str]:
    """Apply one validated request: forgotten entries' files go first, then one
    manifest transaction; returns the paths removed.

    Files before rows: a crash in between leaves a ready row without its file,
    which the daemon re-links or re-fetches at start (and a forget can be given
    again), rather than a file that no row knows and nothing would ever delete.
    """
    removed = []
    for fid in dict.fromkeys(request.forgets):
        entry = manifest.get(fid)
        if entry is not None and (path := remove_file(manifest, store, entry)):
            removed.append(path)
    manifest.apply(request.wants, request.unwants, request.forgets)
    return removed
