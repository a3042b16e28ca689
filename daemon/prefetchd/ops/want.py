"""want, unwant, and applying one validated request (CLI, inbox, API).

Requests are validated before they get here (prefetchd.requests); these only change
the manifest, and for a forget the file it had placed.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import PrefetchError
from ..manifest import Manifest
from ..records import Removal, WantSource
from ..requests import Request
from ..store import Store
from .release import remove_forgotten_files, requeue_kept


def unwant(manifest: Manifest, file_ids: Sequence[str]) -> None:
    """Mark entries not wanted (retention deletes them later); unknown ids are an error."""
    unknown = manifest.unwant(file_ids)
    if unknown:
        raise PrefetchError(f"not in the manifest: {', '.join(unknown)}")


def apply(manifest: Manifest, store: Store, request: Request, *,
          source: WantSource = WantSource.LOCAL) -> Removal:
    """Apply one validated request from `source`: forgotten entries' files go first,
    then one manifest transaction; returns the paths removed, with `.kept`: the
    forgotten entries the other source still wants (row, options and file stay).

    Files before rows: a crash in between leaves a ready row without its file,
    which the daemon re-links or re-fetches at start (and a forget can be given
    again), rather than a file that no row knows and nothing would ever delete.
    """
    src = WantSource(source)
    removed = remove_forgotten_files(manifest, store, request.forgets, src)
    result = manifest.apply(request.wants, request.unwants, request.forgets, source=src)
    requeue_kept(manifest, removed, result)
    return Removal(removed.values(), result.kept)
