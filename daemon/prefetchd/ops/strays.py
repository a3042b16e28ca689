"""Links no manifest entry accounts for: found from link counts, then removed.

A materialized file is a hard link to its object, so an object's link count minus
one is how many paths link to it. A crash between linking a file and recording it
(or between recording a move and unlinking the old place) can leave a link that no
entry names; it keeps its object alive for ever, since retention only deletes what
entries name and an object with a link is never unreferenced. Start-up
reconciliation and `gc` remove such links. The search is bounded: only objects with
more links than entries account for are looked for, first where entries live.
"""

from __future__ import annotations

from ..log import get_logger
from ..manifest import Manifest
from ..store import Store

log = get_logger("prefetchd.ops.strays")

STRAY_MIN_AGE = 600.0  # seconds: a link made by a download in flight is recorded soon after


def remove_stray_links(manifest: Manifest, store: Store, *, min_age: float = STRAY_MIN_AGE,
                       dry_run: bool = False) -> list[str]:
    """Remove links to objects that no entry accounts for; returns their paths.

    `min_age` spares objects whose link count changed recently (a concurrent download
    links before it records); start-up reconciliation, before any download, uses 0.
    """
    found = store.stray_links(manifest.accounted_links(), manifest.named_dirs(), min_age)
    removed: list[str] = []
    for rel, sha in found:
        if dry_run or store.unlink(rel, sha):
            removed.append(rel)
            log.info("stray_link_removed" if not dry_run else "stray_link", path=rel,
                     sha256=sha)
    return removed
