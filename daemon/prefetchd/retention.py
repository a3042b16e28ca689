"""What to delete and when: a pure policy over the daemon's own records.

Input is the list of ready entries (nothing being downloaded is ever in it) and
numbers; output is a list of decisions with a reason each. No clock is read here:
`now` comes from the caller, and an entry whose last use lies in the future (the
clock was stepped backwards) simply has age 0, so nothing is deleted early.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from .records import Entry, State


@dataclass(frozen=True)
class Item:
    file_id: str
    sha256: str
    size: int
    wanted: bool
    pin: bool
    last_used: float  # the later of the last request and the download, daemon time
    ttl: float | None  # the entry's own ttl, else the default applies
    fleet_want: bool = False  # the group's wanted-set wants it: no ttl ends that
    expires_at: float | None = None  # when its last claim's ttl ends (each claim's own)


@dataclass(frozen=True)
class Decision:
    file_id: str
    kind: Literal["unwanted", "expired", "evicted"]
    reason: str


def _fmt(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n and seconds % n == 0:
            return f"{int(seconds // n)}{unit}"
    return f"{seconds:g}s"


def plan(  # noqa: PLR0913 - the policy's inputs, keyword-only and named at every call
    items: Iterable[Item],
    *,
    now: float,
    default_ttl: float,
    max_bytes: int | None = None,
    free_bytes: int | None = None,
    min_free_bytes: int = 0,
    need_bytes: int = 0,
) -> list[Decision]:
    """Decide which ready entries to delete.

    1. Pinned entries are never deleted.
    2. Entries no longer wanted go.
    3. Wanted entries whose TTL since last use ran out go, except those the fleet
       wants: a fleet poll never renews `last_used`, so a TTL would end the group's
       want a day after the file is ready, for good (its revision is applied). Only
       the group's unwant or forget ends a fleet want.
    4. While the store is over `max_bytes`, or free space (plus what this pass frees)
       is below `min_free_bytes + need_bytes`, the least recently used unpinned entries
       are evicted. Bytes count once per object: deleting one of two links to the
       same bytes frees nothing.
    5. A download's `need_bytes` is honoured only if evicting every unpinned entry
       would make it fit: a file that can never fit costs nobody their files.
    """
    items = list(items)
    tally = _Tally(items)
    keep = [it for it in items if not it.pin and not tally.unwanted_or_expired(
        it, now, default_ttl)]
    if need_bytes and free_bytes is not None and (
            free_bytes + tally.freed + evictable_bytes(keep, items)
            < min_free_bytes + need_bytes):
        need_bytes = 0  # eviction cannot make room for it: evict only for the reserve
    for it in sorted(keep, key=lambda i: (i.last_used, i.file_id)):
        why = tally.pressure(max_bytes, free_bytes, min_free_bytes, need_bytes)
        if why is None:
            break
        tally.drop(it, Decision(it.file_id, "evicted", f"least recently used; {why}"))
    return tally.out


class _Tally:
    """The decisions of one pass and the bytes they free: an object's bytes count
    once, and are freed when its last entry goes."""

    def __init__(self, items: list[Item]) -> None:
        self.users = Counter(i.sha256 for i in items)
        self.total = sum({i.sha256: i.size for i in items}.values())
        self.freed = 0
        self.out: list[Decision] = []

    def drop(self, item: Item, decision: Decision) -> None:
        self.out.append(decision)
        self.users[item.sha256] -= 1
        if self.users[item.sha256] == 0:
            self.total -= item.size
            self.freed += item.size

    def unwanted_or_expired(self, it: Item, now: float, default_ttl: float) -> bool:
        """Drop an unpinned entry no longer wanted or past its TTL; False: keep it."""
        if not it.wanted:
            self.drop(it, Decision(it.file_id, "unwanted", "no longer wanted"))
            return True
        if it.fleet_want:  # the group's unwant or forget ends it, never a ttl
            return False
        ttl = default_ttl if it.ttl is None else it.ttl
        age = max(0.0, now - it.last_used)
        # Each claim's own ttl from its own last request: the file lives while any
        # claim is within it (and, as ever, a ttl after the download).
        if age > ttl and (it.expires_at is None or now > it.expires_at):
            self.drop(it, Decision(it.file_id, "expired",
                                   f"not requested for {_fmt(round(age))} (ttl {_fmt(ttl)})"))
            return True
        return False

    def pressure(self, max_bytes: int | None, free_bytes: int | None, min_free_bytes: int,
                 need_bytes: int) -> str | None:
        """Why more must go, or None when the store is within its limits."""
        if max_bytes is not None and self.total > max_bytes:
            return f"store holds {self.total} bytes, over max_bytes {max_bytes}"
        if free_bytes is not None and free_bytes + self.freed < min_free_bytes + need_bytes:
            return (f"free space {free_bytes + self.freed} below the reserve "
                    f"{min_free_bytes}" + (f" + {need_bytes} needed" if need_bytes else ""))
        return None


def evictable_bytes(candidates: Iterable[Item], everything: Iterable[Item]) -> int:
    """Bytes freed if every candidate went: objects that no pinned (or other kept)
    entry of `everything` outside the candidates still links to."""
    cands = list(candidates)
    ids = {i.file_id for i in cands}
    held = {i.sha256 for i in everything if i.file_id not in ids and i.pin}
    sizes = {i.sha256: i.size for i in cands if i.sha256 not in held}
    return sum(sizes.values())


def items_from_entries(entries: Iterable[Entry],
                       expiry: Mapping[str, float] | None = None) -> list[Item]:
    """Manifest entries in state ready -> policy items; `expiry`: file_id -> when its
    last claim's ttl runs out (Manifest.claim_expiry)."""
    expiry = expiry or {}
    return [
        Item(
            file_id=e.file_id,
            sha256=e.sha256,
            size=e.size or 0,
            wanted=e.wanted,
            pin=e.pin,
            last_used=max(e.requested_at or 0.0, e.ready_at or 0.0),
            ttl=e.ttl,
            fleet_want=e.fleet_want,
            expires_at=expiry.get(e.file_id),
        )
        for e in entries
        if e.state == State.READY and e.sha256
    ]
