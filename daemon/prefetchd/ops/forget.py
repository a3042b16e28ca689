"""forget: drop claims entirely (options, and the file with its last claim); events stay.

A holder forgets only its own claims (an admin's `every`: each local claim of the
file); a file other claims hold keeps its row and its file, and only the forgotten
claim's own link goes. The fleet forgets only the group's claim.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..manifest import Manifest, WantSpec
from ..manifest.wanted import Named
from ..records import Removal
from ..requests import Request
from ..store import Store
from .release import chosen_claims
from .want import apply


def forget(manifest: Manifest, store: Store, file_ids: Sequence[str], *,  # noqa: PLR0913
           holder: str | None = None, every: bool = False,
           in_daemon: bool = False) -> Removal:
    """Drop the holder's claims on these files (with `every`, each local claim), and a
    file with its last claim (its links and object; its events stay). An id that is
    unknown, or that the holder holds no claim on, is an error and nothing changes.
    Returns the paths removed, with `.kept`: files other claims still hold."""
    chosen = chosen_claims(manifest, file_ids, holder=holder, every=every, verb="forget")
    out = Removal()
    holders = dict.fromkeys(c.holder for cs in chosen.values() for c in cs)
    for h in holders:
        ids: list[Named] = [fid for fid, cs in chosen.items()
                            if any(c.holder == h for c in cs)]
        done = apply(manifest, store, Request(forgets=ids), holder=h, in_daemon=in_daemon)
        out.extend(done)
        out.kept.update(done.kept)
    for fid in [f for f in out.kept if manifest.get(f) is None]:
        del out.kept[fid]  # a later holder's forget took the file's last claim
    return out


def apply_fleet(manifest: Manifest, store: Store, specs: Sequence[WantSpec],  # noqa: PLR0913
                unwants: Sequence[Named], forgets: Sequence[Named],
                revision: int | None, holder: str) -> Removal:
    """One batch of the fleet's wanted-set changes, as the fleet sync applies it, for
    the group's `holder` (`fleet:<group>`), with the `revision` mark in the same
    transaction (None: no mark). Returns what `apply` returns."""
    return apply(manifest, store, Request(wants=list(specs), unwants=list(unwants),
                                          forgets=list(forgets)),
                 holder=holder, in_daemon=True, revision=revision)
