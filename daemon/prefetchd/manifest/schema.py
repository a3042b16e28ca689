"""The manifest's schema: its migrations, and opening a database at the right version.

The schema is versioned with `PRAGMA user_version`: version N means the first N
migrations ran. A writer migrates in one write transaction; a read-only handle
never writes, so it refuses a database older than this code's schema.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ..errors import NoStateError

if TYPE_CHECKING:  # imported by the one who migrates (Base): 30 ms and click at each start
    import sqlite_utils

BUSY_TIMEOUT_MS = 60_000


def _v1(db: sqlite_utils.Database) -> None:
    files = db.table("files")
    files.create(
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
    files.create_index(["state"])
    files.create_index(["sha256"])
    events = db.table("events")
    events.create(
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
    events.create_index(["event_id"], unique=True)
    events.create_index(["pushed_at"])


def _v2(db: sqlite_utils.Database) -> None:
    # When each object was last re-hashed, so the scrub starts with the oldest.
    db.table("scrub").create({"sha256": str, "verified_at": float}, pk="sha256")


def _v3(db: sqlite_utils.Database) -> None:
    # The Supabase mirror's health: last success, last error, backoff.
    db.table("mirror").create({"id": int, "last_push_at": float, "last_error": str,
                               "last_error_at": float, "failures": int, "next_try_at": float},
                              pk="id", not_null={"failures"}, defaults={"failures": 0})
    db.execute("INSERT INTO mirror (id, failures) VALUES (1, 0)")


def _v4(db: sqlite_utils.Database) -> None:
    # events(file_id) looks events up by file_id.
    db.table("events").create_index(["file_id", "kind"])


def _v5(db: sqlite_utils.Database) -> None:
    # due() takes the oldest queued entries a few at a time: an index in that order
    # makes each take O(log n + k) instead of a sort of the whole queue.
    db.table("files").create_index(["state", "requested_at"])


def _v6(db: sqlite_utils.Database) -> None:
    # The size an entry of unknown length had reached when the disk filled: it needs
    # more than that, so it is not tried again until that much is free.
    db.table("files").add_column("min_size", int)


def _v7(db: sqlite_utils.Database) -> None:
    # Who asked: the uid whose want made an entry wanted (the local API's peer, else
    # the writing process's), so a forget of another user's entry can be refused.
    # Only if absent: a test may roll user_version back over a newer schema.
    files = db.table("files")
    if "requested_by" not in files.columns_dict:
        files.add_column("requested_by", int)


def _v8(db: sqlite_utils.Database) -> None:
    # The fleet. Who wants an entry, kept apart: a local user (local_want) and the
    # group's wanted-set (fleet_want); `wanted` stays, always their OR, so every reader
    # goes on as before. Rows wanted so far were wanted by local users.
    # Each step only if absent: a test may roll user_version back over a newer schema.
    files = db.table("files")
    cols = files.columns_dict
    if "local_want" not in cols:
        db.execute("ALTER TABLE files ADD COLUMN local_want INTEGER NOT NULL DEFAULT 0")
        db.execute("UPDATE files SET local_want = wanted")
    if "fleet_want" not in cols:
        db.execute("ALTER TABLE files ADD COLUMN fleet_want INTEGER NOT NULL DEFAULT 0")
    if "note" not in cols:  # why a queued entry waits ("waiting for host X")
        files.add_column("note", str)
    # The fleet reporter reads changes since a watermark, a page at a time.
    db.execute("CREATE INDEX IF NOT EXISTS idx_files_updated_at_file_id"
               " ON files (updated_at, file_id)")
    # Where a ready file's bytes came from: origin, the Storage cache, or this store.
    # Events so far are downloads from the origin and local cache hits.
    if "source" not in db.table("events").columns_dict:
        db.execute("ALTER TABLE events ADD COLUMN source TEXT")
        db.execute("UPDATE events SET source = CASE kind WHEN 'download' THEN 'origin'"
                   " ELSE 'local' END WHERE kind IN ('download', 'cache_hit')")
    # Forget events since a watermark (the reporter says which entries went).
    db.execute("CREATE INDEX IF NOT EXISTS idx_events_kind_at ON events (kind, at)")
    # The fleet sync's marks (the last revision applied, when it last reported),
    # written in the same transaction as what they mark.
    db.execute("CREATE TABLE IF NOT EXISTS fleet_marks"
               " (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


CLAIMS_SQL = """CREATE TABLE IF NOT EXISTS claims (
    file_id TEXT NOT NULL,
    holder TEXT NOT NULL,
    wanted INTEGER NOT NULL DEFAULT 1,
    provider TEXT, sha256 TEXT, size INTEGER, dest TEXT,
    pin INTEGER NOT NULL DEFAULT 0,
    ttl REAL,
    requested_at REAL NOT NULL,
    created_at REAL NOT NULL,
    given_at REAL,
    error TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (file_id, holder)) WITHOUT ROWID"""


def _v9(db: sqlite_utils.Database) -> None:
    # Claims: each requester's own options on a shared file (issue 19). The options
    # columns of `files` become what its claims make of them together (the manifest
    # keeps them so: wanted/local_want/fleet_want/pin are "any claim", provider the
    # first claim's, expected_sha256/size only what every claim expects, dest the
    # first claim's), so the engine and retention read files as before.
    db.execute(CLAIMS_SQL)
    db.execute("CREATE INDEX IF NOT EXISTS idx_claims_holder ON claims (holder)")
    db.execute("CREATE INDEX IF NOT EXISTS idx_claims_dest ON claims (dest)"
               " WHERE dest IS NOT NULL")
    # Directories prefetchd made for links: only these go when they are left empty.
    db.execute("CREATE TABLE IF NOT EXISTS made_dirs (path TEXT PRIMARY KEY) WITHOUT ROWID")
    # A failure's error as the API sends it (its code and attributes, JSON), so that
    # a `get` through the daemon raises the same class as one in-process.
    if "error_detail" not in db.table("files").columns_dict:
        db.execute("ALTER TABLE files ADD COLUMN error_detail TEXT")
    # A download event says how many bytes a resume found on disk (0: from the start).
    if "resumed_from" not in db.table("events").columns_dict:
        db.execute("ALTER TABLE events ADD COLUMN resumed_from INTEGER")
    mark = db.execute("SELECT value FROM fleet_marks WHERE key = 'group'").fetchone()
    fleet = "fleet:" + (mark[0] if mark else "default")
    # Each wanted entry becomes its asker's claim (uid 0 when unknown); an entry still
    # ready but unwanted keeps an unwanted claim (its link stays until retention);
    # a fleet want becomes the group's claim. Both keep the entry's options.
    cols = ("file_id, holder, wanted, provider, sha256, size, dest, pin, ttl,"
            " requested_at, created_at, updated_at")
    opts = ("provider, expected_sha256, expected_size, dest, pin, ttl,"
            " coalesce(requested_at, 0), coalesce(requested_at, 0), coalesce(updated_at, 0)")
    db.execute(f"INSERT OR IGNORE INTO claims ({cols}) SELECT file_id,"
               f" 'uid:' || coalesce(requested_by, 0), local_want, {opts} FROM files"
               " WHERE local_want = 1 OR (wanted = 0 AND fleet_want = 0"
               " AND state NOT IN ('evicted'))")
    db.execute(f"INSERT OR IGNORE INTO claims ({cols}) SELECT file_id, ?, 1, {opts}"
               " FROM files WHERE fleet_want = 1", [fleet])


def _v10(db: sqlite_utils.Database) -> None:
    # An event's destination is relative to the root, like files.path and a claim's
    # dest: downloads and cache hits wrote it absolute until now (evictions and forgets
    # relative). The manifest never recorded its root, so the rows tell it (see
    # _events_root); absolute destinations under it become relative. An absolute one
    # under no root the rows tell (a root given up before the last download) stays as
    # it was: the mirror, which joins the root to a relative one, sends it unchanged.
    root = _events_root(db.conn)
    if root is None:
        return
    prefix = root.rstrip("/") + "/"
    db.execute("UPDATE events SET destination = substr(destination, ?)"
               " WHERE kind IN ('download', 'cache_hit') AND substr(destination, 1, ?) = ?",
               [len(prefix) + 1, len(prefix), prefix])


def _events_root(conn: sqlite3.Connection) -> str | None:
    """The root of the newest download or cache-hit event whose absolute destination
    shows it: `<root>/downloads/<id>/<name>` (the default place, <id> its own file_id's
    component), or `<root>/<path>` with its file's recorded path. None: no such event
    (nothing absolute to convert, or nothing to tell a root by)."""
    from ..store.paths import id_component  # only here: the manifest needs no store

    rows = conn.execute(
        "SELECT e.file_id, e.destination, f.path FROM events e"
        " LEFT JOIN files f ON f.file_id = e.file_id"
        " WHERE e.kind IN ('download', 'cache_hit') AND substr(e.destination, 1, 1) = '/'"
        " ORDER BY e.id DESC")
    for file_id, dest, path in rows:
        parts = PurePosixPath(dest).parts
        if len(parts) > 3 and parts[-3] == "downloads" and parts[-2] == id_component(file_id):
            return str(PurePosixPath(*parts[:-3]))
        if path and dest.endswith("/" + path):
            return dest[:-len(path) - 1] or "/"
    return None


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [  # noqa: F821 - typing only
    _v1, _v2, _v3, _v4, _v5, _v6, _v7, _v8, _v9, _v10]


def _no_state(path: Path) -> str:
    return (f"no prefetchd state at {path} (nothing was requested here yet and no daemon "
            "has run; `want`, `get` or `run` create it)")


def connect(path: Path, *, read_only: bool) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL for a writer.

    Read-only: `mode=ro` on an existing database; never creates the file or its
    directory. (SQLite may add the -wal/-shm files next to an existing database, owned
    like the database, as any reader of a WAL database does.)
    """
    if read_only:
        if not path.is_file():
            raise NoStateError(_no_state(path))
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True,
                               timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if not read_only:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def version(conn: sqlite3.Connection) -> int:
    """How many migrations this database has had."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def check_version(conn: sqlite3.Connection, path: Path) -> None:
    """A read-only handle cannot migrate: refuse a schema older than this code's
    (closing the connection)."""
    found = version(conn)
    if found == 0:  # just created by another process, schema not yet committed
        conn.close()
        raise NoStateError(_no_state(path))
    if found < len(MIGRATIONS):
        conn.close()
        raise NoStateError(
            f"{path}: schema version {found} is older than this prefetchd's "
            f"({len(MIGRATIONS)}); any writing command or the daemon upgrades it")


def upgrade(db: sqlite_utils.Database) -> None:
    """Run the migrations this database lacks; the caller holds the write lock (and
    so reads the version here, after any other process's upgrade committed)."""
    for step in MIGRATIONS[version(db.conn):]:
        step(db)
    db.conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
