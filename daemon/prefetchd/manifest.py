"""The SQLite manifest: schema, migrations, and every query (wanted, file states, events).

One row per file_id in `files` holds both what was asked (wanted, provider, expected
hash and size, dest, pin, ttl) and what is (state, stored hash, path, error). `events`
is the download history and the outbox that `stats` mirrors. Writes use
`BEGIN IMMEDIATE` so that concurrent processes queue on `busy_timeout` instead of
failing with "database is locked" on a read-to-write upgrade.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from .errors import PrefetchError
from .records import Entry, State

STATES = tuple(State)
BUSY_TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class WantSpec:
    """One wanted file as a request states it; only file_id is required."""

    file_id: str
    provider: str | None = None
    sha256: str | None = None
    size: int | None = None
    dest: str | None = None
    pin: bool = False
    ttl: float | None = None


def _v1(db: sqlite_utils.Database) -> None:
    db["files"].create(
        {
            "file_id": str,
            "wanted": int,
            "provider": str,
            "expected_sha256": str,
            "expected_size": int,
            "dest": str,
            "pin": int,
            "ttl": float,
            "requested_at": float,
            "state": str,
            "resolved_provider": str,
            "sha256": str,
            "size": int,
            "name": str,
            "path": str,
            "error": str,
            "attempts": int,
            "next_attempt_at": float,
            "updated_at": float,
            "ready_at": float,
        },
        pk="file_id",
        not_null={"wanted", "pin", "state", "attempts"},
        defaults={"wanted": 1, "pin": 0, "state": "queued", "attempts": 0},
    )
    db["files"].create_index(["state"])
    db["files"].create_index(["sha256"])
    db["events"].create(
        {
            "id": int,
            "event_id": str,
            "kind": str,
            "file_id": str,
            "provider": str,
            "destination": str,
            "bytes": int,
            "duration_ms": int,
            "cache_hit": int,
            "sha256": str,
            "error": str,
            "at": float,
            "pushed_at": float,
        },
        pk="id",
        not_null={"event_id", "kind", "file_id", "at"},
    )
    db["events"].create_index(["event_id"], unique=True)
    db["events"].create_index(["pushed_at"])


def _v2(db: sqlite_utils.Database) -> None:
    # When each object was last re-hashed, so the scrub starts with the oldest.
    db["scrub"].create({"sha256": str, "verified_at": float}, pk="sha256")


def _v3(db: sqlite_utils.Database) -> None:
    # The Supabase mirror's health: last success, last error, backoff.
    db["mirror"].create({"id": int, "last_push_at": float, "last_error": str,
                         "last_error_at": float, "failures": int, "next_try_at": float},
                        pk="id", not_null={"failures"}, defaults={"failures": 0})
    db.execute("INSERT INTO mirror (id, failures) VALUES (1, 0)")


def _v4(db: sqlite_utils.Database) -> None:
    # events(file_id) looks events up by file_id.
    db["events"].create_index(["file_id", "kind"])


def _v5(db: sqlite_utils.Database) -> None:
    # due() takes the oldest queued entries a few at a time: an index in that order
    # makes each take O(log n + k) instead of a sort of the whole queue.
    db["files"].create_index(["state", "requested_at"])


def _v6(db: sqlite_utils.Database) -> None:
    # The size an entry of unknown length had reached when the disk filled: it needs
    # more than that, so it is not tried again until that much is free.
    db["files"].add_column("min_size", int)


MIGRATIONS = [_v1, _v2, _v3, _v4, _v5, _v6]


class NoStateError(PrefetchError):
    """A read-only command found no manifest to read (nothing created it yet)."""


def _no_state(path: Path) -> str:
    return (f"no prefetchd state at {path} (nothing was requested here yet and no daemon "
            "has run; `want`, `get` or `run` create it)")


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A `mode=ro` connection to an existing database; never creates the file or its
    directory. (SQLite may add the -wal/-shm files next to an existing database, owned
    like the database, as any reader of a WAL database does.)"""
    if not path.is_file():
        raise NoStateError(_no_state(path))
    uri = f"{path.absolute().as_uri()}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                           isolation_level=None, check_same_thread=False)


