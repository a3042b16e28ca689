"""The connection every part of the manifest shares, and its write transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from . import schema


class Base:
    """A connection to prefetchd.db; one per process (or per thread that needs one)."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        """Open (and create or migrate) the manifest; with `read_only`, open an existing
        one without writing anything (`status`, `ls`, `path`, `stats`), so that a
        `sudo prefetchd status` before the first start leaves no root-owned state."""
        self.path = path
        self.read_only = read_only
        self.conn = schema.connect(path, read_only=read_only)
        # No sqlite-utils plugins: the manifest never uses them, and looking for them
        # scans every installed package's metadata (20 ms a start).
        self.db = sqlite_utils.Database(self.conn, execute_plugins=False)
        if read_only:
            schema.check_version(self.conn, path)
        elif schema.version(self.conn) < len(schema.MIGRATIONS):
            with self.tx():
                schema.upgrade(self.db)

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

    def data_version(self) -> int:
        """Changes whenever another connection commits: cheap change detection."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def change_mark(self) -> tuple[int, int]:
        """Moves whenever anything commits: another connection (data_version) or this
        one (total_changes). Equal marks: the manifest is as it was (what idle loops
        ask before counting anything)."""
        return self.data_version(), self.conn.total_changes
