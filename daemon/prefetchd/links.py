"""A ready file's links, one per place its claims name.

Every claim's dest is a hard link to the one object; claims without a dest share the
default `downloads/<id>/<name>`. A download publishes the file at its first good
claim's place (`files.dest`, else the default); `sync` then makes the links the other
claims name, removes the ones no claim names any more, and the directories prefetchd
made for them once they are empty. A claim whose own sha256/size does not match the
file gets no link.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .errors import StoreError, UnsafePathError
from .log import get_logger
from .manifest import Manifest
from .manifest.claims import claim_link
from .records import Claim, Entry, State
from .store import Store, default_link

log = get_logger("prefetchd.fetch")


def targets(entry: Entry, claims: Sequence[Claim]) -> list[str]:
    """The links a ready file should have, the first good claim's first; never empty
    (a file every claim refused keeps its default link, where nobody's dest is)."""
    return wanted_links(entry.file_id, entry.name, ((c.dest, c.error) for c in claims))


def wanted_links(file_id: str, name: str | None,
                 places: Iterable[tuple[str | None, str | None]]) -> list[str]:
    """targets() from the claims' (dest, error) alone: each good claim's dest, else the
    default link (also when no claim is good). The group commit asks it for a group
    read in one query (Manifest.claim_places)."""
    default = default_link(file_id, name)
    out = list(dict.fromkeys(dest or default for dest, error in places if error is None))
    return out or [default]


def all_links(entry: Entry, claims: Sequence[Claim]) -> set[str]:
    """Every place a file may be linked at now: its published path, and every claim's."""
    found = {claim_link(entry, c) for c in claims}
    if entry.path:
        found.add(entry.path)
    return found


def sync(manifest: Manifest, store: Store, file_id: str, gone: Iterable[str] = (),  # noqa: PLR0913
         linked: str | None = None, old_sha: str | None = None) -> list[str]:
    """Make a ready file's links what its claims name now (see the module docstring);
    `gone` are places claims named before (a changed dest, a released claim), and
    `linked` one known to be in place already (the download just made it), `old_sha`
    the object the file had before (its old links go too). Returns
    the links removed. A file that is not ready is left alone."""
    e = manifest.get(file_id)
    if e is None or e.state != State.READY or not e.sha256:
        return []
    claims = manifest.claims_of(file_id)
    want = targets(e, claims)
    for rel in want:
        if rel != linked:
            _link_for(manifest, store, e, rel, claims)
    old = (set(gone) | ({e.path} if e.path else set())) - set(want)
    removed = [rel for rel in sorted(old) if store.unlink(rel, e.sha256)
               or (old_sha is not None and store.unlink(rel, old_sha))]
    if e.path != want[0]:
        manifest.update(file_id, path=want[0])
    settle_dirs(manifest, store, removed)
    return removed


def _link_for(manifest: Manifest, store: Store, e: Entry, rel: str,
              claims: Sequence[Claim]) -> None:
    """Link one claim's place; a place the store refuses (another file sits there)
    fails the claims that name it, not the file."""
    assert e.sha256 is not None
    try:
        store.link(e.sha256, rel)
    except (StoreError, UnsafePathError, OSError) as err:
        holders = [c.holder for c in claims if c.dest == rel]
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        log.warning("claim_link_failed", file_id=e.file_id, dest=rel, error=reason)
        manifest.fail_claims(e.file_id, holders, f"{e.file_id}: dest {rel}: {reason}")


def settle_dirs(manifest: Manifest, store: Store, removed: Sequence[str]) -> None:
    """Record the directories links were made in, and remove those prefetchd made
    that the `removed` links left empty."""
    manifest.add_made_dirs(store.take_made_dirs())
    for rel in removed:
        parents = _parents(rel)
        made = manifest.made_among(parents)
        if made:
            manifest.forget_dirs(store.remove_empty_dirs(rel, made))


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[:n]) for n in range(len(parts), 0, -1)]