MIRRORED_KINDS = ("download", "cache_hit")


class Manifest:
    """A connection to prefetchd.db; one per process (or per thread that needs one)."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        """Open (and create or migrate) the manifest; with `read_only`, open an existing
        one without writing anything (`status`, `ls`, `path`, `stats`), so that a
        `sudo prefetchd status` before the first start leaves no root-owned state."""
        self.path = path
        self.read_only = read_only
        if read_only:
            conn = _connect_read_only(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not read_only:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        self.conn = conn
        # No sqlite-utils plugins: the manifest never uses them, and looking for them
        # scans every installed package's metadata (20 ms a start).
        self.db = sqlite_utils.Database(conn, execute_plugins=False)
        if read_only:
            self._check_schema()
        else:
            self._migrate()

    def _check_schema(self) -> None:
        """A read-only handle cannot migrate: refuse a schema older than this code's."""
        (version,) = self.conn.execute("PRAGMA user_version").fetchone()
        if version == 0:  # just created by another process, schema not yet committed
            self.conn.close()
            raise NoStateError(_no_state(self.path))
        if version < len(MIGRATIONS):
            self.conn.close()
            raise NoStateError(
                f"{self.path}: schema version {version} is older than this prefetchd's "
                f"({len(MIGRATIONS)}); any writing command or the daemon upgrades it")

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock up front (no upgrade deadlock)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _migrate(self) -> None:
        (version,) = self.conn.execute("PRAGMA user_version").fetchone()
        if version >= len(MIGRATIONS):
            return
        with self.tx() as conn:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            for step in MIGRATIONS[version:]:
                step(self.db)
            conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")

    def data_version(self) -> int:
        """Changes whenever another connection commits: cheap change detection."""
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    # -- wanted entries -------------------------------------------------------------

    def want(self, specs: Sequence[WantSpec], now: float | None = None) -> None:
        """Add or update wanted entries, all or nothing.

        An option a request gives (provider, sha256, size, dest, ttl, pin) replaces the
        entry's earlier value; an option it leaves out keeps the earlier one. Only
        `release` and `forget` clear them. A file already ready stays ready unless the
        request changes what it must be (another hash, dest or provider); then it is
        queued again and the fetch re-links or re-downloads as needed.
        """
        self.apply(specs, [], now=now)

    def apply(self, specs: Sequence[WantSpec], unwant: Sequence[str],
              forgets: Sequence[str] = (), now: float | None = None) -> list[str]:
        """Forgets, unwants and wants of one request in a single transaction (all or
        nothing), in that order, so `forget X` + `want X` in one request starts X afresh.

        Forgetting removes rows only: the caller removes a ready entry's file first
        (Prefetch.apply_request), so a crash in between leaves a row the daemon re-links,
        never a file no row knows. Returns the forgotten ids that were not there.
        """
        now = time.time() if now is None else now
        with self.tx() as conn:
            unknown = self._forget(conn, forgets, now)
            conn.executemany(
                "UPDATE files SET wanted = 0, pin = 0, updated_at = ? WHERE file_id = ?",
                [(now, fid) for fid in unwant],
            )
            for s in specs:
                self._want_one(conn, s, now)
        return unknown

    def _want_one(self, conn: sqlite3.Connection, s: WantSpec, now: float) -> None:
        row = conn.execute(
            "SELECT state, sha256, path, dest, provider FROM files WHERE file_id = ?",
            (s.file_id,),
        ).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO files (file_id, wanted, provider, expected_sha256,"
                " expected_size, dest, pin, ttl, requested_at, state, attempts, updated_at)"
                " VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, 'queued', 0, ?)",
                (s.file_id, s.provider, s.sha256, s.size, s.dest, int(s.pin), s.ttl,
                 now, now),
            )
            return
        state, sha, path, _dest, provider = row
        requeue = state != "ready" or (
            (s.sha256 is not None and s.sha256 != sha)
            or (s.dest is not None and s.dest != path)
            or (s.provider is not None and s.provider != provider)
        )
        new_state = "queued" if requeue and state not in ("downloading",) else state
        # coalesce: an option left out keeps the entry's earlier value.
        conn.execute(
            "UPDATE files SET wanted = 1, provider = coalesce(?, provider),"
            " expected_sha256 = coalesce(?, expected_sha256),"
            " expected_size = coalesce(?, expected_size), dest = coalesce(?, dest),"
            " pin = max(pin, ?), ttl = coalesce(?, ttl), requested_at = ?, state = ?,"
            " attempts = CASE WHEN ? = 'queued' THEN 0 ELSE attempts END,"
            " next_attempt_at = NULL, updated_at = ? WHERE file_id = ?",
            (s.provider, s.sha256, s.size, s.dest, int(s.pin), s.ttl, now, new_state,
             new_state, now, s.file_id),
        )

    def forget(self, file_ids: Sequence[str], now: float | None = None) -> list[str]:
        """Remove entries with their options and state; their events stay (the history)
        and a `forget` event marks the point. Returns the ids that were not there."""
        now = time.time() if now is None else now
        with self.tx() as conn:
            return self._forget(conn, file_ids, now)

    def _forget(self, conn: sqlite3.Connection, file_ids: Sequence[str],
                now: float) -> list[str]:
        unknown = []
        for fid in dict.fromkeys(file_ids):
            row = conn.execute(
                "SELECT resolved_provider, provider, sha256, path FROM files WHERE file_id = ?",
                (fid,)).fetchone()
            if row is None:
                unknown.append(fid)
                continue
            conn.execute("DELETE FROM files WHERE file_id = ?", (fid,))
            self._insert_event(conn, fid, {"kind": "forget", "provider": row[0] or row[1],
                                           "sha256": row[2], "destination": row[3]}, now)
        return unknown

    def unwant(self, file_ids: Sequence[str], now: float | None = None) -> list[str]:
        """Mark entries not wanted (retention deletes them later); returns unknown ids."""
        now = time.time() if now is None else now
        unknown = []
        with self.tx() as conn:
            for fid in file_ids:
                cur = conn.execute(
                    "UPDATE files SET wanted = 0, pin = 0, updated_at = ? WHERE file_id = ?",
                    (now, fid),
                )
                if cur.rowcount == 0:
                    unknown.append(fid)
        return unknown

    # -- reads ----------------------------------------------------------------------

    def get(self, file_id: str) -> Entry | None:
        rows = list(self.db.query("SELECT * FROM files WHERE file_id = ?", [file_id]))
        return Entry.from_row(rows[0]) if rows else None

    def rows(self, state: str | None = None) -> list[Entry]:
        if state:
            return [Entry.from_row(r) for r in
                    self.db.query("SELECT * FROM files WHERE state = ? ORDER BY file_id", [state])]
        return [Entry.from_row(r) for r in self.db.query("SELECT * FROM files ORDER BY file_id")]

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
        retrying = [Entry.from_row(r) for r in self.db.query(
            "SELECT * FROM files WHERE state = 'retrying' AND wanted = 1"
            " AND coalesce(next_attempt_at, 0) <= ?" + not_in + " ORDER BY requested_at" + lim,
            [now, *skip])]
        if limit is not None:
            if len(retrying) >= limit:
                return retrying
            lim = f" LIMIT {int(limit) - len(retrying)}"
        return retrying + [Entry.from_row(r) for r in self.db.query(
            "SELECT * FROM files WHERE state = 'queued' AND wanted = 1" + not_in
            + " ORDER BY requested_at" + lim, skip)]

    def last_event_id(self) -> int:
        row = self.conn.execute("SELECT max(id) FROM events").fetchone()
        return row[0] or 0

    def touched_since(self, event_id: int, limit: int = 10_000) -> tuple[int, set[str]]:
        """file_ids with events after `event_id` (at most `limit` events, by primary key);
        returns the last event id looked at and the ids."""
        rows = self.conn.execute(
            "SELECT id, file_id FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (event_id, limit)).fetchall()
        if not rows:
            return event_id, set()
        return rows[-1][0], {r[1] for r in rows}

    def url_ids(self) -> list[str]:
        """file_ids that are URLs (the only ones whose display form differs)."""
        return [r[0] for r in self.conn.execute(
            "SELECT file_id FROM files WHERE file_id LIKE '%://%'")]

    def rows_for(self, file_ids: Collection[str]) -> dict[str, Entry]:
        """The entries of these file_ids (missing ones absent), in batches of 500."""
        ids = list(file_ids)
        out: dict[str, Entry] = {}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            for row in self.db.query(
                    f"SELECT * FROM files WHERE file_id IN ({','.join('?' * len(part))})", part):
                out[row["file_id"]] = Entry.from_row(row)
        return out

    def state_counts(self) -> dict[str, int]:
        counts = {s: 0 for s in STATES}
        for state, n in self.conn.execute("SELECT state, count(*) FROM files GROUP BY state"):
            counts[state] = n
        return counts

    def ready_bytes(self) -> int:
        return self.conn.execute(
            "SELECT coalesce(sum(size), 0) FROM files WHERE state = 'ready'"
        ).fetchone()[0]

    def last_errors(self, limit: int = 5) -> list[dict[str, Any]]:
        return list(
            self.db.query(
                "SELECT file_id, state, error, updated_at FROM files WHERE error IS NOT NULL"
                " ORDER BY updated_at DESC LIMIT ?",
                [limit],
            )
        )

    def referenced_hashes(self) -> set[str]:
        return {
            r[0]
            for r in self.conn.execute(
                "SELECT sha256 FROM files WHERE sha256 IS NOT NULL AND state = 'ready'"
            )
        }

    def hash_in_use(self, sha256: str, except_id: str) -> bool:
        """Whether another entry is ready on (or downloading into) these bytes."""
        return self.conn.execute(
            "SELECT 1 FROM files WHERE sha256 = ? AND file_id != ?"
            " AND state IN ('ready', 'downloading') LIMIT 1", (sha256, except_id),
        ).fetchone() is not None

    # -- state changes --------------------------------------------------------------

    def update(self, file_id: str, now: float | None = None, **fields: Any) -> None:
        fields["updated_at"] = time.time() if now is None else now
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self.tx() as conn:
            conn.execute(
                f"UPDATE files SET {cols} WHERE file_id = ?", (*fields.values(), file_id)
            )

    def record(
        self, file_id: str, event: dict[str, Any] | None, now: float | None = None, **fields: Any
    ) -> None:
        """Change a file's row and append its event in one transaction."""
        now = time.time() if now is None else now
        fields["updated_at"] = now
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self.tx() as conn:
            conn.execute(
                f"UPDATE files SET {cols} WHERE file_id = ?", (*fields.values(), file_id)
            )
            if event is not None:
                self._insert_event(conn, file_id, event, now)

    def record_many(self, changes: Sequence[tuple[str, dict[str, Any] | None, dict[str, Any]]],
                    now: float | None = None) -> None:
        """Several record() calls in one transaction (the engine's group commit)."""
        now = time.time() if now is None else now
        with self.tx() as conn:
            for file_id, event, fields in changes:
                fields = {**fields, "updated_at": now}
                cols = ", ".join(f"{k} = ?" for k in fields)
                conn.execute(
                    f"UPDATE files SET {cols} WHERE file_id = ?", (*fields.values(), file_id)
                )
                if event is not None:
                    self._insert_event(conn, file_id, event, now)

    def add_event(self, file_id: str, event: dict[str, Any], now: float | None = None) -> None:
        with self.tx() as conn:
            self._insert_event(conn, file_id, event, time.time() if now is None else now)

    @staticmethod
    def _insert_event(conn: sqlite3.Connection, file_id: str, ev: dict[str, Any], at: float) -> None:
        conn.execute(
            "INSERT INTO events (event_id, kind, file_id, provider, destination, bytes,"
            " duration_ms, cache_hit, sha256, error, at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                str(uuid.uuid4()),
                ev["kind"],
                file_id,
                ev.get("provider"),
                ev.get("destination"),
                ev.get("bytes"),
                ev.get("duration_ms"),
                int(bool(ev.get("cache_hit"))),
                ev.get("sha256"),
                ev.get("error"),
                at,
            ),
        )

    def delete(self, file_ids: Sequence[str]) -> None:
        with self.tx() as conn:
            conn.executemany("DELETE FROM files WHERE file_id = ?", [(f,) for f in file_ids])

    def events(self, file_id: str | None = None) -> list[dict[str, Any]]:
        if file_id:
            return list(self.db.query("SELECT * FROM events WHERE file_id = ? ORDER BY id", [file_id]))
        return list(self.db.query("SELECT * FROM events ORDER BY id"))

    def requeue_waiting_space(self, now: float | None = None) -> int:
        """Give entries that waited for space another try; returns how many.

        Entries that fit go first: one that filled the disk before (`min_size` known)
        is queued again only when no other wanted entry is queued, downloading or
        waiting, and only one of those at a time (the smallest), so it can neither
        crowd out a file that fits nor race another one for the same free bytes.
        An entry backing off (`next_attempt_at` in the future) stays put.
        """
        now = time.time() if now is None else now
        if not self.conn.execute(
                "SELECT 1 FROM files WHERE state = 'waiting_space' LIMIT 1").fetchone():
            return 0  # the common case costs a read, not a write transaction
        due = "state = 'waiting_space' AND wanted = 1 AND coalesce(next_attempt_at, 0) <= ?"
        with self.tx() as conn:
            n = conn.execute(f"UPDATE files SET state = 'queued' WHERE {due}"
                             " AND min_size IS NULL", (now,)).rowcount
            busy = conn.execute(
                "SELECT 1 FROM files WHERE wanted = 1 AND (state IN ('queued', 'downloading')"
                " OR (state = 'waiting_space' AND min_size IS NULL)) LIMIT 1").fetchone()
            if busy:
                return n
            return n + conn.execute(
                "UPDATE files SET state = 'queued' WHERE file_id = (SELECT file_id FROM files"
                f" WHERE {due} AND min_size IS NOT NULL ORDER BY min_size, requested_at LIMIT 1)",
                (now,)).rowcount

    def requeue_evicted(self, room: int) -> int:
        """Queue wanted entries that were evicted for space again, as many as fit in
        `room` free bytes (oldest request first); returns how many. Only when no
        other wanted entry is queued, downloading or waiting for space: the
        free room is theirs first, and handing out only room that is already free
        means bringing one back never evicts another (no eviction ping-pong)."""
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
            return sum(conn.execute(
                "UPDATE files SET state = 'queued', error = NULL, next_attempt_at = NULL"
                " WHERE file_id = ? AND state = 'evicted' AND wanted = 1", (f,)).rowcount
                for f in ids)

    def known_name(self, file_id: str, sha256: str) -> str | None:
        """The name a download gave these bytes before (this file_id's first, else any
        entry's), so that a cache hit names the file as a download would."""
        row = self.conn.execute(
            "SELECT name FROM files WHERE sha256 = ? AND name IS NOT NULL"
            " ORDER BY file_id = ? DESC, updated_at DESC LIMIT 1", (sha256, file_id)).fetchone()
        return row[0] if row else None

    def download_destination(self, file_id: str, sha256: str) -> str | None:
        """Where the last download of these bytes for this file_id put them (an event
        outlives its row: `forget` then `want` again keeps the history)."""
        row = self.conn.execute(
            "SELECT destination FROM events WHERE file_id = ? AND kind = 'download'"
            " AND sha256 = ? AND destination IS NOT NULL ORDER BY id DESC LIMIT 1",
            (file_id, sha256)).fetchone()
        return row[0] if row else None

    def accounted_links(self) -> dict[str, set[str]]:
        """sha256 -> the paths entries say link to it (any state that keeps a path)."""
        out: dict[str, set[str]] = {}
        for sha, path in self.conn.execute(
                "SELECT sha256, path FROM files WHERE sha256 IS NOT NULL AND path IS NOT NULL"):
            out.setdefault(sha, set()).add(path)
        return out

    def named_dirs(self) -> set[str]:
        """Directories (relative to the root) that entries' paths and dests live in."""
        dirs: set[str] = set()
        for path, dest in self.conn.execute(
                "SELECT path, dest FROM files WHERE path IS NOT NULL OR dest IS NOT NULL"):
            for rel in (path, dest):
                if rel and "/" in rel:
                    dirs.add(rel.rsplit("/", 1)[0])
                elif rel:
                    dirs.add("")
        return dirs

    def scrub_order(self) -> list[str]:
        """Hashes of ready objects, the longest unverified first."""
        return [r[0] for r in self.conn.execute(
            "SELECT DISTINCT f.sha256 FROM files f LEFT JOIN scrub s ON s.sha256 = f.sha256"
            " WHERE f.state = 'ready' AND f.sha256 IS NOT NULL"
            " ORDER BY coalesce(s.verified_at, 0), f.sha256")]

    def mark_verified(self, shas: Sequence[str], now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.tx() as conn:
            conn.executemany("INSERT OR REPLACE INTO scrub (sha256, verified_at) VALUES (?, ?)",
                             [(h, now) for h in shas])

    # -- the outbox that stats mirrors ----------------------------------------------

    def outbox(self, limit: int) -> list[dict[str, Any]]:
        """Events not yet mirrored, oldest first (failures stay local)."""
        return list(self.db.query(
            "SELECT * FROM events WHERE pushed_at IS NULL AND kind IN ('download', 'cache_hit')"
            " ORDER BY id LIMIT ?", [limit]))

    def outbox_backlog(self) -> int:
        return self.conn.execute(
            "SELECT count(*) FROM events WHERE pushed_at IS NULL"
            " AND kind IN ('download', 'cache_hit')").fetchone()[0]

    def mark_pushed(self, ids: Sequence[int], now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.tx() as conn:
            conn.executemany("UPDATE events SET pushed_at = ? WHERE id = ?",
                             [(now, i) for i in ids])

    def mirror_state(self) -> dict[str, Any]:
        return next(iter(self.db.query("SELECT * FROM mirror WHERE id = 1")))

    def mirror_result(self, error: str | None, next_try_at: float | None,
                      now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.tx() as conn:
            if error is None:
                conn.execute("UPDATE mirror SET last_push_at = ?, failures = 0, next_try_at = NULL"
                             " WHERE id = 1", (now,))
            else:
                conn.execute("UPDATE mirror SET last_error = ?, last_error_at = ?,"
                             " failures = failures + 1, next_try_at = ? WHERE id = 1",
                             (error, now, next_try_at))

    def stats(self) -> list[dict[str, Any]]:
        """Local download statistics per provider."""
        return list(
            self.db.query(
                "SELECT provider, sum(kind = 'download') AS downloads,"
                " sum(kind = 'cache_hit') AS cache_hits, sum(kind = 'failure') AS failures,"
                " coalesce(sum(CASE WHEN kind = 'download' THEN bytes END), 0) AS bytes"
                " FROM events GROUP BY provider ORDER BY provider"
            )
        )
