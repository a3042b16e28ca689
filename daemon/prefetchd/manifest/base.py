"""The connection every part of the manifest shares, and its write transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import schema

if TYPE_CHECKING:
    import sqlite_utils


class Base:
    """A connection to prefetchd.db; one per process (or per thread that needs one)."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        """Open (and create or migrate) the manifest; with `read_only`, open an existing
        one without writing anything (`status`, `ls`, `path`, `stats`), so that a
        `sudo prefetchd status` before the first start leaves no root-owned state."""
        self.path = path
        self.read_only = read_only
        self.conn = schema.connect(path, read_only=read_only)
        if read_only:
            schema.check_version(self.conn, path)
        elif schema.version(self.conn) < len(schema.MIGRATIONS):
            with self.tx():
                schema.upgrade(self.db)

    @cached_property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils over the connection, for the migrations: imported only by a
        process that migrates (its import costs 30 ms and click's at every start).
        Every read and write of the manifest goes through the connection itself."""
        import sqlite_utils

        # No sqlite-utils plugins: the manifest never uses them, and looking for them
        # scans every installed package's metadata (20 ms a start).
        return sqlite_utils.Database(self.conn, execute_plugins=False)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock up front: concurrent processes
        queue on busy_timeout instead of failing "database is locked" on a read-to-write
        upgrade."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def rows_of(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """The rows of one read as dicts, read whole. Unlike sqlite-utils' `query`, no
        SAVEPOINT and RELEASE around it (two statements more per read, on the hot path
        of every download and `get`)."""
        cur = self.conn.execute(sql, params)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def iter_rows(self, sql: str, params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        """The rows of one read as dicts, one at a time from the cursor (a walk of
        every row that must not hold them all)."""
        cur = self.conn.execute(sql, params)
        cols = [d[0] for d in cur.description]
        for row in cur:
            yield dict(zip(cols, row, strict=True))

    def data_version(self) -> int:
        """Changes whenever another connection commits: cheap change detection."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def change_mark(self) -> tuple[int, int]:
        """Moves whenever anything commits: another connection (data_version) or this
        one (total_changes). Equal marks: the manifest is as it was (what idle loops
        ask before counting anything)."""
        return self.data_version(), self.conn.total_changes
