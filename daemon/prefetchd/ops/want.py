"""want, unwant, and applying one validated request (CLI, inbox, API), for one holder.

Requests are validated before they get here (prefetchd.requests); these change the
holder's claims in the manifest and the links of files that are ready already: a
claim's dest is linked at once, a changed dest moves only that claim's link.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import PrefetchError
from ..links import claim_link, sync
from ..manifest import Manifest, WantSpec, own_holder
from ..manifest.wanted import Named, pair
from ..records import Removal, State
from ..requests import Request
from ..store import Store
from .release import chosen_claims, drop_idle_partials, remove_file


def want(manifest: Manifest, store: Store, specs: Sequence[WantSpec], *,
         holder: str | None = None) -> None:
    """Make or change the holder's claims (a spec may name its own sub-holder)."""
    apply(manifest, store, Request(wants=list(specs)), holder=holder)


def unwant(manifest: Manifest, file_ids: Sequence[str], *, holder: str | None = None) -> None:
    """The holder no longer wants these (retention deletes a file nobody wants, later);
    an id the holder has no claim on is an error, and nothing changes then."""
    chosen_claims(manifest, file_ids, holder=holder, every=False, verb="unwant")
    unknown = manifest.unwant(file_ids, holder=holder)
    if unknown:
        raise PrefetchError(f"not in the manifest: {', '.join(unknown)}")


def apply(manifest: Manifest, store: Store, request: Request, *,
          holder: str | None = None, in_daemon: bool = False,
          revision: int | None = None) -> Removal:
    """Apply one validated request for `holder` (None: this process's uid): the files
    of forgotten claims that were their file's last go first, then one manifest
    transaction, then the links of files that are ready. Returns the paths removed,
    with `.kept`: forgotten files other claims still hold. With `revision` (the
    fleet sync), the fleet's revision mark is written in the same transaction.

    Files before rows: a crash in between leaves a ready row without its file,
    which the daemon re-links or re-fetches at start (and a forget can be given
    again), rather than a file that no row knows and nothing would ever delete.
    """
    who = holder or own_holder()
    removed, gone = _forgotten_files(manifest, store, request.forgets, who)
    for fid, links in _old_links(manifest, request.wants, who).items():
        gone.setdefault(fid, []).extend(links)
    if revision is None:
        result = manifest.apply(request.wants, request.unwants, request.forgets, holder=who)
    else:
        result = manifest.apply_fleet(request.wants, request.unwants, request.forgets,
                                      revision, who)
    for fid in result.kept:
        if fid in removed:  # claimed again meanwhile: its file comes back
            manifest.update(fid, state=State.QUEUED, path=None, next_attempt_at=None)
    _relink(manifest, store, request, gone, removed)
    if not in_daemon:
        for fid in [f for f in removed if manifest.get(f) is None]:
            drop_idle_partials(store, fid)
    return Removal([p for ps in removed.values() for p in ps], result.kept)


def _relink(manifest: Manifest, store: Store, request: Request,
            gone: dict[str, list[str]], removed: dict[str, list[str]]) -> None:
    """Links of ready files after a request: each claim's place made, the places no
    claim names any more removed (added to `removed`)."""
    for fid, links in gone.items():
        removed.setdefault(fid, []).extend(sync(manifest, store, fid, gone=links))
    wanted = {s.file_id for s in request.wants} - gone.keys()
    for fid in manifest.ready_among(wanted):  # only their ids: a bulk want is mostly new
        sync(manifest, store, fid)


def _forgotten_files(manifest: Manifest, store: Store, forgets: Sequence[Named],
                     holder: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Before `holder` forgets these: the links of files whose last claim goes are
    removed (their rows are about to go); returns (file_id -> paths removed,
    file_id -> the forgotten claims' own links, for files other claims keep)."""
    removed: dict[str, list[str]] = {}
    gone: dict[str, list[str]] = {}
    by_file: dict[str, set[str]] = {}
    for fid, who in (pair(f, holder) for f in forgets):
        by_file.setdefault(fid, set()).add(who)
    for fid, whose in by_file.items():
        entry = manifest.get(fid)
        if entry is None:
            continue
        claims = manifest.claims_of(fid)
        mine = [c for c in claims if c.holder in whose]
        if not mine:
            continue
        if len(claims) == len(mine):
            removed[fid] = remove_file(manifest, store, entry, mine)
        elif entry.state == State.READY:
            gone[fid] = [claim_link(entry, c) for c in mine]
    return removed, gone


def _old_links(manifest: Manifest, specs: Sequence[WantSpec],
               holder: str) -> dict[str, list[str]]:
    """Where the claims these wants change are linked now, for ready files whose
    claim names a new dest (the old link goes when no claim names it)."""
    out: dict[str, list[str]] = {}
    moving = [s for s in specs if s.dest is not None]
    if not moving:
        return out
    entries = manifest.rows_for({s.file_id for s in moving})
    for s in moving:
        e = entries.get(s.file_id)
        if e is None or e.state != State.READY:
            continue
        c = manifest.claim(s.file_id, s.holder or holder)
        if c is not None and claim_link(e, c) != s.dest:
            out.setdefault(s.file_id, []).append(claim_link(e, c))
    return out
