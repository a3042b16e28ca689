"""What to delete and when: a pure policy over the daemon's own records.

Input is the ready entries (nothing being downloaded is ever in it) and numbers;
output is a list of decisions with a reason each. `Pass` reads the entries twice
as the manifest streams them, holding only its decisions and the few objects
several entries share, so a pass over a million entries stays small. No clock is read here:
`now` comes from the caller, and an entry whose last use lies in the future (the
clock was stepped backwards) simply has age 0, so nothing is deleted early.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal


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

    The items in memory; `Pass` is the same policy over items read twice (the
    manifest's cursors: gc at a million entries holds none of them).
    """
    items = list(items)
    return Pass(Objects.of(items), now=now, default_ttl=default_ttl, max_bytes=max_bytes,
                free_bytes=free_bytes, min_free_bytes=min_free_bytes,
                need_bytes=need_bytes).run(
        items, sorted(items, key=lambda i: (i.last_used, i.file_id)))


@dataclass(frozen=True)
class Objects:
    """What a pass needs to know of all the ready entries' objects at once: their bytes
    (each object once) and the objects more than one entry links to (with how many).
    Small whatever the number of entries: shared objects are few."""

    total: int
    shared: Mapping[str, int]

    @classmethod
    def of(cls, items: Iterable[Item]) -> Objects:
        sizes: dict[str, int] = {}
        users: Counter[str] = Counter()
        for i in items:
            sizes[i.sha256] = i.size
            users[i.sha256] += 1
        return cls(sum(sizes.values()), {h: n for h, n in users.items() if n > 1})


class Pass:
    """One retention pass over items read twice: once in any order (what is unwanted
    or expired; what eviction could free), then, only if the store is still over its
    limits, in least recently used order (what is evicted). Memory: the decisions and
    the shared objects, never the items."""

    def __init__(self, objects: Objects, *, now: float, default_ttl: float,  # noqa: PLR0913
                 max_bytes: int | None = None, free_bytes: int | None = None,
                 min_free_bytes: int = 0, need_bytes: int = 0) -> None:
        self.now, self.default_ttl = now, default_ttl
        self.max_bytes, self.free_bytes = max_bytes, free_bytes
        self.min_free_bytes, self.need_bytes = min_free_bytes, need_bytes
        self.tally = _Tally(objects)

    def run(self, items: Iterable[Item], by_last_use: Iterable[Item]) -> list[Decision]:
        """`items`: every ready item; `by_last_use`: the same, by (last_used, file_id),
        read only when eviction may be needed."""
        tally = self.tally
        evictable = _Evictable(tally.shared)
        for it in items:
            if it.pin:
                evictable.pinned(it)
            elif not tally.unwanted_or_expired(it, self.now, self.default_ttl):
                evictable.candidate(it)
        need = self.need_bytes
        if need and self.free_bytes is not None and (
                self.free_bytes + tally.freed + evictable.bytes()
                < self.min_free_bytes + need):
            need = 0  # eviction cannot make room for it: evict only for the reserve
        if tally.pressure(self.max_bytes, self.free_bytes, self.min_free_bytes, need) is None:
            return tally.out
        for it in by_last_use:
            if it.pin or tally.would_drop(it, self.now, self.default_ttl):
                continue  # pinned, or dropped by the first read
            why = tally.pressure(self.max_bytes, self.free_bytes, self.min_free_bytes, need)
            if why is None:
                break
            tally.drop(it, Decision(it.file_id, "evicted", f"least recently used; {why}"))
        return tally.out


class _Tally:
    """The decisions of one pass and the bytes they free: an object's bytes count
    once, and are freed when its last entry goes."""

    def __init__(self, objects: Objects) -> None:
        self.shared = objects.shared
        self.users = Counter(objects.shared)  # entries left per shared object
        self.total = objects.total
        self.freed = 0
        self.out: list[Decision] = []

    def drop(self, item: Item, decision: Decision) -> None:
        self.out.append(decision)
        if item.sha256 in self.users:
            self.users[item.sha256] -= 1
            if self.users[item.sha256] > 0:
                return
        self.total -= item.size
        self.freed += item.size

    def would_drop(self, it: Item, now: float, default_ttl: float) -> str | None:
        """Why an unpinned entry goes as unwanted or expired; None: it stays."""
        if not it.wanted:
            return "no longer wanted"
        if it.fleet_want:  # the group's unwant or forget ends it, never a ttl
            return None
        ttl = default_ttl if it.ttl is None else it.ttl
        age = max(0.0, now - it.last_used)
        # Each claim's own ttl from its own last request: the file lives while any
        # claim is within it (and, as ever, a ttl after the download).
        if age > ttl and (it.expires_at is None or now > it.expires_at):
            return f"not requested for {_fmt(round(age))} (ttl {_fmt(ttl)})"
        return None

    def unwanted_or_expired(self, it: Item, now: float, default_ttl: float) -> bool:
        """Drop an unpinned entry no longer wanted or past its TTL; False: keep it."""
        why = self.would_drop(it, now, default_ttl)
        if why is None:
            return False
        self.drop(it, Decision(it.file_id, "unwanted" if not it.wanted else "expired", why))
        return True

    def pressure(self, max_bytes: int | None, free_bytes: int | None, min_free_bytes: int,
                 need_bytes: int) -> str | None:
        """Why more must go, or None when the store is within its limits."""
        if max_bytes is not None and self.total > max_bytes:
            return f"store holds {self.total} bytes, over max_bytes {max_bytes}"
        if free_bytes is not None and free_bytes + self.freed < min_free_bytes + need_bytes:
            return (f"free space {free_bytes + self.freed} below the reserve "
                    f"{min_free_bytes}" + (f" + {need_bytes} needed" if need_bytes else ""))
        return None


class _Evictable:
    """Bytes freed if every candidate (unpinned, kept by the first read) went: objects
    no pinned entry links to. An object only one entry links to is its own; the
    shared ones are remembered by hash."""

    def __init__(self, shared: Mapping[str, int]) -> None:
        self.shared = shared
        self.own = 0
        self.candidates: dict[str, int] = {}  # shared object -> its size
        self.held: set[str] = set()            # shared objects a pinned entry links to

    def candidate(self, it: Item) -> None:
        if it.sha256 in self.shared:
            self.candidates[it.sha256] = it.size
        else:
            self.own += it.size

    def pinned(self, it: Item) -> None:
        if it.sha256 in self.shared:
            self.held.add(it.sha256)

    def bytes(self) -> int:
        return self.own + sum(n for h, n in self.candidates.items() if h not in self.held)
