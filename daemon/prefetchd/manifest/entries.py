"""What is: reading entries and their states, and the changes that carry no event."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

from ..records import Entry, State
from ..retention import Item, Objects
from ..store import default_link
from .base import Base

# The entries a retention pass weighs: ready, with their bytes stored.
_RETAINED = "state = 'ready' AND sha256 IS NOT NULL AND sha256 != ''"


# A default link, downloads/<id>/<name>: exactly two components below downloads/.
_DEFAULT_LINK = "(path GLOB 'downloads/*/*' AND NOT path GLOB 'downloads/*/*/*')"


class AccountedLinks(dict[str, set[str]]):
    """Manifest.accounted_links() as the store's stray search reads it: `get(sha)`
    while walking objects/<ab>/ directory by directory. It holds one directory's worth
    (the hashes starting with the same two digits), loaded when the walk reaches it:
    1/256 of a million objects' links, not all of them."""

    def __init__(self, load: Callable[[str], dict[str, set[str]]]) -> None:
        super().__init__()
        self._load = load
        self._prefix: str | None = None

    def get(self, sha: str, default: Any = None) -> Any:
        prefix = sha[:2]
        if prefix != self._prefix:
            self.clear()
            self.update(self._load(prefix))
            self._prefix = prefix
        return super().get(sha, default)


