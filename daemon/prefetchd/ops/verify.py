"""verify and scrub: re-hash stored objects; a bad one is quarantined and every entry
that used it queued again (the daemon's workers, or the caller, fetch it again)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..errors import PrefetchError
from ..links import all_links
from ..manifest import Manifest
from ..records import Entry, EventKind, NewEvent, State
from ..shapes import ScrubResult, VerifyRow
from ..store import Store


def verify(manifest: Manifest, store: Store,
           file_ids: Sequence[str] | None = None) -> tuple[list[VerifyRow], list[str]]:
    """Re-hash these ready files (all when None) now; quarantine bad objects.

    Returns the report (`verify --json`) and the wanted file_ids queued again because
    their object was bad, for a caller without a daemon to fetch them itself.
    """
    if file_ids:
        found = manifest.rows_for(set(file_ids))
        entries = sorted((e for e in found.values() if e.state == State.READY),
                         key=lambda e: e.file_id)
        unknown = set(file_ids) - {e.file_id for e in entries}
        if unknown:
            raise PrefetchError(f"not ready, nothing to verify: {', '.join(sorted(unknown))}")
    else:
        entries = manifest.rows(State.READY)  # the report names every one
    bad = {sha for sha in {e.sha256 for e in entries if e.sha256}
           if store.object_stat(sha) is None or store.hash_object(sha) != sha}
    # Every entry on a bad object loses its link, not only the ones asked about.
    affected = manifest.ready_on(bad)
    _quarantine(manifest, store, affected, bad)
    report: list[VerifyRow] = [
        {"file_id": e.file_id, "ok": e.sha256 not in bad, "sha256": e.sha256}
        for e in entries]
    return report, [e.file_id for e in affected if e.wanted]


def _quarantine(manifest: Manifest, store: Store, affected: list[Entry],
                bad: set[str]) -> None:
    """Unlink every link of every file on a bad object (each claim's too), move the
    object aside, and record each file as queued (wanted) or quarantined."""
    claims = manifest.claims_for([e.file_id for e in affected])
    for e in affected:
        for rel in sorted(all_links(e, claims.get(e.file_id, []))):
            store.unlink(rel, e.sha256)
    for sha in bad:
        if store.object_stat(sha) is not None:
            store.quarantine(sha)
    for e in affected:
        manifest.record(
            e.file_id, NewEvent(EventKind.QUARANTINE, provider=e.resolved_provider,
                                sha256=e.sha256, error="sha256 mismatch on verify"),
            state=State.QUEUED if e.wanted else State.QUARANTINED, sha256=None, path=None,
            error="stored object failed verification; re-fetching",
        )


def scrub(manifest: Manifest, store: Store, budget_bytes: int,
          budget_seconds: float) -> ScrubResult:
    """Re-hash objects, oldest-verified first, within a budget; handle the bad ones.

    The budget is checked before each object, so one run hashes at most one object
    past it. Bad objects go through `verify` (quarantine; the daemon re-fetches).
    """
    started = time.monotonic()
    done_bytes = 0
    good: list[str] = []
    bad: list[str] = []
    for sha in manifest.scrub_order():
        if done_bytes >= budget_bytes or time.monotonic() - started >= budget_seconds:
            break
        st = store.object_stat(sha)
        if st is not None and store.hash_object(sha) == sha:
            good.append(sha)
        else:
            bad.append(sha)
        done_bytes += st.st_size if st is not None else 0
    manifest.mark_verified(good)
    affected = [e.file_id for e in manifest.ready_on(bad)]
    if affected:
        verify(manifest, store, affected)
    return {"objects": len(good) + len(bad), "bytes": done_bytes, "bad": bad,
            "requeued": affected}