class Entries(Base):
    """Entries as the engine, retention, scrub and the fronts read and move them."""

    # -- reads ---------------------------------------------------------------------------

    def get(self, file_id: str) -> Entry | None:
        rows = self.rows_of("SELECT * FROM files WHERE file_id = ?", [file_id])
        return Entry.from_row(rows[0]) if rows else None

    def rows(self, state: str | None = None) -> list[Entry]:
        if state:
            rows = self.rows_of("SELECT * FROM files WHERE state = ? ORDER BY file_id",
                                 [state])
        else:
            rows = self.rows_of("SELECT * FROM files ORDER BY file_id")
        return [Entry.from_row(r) for r in rows]

    def files_after(self, after: str, limit: int, state: str | None = None) -> list[Entry]:
        """At most `limit` entries whose file_id sorts after `after`, in file_id order
        (`ls`, a page at a time). Walks the primary key from `after`; `+state` keeps
        the state's index out of it (that index would sort the whole state per page)."""
        if state is None:
            rows = self.rows_of("SELECT * FROM files WHERE file_id > ? ORDER BY file_id"
                                 " LIMIT ?", [after, limit])
        else:
            rows = self.rows_of("SELECT * FROM files WHERE file_id > ? AND +state = ?"
                                 " ORDER BY file_id LIMIT ?", [after, state, limit])
        return [Entry.from_row(r) for r in rows]

    def due(self, now: float | None = None, limit: int | None = None,
            exclude: Collection[str] = ()) -> list[Entry]:
        """Wanted entries the engine should work on now, oldest request first.

        `limit` and `exclude` (the entries already handed to workers, a bounded set)
        let the daemon take a few at a time: each take walks the (state, requested_at)
        index, so its cost does not grow with the length of the queue.
        """
        now = time.time() if now is None else now
        skip = list(exclude)
        marks = ",".join("?" * len(skip))
        not_in = f" AND file_id NOT IN ({marks})" if skip else ""
        lim = f" LIMIT {int(limit)}" if limit is not None else ""
        # Retries that are due first (few, and they have waited), then the queue.
        retrying = [Entry.from_row(r) for r in self.rows_of(
            "SELECT * FROM files WHERE state = 'retrying' AND wanted = 1"
            " AND coalesce(next_attempt_at, 0) <= ?" + not_in + " ORDER BY requested_at" + lim,
            [now, *skip])]
        if limit is not None:
            if len(retrying) >= limit:
                return retrying
            lim = f" LIMIT {int(limit) - len(retrying)}"
        # A queued entry deferred (another host is downloading it) waits for its time;
        # deferred entries are few, so skipping them keeps the walk short.
        return retrying + [Entry.from_row(r) for r in self.rows_of(
            "SELECT * FROM files WHERE state = 'queued' AND wanted = 1"
            " AND coalesce(next_attempt_at, 0) <= ?" + not_in
            + " ORDER BY requested_at" + lim, [now, *skip])]

    def changed_since(self, ts: float, limit: int, after_id: str = "") -> list[Entry]:
        """Entries changed at or after `ts`, oldest change first, at most `limit`: the
        fleet reporter's page (index on (updated_at, file_id)).

        Without `after_id`, entries changed exactly at `ts` come again (a report is an
        idempotent upsert); with the last page's last (updated_at, file_id) as
        (`ts`, `after_id`), the next page starts right after it, so a page full of
        one timestamp cannot stall the reporter. `updated_at` is stamped once the
        write lock is held (within a transaction's length of its commit), so a
        watermark kept a second behind the clock misses nothing.
        """
        return [Entry.from_row(r) for r in self.rows_of(
            "SELECT * FROM files WHERE (updated_at, file_id) > (?, ?)"
            " ORDER BY updated_at, file_id LIMIT ?", [ts, after_id, limit])]

    def rows_for(self, file_ids: Collection[str]) -> dict[str, Entry]:
        """The entries of these file_ids (missing ones absent), in batches of 500."""
        ids = list(file_ids)
        out: dict[str, Entry] = {}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            for row in self.rows_of(
                    f"SELECT * FROM files WHERE file_id IN ({','.join('?' * len(part))})", part):
                out[row["file_id"]] = Entry.from_row(row)
        return out

    def ready_among(self, file_ids: Collection[str]) -> list[str]:
        """Those of these file_ids whose file is ready, 500 a read."""
        ids = list(dict.fromkeys(file_ids))
        out: list[str] = []
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            out += [r[0] for r in self.conn.execute(
                f"SELECT file_id FROM files WHERE file_id IN ({','.join('?' * len(part))})"
                " AND state = 'ready'", part)]
        return out

    def wanted_unready_ids(self) -> list[str]:
        """Wanted entries not ready (whose temps a download may resume): a walk of the
        state index over the states that are not `ready`, never over the ready ones."""
        others = [s.value for s in State if s != State.READY]
        return [r[0] for r in self.conn.execute(
            f"SELECT file_id FROM files WHERE state IN ({','.join('?' * len(others))})"
            " AND wanted = 1", others)]

    def ready_on(self, shas: Collection[str]) -> list[Entry]:
        """Ready entries whose object is one of `shas` (a few bad objects), by file_id:
        the sha256 index (`+state` keeps the state's out: it would walk every ready
        entry), never every ready entry."""
        ids = list(shas)
        out: list[Entry] = []
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            out += [Entry.from_row(r) for r in self.rows_of(
                f"SELECT * FROM files WHERE sha256 IN ({','.join('?' * len(part))})"
                " AND +state = 'ready'", part)]
        return sorted(out, key=lambda e: e.file_id)

    def url_ids(self) -> list[str]:
        """file_ids that are URLs (the only ones whose display form differs)."""
        return [r[0] for r in self.conn.execute(
            "SELECT file_id FROM files WHERE file_id LIKE '%://%'")]

    def state_counts(self) -> dict[str, int]:
        """Entries per state, every state named (0 when none)."""
        counts: dict[str, int] = {s.value: 0 for s in State}
        for state, n in self.conn.execute("SELECT state, count(*) FROM files GROUP BY state"):
            counts[state] = n
        return counts

    def ready_bytes(self) -> int:
        return int(self.conn.execute(
            "SELECT coalesce(sum(size), 0) FROM files WHERE state = 'ready'").fetchone()[0])

    def last_errors(self, limit: int = 5) -> list[dict[str, Any]]:
        """The latest errors, as `status` shows them (file_id, state, error, updated_at)."""
        return list(self.rows_of(
            "SELECT file_id, state, error, updated_at FROM files WHERE error IS NOT NULL"
            " ORDER BY updated_at DESC LIMIT ?", [limit]))

    def ready_hashes_among(self, shas: Collection[str]) -> set[str]:
        """Those of `shas` that a ready entry uses (gc's objects nothing links to are
        few: this asks about them, never loads every hash)."""
        found: set[str] = set()
        part: list[str] = []
        for sha in [*shas, None]:
            if sha is not None:
                part.append(sha)
            if part and (sha is None or len(part) == 500):
                found.update(r[0] for r in self.conn.execute(
                    "SELECT DISTINCT sha256 FROM files WHERE +state = 'ready' AND sha256 IN"
                    f" ({','.join('?' * len(part))})", part))
                part = []
        return found

    def ready_objects(self) -> Objects:
        """The ready entries' objects, as a retention pass needs them: their bytes (each
        object once) and the objects several entries share. Walks the sha256 index;
        holds only the shared ones."""
        total = self.conn.execute(
            "SELECT coalesce(sum(size), 0) FROM (SELECT max(coalesce(size, 0)) AS size"
            f" FROM files WHERE {_RETAINED} GROUP BY sha256)").fetchone()[0]
        shared = {sha: n for sha, n in self.conn.execute(
            f"SELECT sha256, count(*) FROM files WHERE {_RETAINED} GROUP BY sha256"
            " HAVING count(*) > 1")}
        return Objects(int(total), shared)

    def retention_items(self, default_ttl: float, by_last_use: bool = False) -> Iterator[Item]:
        """The ready entries as retention items, read from one cursor as they are used:
        in file_id order (a walk of the primary key), or least recently used first
        (SQLite sorts, spilling to disk: nothing here holds them all). Each item's
        `expires_at` is when its last local claim's ttl runs out (each claim's own ttl
        from its last request, the default where it gives none)."""
        order = "last_used, file_id" if by_last_use else "file_id"
        for row in self.conn.execute(
                "SELECT file_id, sha256, coalesce(size, 0), wanted, pin,"
                " max(coalesce(requested_at, 0), coalesce(ready_at, 0)) AS last_used, ttl,"
                " fleet_want, (SELECT max(c.requested_at + coalesce(c.ttl, ?)) FROM claims c"
                "  WHERE c.file_id = f.file_id AND c.wanted = 1"
                "  AND substr(c.holder, 1, 6) != 'fleet:')"
                f" FROM files f WHERE {_RETAINED.replace('state', '+state')}"
                f" ORDER BY {order}", (default_ttl,)):
            yield Item(file_id=row[0], sha256=row[1], size=row[2], wanted=bool(row[3]),
                       pin=bool(row[4]), last_used=row[5], ttl=row[6],
                       fleet_want=bool(row[7]), expires_at=row[8])

    def hash_in_use(self, sha256: str, except_id: str) -> bool:
        """Whether another entry is ready on (or downloading into) these bytes."""
        return self.conn.execute(
            "SELECT 1 FROM files WHERE sha256 = ? AND file_id != ?"
            " AND state IN ('ready', 'downloading') LIMIT 1", (sha256, except_id),
        ).fetchone() is not None

    def known_name(self, file_id: str, sha256: str) -> str | None:
        """The name a download gave these bytes before (this file_id's first, else any
        entry's), so that a cache hit names the file as a download would."""
        row = self.conn.execute(
            "SELECT name FROM files WHERE sha256 = ? AND name IS NOT NULL"
            " ORDER BY file_id = ? DESC, updated_at DESC LIMIT 1", (sha256, file_id)).fetchone()
        return row[0] if row else None

    def accounted_links(self) -> AccountedLinks:
        """sha256 -> the paths the manifest says link to it: each file's published path
        (any state that keeps one) and each good claim's link on a ready file (its
        dest, or the shared default). Read an object directory at a time (see
        AccountedLinks), never all at once."""
        return AccountedLinks(self._accounted_in)

    def _accounted_in(self, prefix: str) -> dict[str, set[str]]:
        """accounted_links() of the objects whose hash starts with `prefix`: two walks
        of the sha256 index over that range (`+f.state`: on the state's index SQLite
        walked every ready entry for each of the 256 ranges)."""
        span = (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)) if prefix else ("", "\uffff")
        out: dict[str, set[str]] = {}
        for sha, path in self.conn.execute(
                "SELECT sha256, path FROM files WHERE sha256 >= ? AND sha256 < ?"
                " AND path IS NOT NULL", span):
            out.setdefault(sha, set()).add(path)
        for fid, sha, name, dest in self.conn.execute(
                "SELECT f.file_id, f.sha256, f.name, c.dest FROM files f JOIN claims c"
                " ON c.file_id = f.file_id WHERE f.sha256 >= ? AND f.sha256 < ?"
                " AND +f.state = 'ready' AND c.error IS NULL", span):
            out.setdefault(sha, set()).add(dest or default_link(fid, name))
        return out

    def named_dirs(self) -> set[str]:
        """Directories (relative to the root) that files' paths and claims' dests
        live in, besides the default `downloads/<id>/` ones (the stray search looks in
        every one of those anyway): few, however many files there are."""
        dirs: set[str] = set()
        for (rel,) in self.conn.execute(
                "SELECT path FROM files WHERE path IS NOT NULL AND NOT " + _DEFAULT_LINK +
                " UNION SELECT dest FROM files WHERE dest IS NOT NULL UNION"
                " SELECT dest FROM claims WHERE dest IS NOT NULL"):
            dirs.add(rel.rsplit("/", 1)[0] if "/" in rel else "")
        return dirs

    def scrub_order(self) -> Iterator[str]:
        """Hashes of ready objects, the longest unverified first, read as the scrub
        takes them (it stops at its budget; SQLite sorts, spilling to disk)."""
        for (sha,) in self.conn.execute(
                "SELECT DISTINCT f.sha256 FROM files f LEFT JOIN scrub s ON s.sha256 = f.sha256"
                " WHERE f.state = 'ready' AND f.sha256 IS NOT NULL"
                " ORDER BY coalesce(s.verified_at, 0), f.sha256"):
            yield sha

    # -- changes without an event ---------------------------------------------------------

    def update(self, file_id: str, now: float | None = None, **fields: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in [*fields, "updated_at"])
        with self.tx() as conn:
            fields["updated_at"] = time.time() if now is None else now  # under the lock
            conn.execute(f"UPDATE files SET {cols} WHERE file_id = ?",
                         (*fields.values(), file_id))

    def defer(self, file_id: str, until: float, note: str | None = None,
              now: float | None = None) -> bool:
        """Leave a queued entry for later: another host is downloading its file, so
        this one waits for the blob instead of going to the origin. The entry stays
        `queued` (no event: nothing happened to it), due() skips it until `until`, and
        `note` says why ("waiting for host X"). A want clears both. Returns False when
        the entry is gone or no longer on its way (ready, failed, evicted...)."""
        with self.tx() as conn:
            return conn.execute(
                "UPDATE files SET state = 'queued', next_attempt_at = ?, note = ?,"
                " updated_at = ? WHERE file_id = ?"
                " AND state IN ('queued', 'downloading', 'retrying')",
                (until, note, time.time() if now is None else now, file_id)).rowcount > 0

    def mark_verified(self, shas: Sequence[str], now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.tx() as conn:
            conn.executemany("INSERT OR REPLACE INTO scrub (sha256, verified_at) VALUES (?, ?)",
                             [(h, now) for h in shas])

    def requeue_waiting_space(self, now: float | None = None) -> int:
        """Give entries that waited for space another try; returns how many.

        Entries that fit go first: one that filled the disk before (`min_size` known)
        is queued again only when no other wanted entry is queued, downloading or
        waiting, and only one of those at a time (the smallest), so it can neither
        crowd out a file that fits nor race another one for the same free bytes.
        An entry backing off (`next_attempt_at` in the future) stays put. A requeued
        entry's `updated_at` moves, so the fleet's state report sees it.
        """
        if not self.conn.execute(
                "SELECT 1 FROM files WHERE state = 'waiting_space' LIMIT 1").fetchone():
            return 0  # the common case costs a read, not a write transaction
        due = "state = 'waiting_space' AND wanted = 1 AND coalesce(next_attempt_at, 0) <= ?"
        with self.tx() as conn:
            now = time.time() if now is None else now  # under the lock: see wanted._now
            n: int = conn.execute(f"UPDATE files SET state = 'queued', updated_at = ?"
                                  f" WHERE {due} AND min_size IS NULL", (now, now)).rowcount
            busy = conn.execute(
                "SELECT 1 FROM files WHERE wanted = 1 AND (state IN ('queued', 'downloading')"
                " OR (state = 'waiting_space' AND min_size IS NULL)) LIMIT 1").fetchone()
            if busy:
                return n
            return n + conn.execute(
                "UPDATE files SET state = 'queued', updated_at = ? WHERE file_id = (SELECT"
                f" file_id FROM files WHERE {due} AND min_size IS NOT NULL"
                " ORDER BY min_size, requested_at LIMIT 1)", (now, now)).rowcount

    def requeue_evicted(self, room: int, now: float | None = None) -> int:
        """Queue wanted entries that were evicted for space again, as many as fit in
        `room` free bytes (oldest request first); returns how many. Only when no
        other wanted entry is queued, downloading or waiting for space: the
        free room is theirs first, and handing out only room that is already free
        means bringing one back never evicts another (no eviction ping-pong).
        A requeued entry's `updated_at` moves, so the fleet's state report sees it."""
        if self.conn.execute(
                "SELECT 1 FROM files WHERE wanted = 1 AND state IN"
                " ('queued', 'downloading', 'waiting_space') LIMIT 1").fetchone():
            return 0
        ids: list[str] = []
        for file_id, size in self.conn.execute(
                "SELECT file_id, coalesce(size, 0) FROM files WHERE state = 'evicted'"
                " AND wanted = 1 ORDER BY requested_at"):
            if size > room:
                continue
            room -= size
            ids.append(file_id)
        if not ids:
            return 0
        with self.tx() as conn:
            now = time.time() if now is None else now  # under the lock: see wanted._now
            return sum(conn.execute(
                "UPDATE files SET state = 'queued', error = NULL, next_attempt_at = NULL,"
                " updated_at = ? WHERE file_id = ? AND state = 'evicted' AND wanted = 1",
                (now, f)).rowcount for f in ids)
