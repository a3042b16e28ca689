"""Receipts of accepted request files, brought up to date from the manifest's events.

A receipt (`processed/<name>.receipt.json`) lists each entry of a request with its
state and final path; it is `complete` when every wanted entry has settled (ready,
failed, evicted, or no longer wanted). Receipts are a consumer of events, like the
statistics mirror: a pass reads the events appended since the last pass (by
primary key), re-reads the rows of the file_ids they name that a pending receipt
waits for, and rewrites each receipt that changed (an entry's state, path, error or
settling) once. A finished download costs
nothing here; a pass costs O(events since the last pass) plus the size of the
receipts it rewrites, and a receipt still in progress is rewritten at most once a
second (a complete one at once).

The entries of pending receipts (a million, with a hundred request files of 10,000
pending) live in a private temporary SQLite database, not in Python objects: SQLite
keeps it in a page cache of a few MiB and spills the rest to a temporary file it
unlinks at once (in SQLITE_TMPDIR, TMPDIR, /var/tmp or /tmp: the unit's PrivateTmp),
about 100 bytes of disk an entry, so a pending receipt costs a few hundred bytes of
memory whatever its size.
The receipt files themselves stay the record that outlives the daemon: a restart
reads back the incomplete ones (`load`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..log import get_logger
from ..manifest import Manifest
from ..records import Entry, State
from ..redact import redact_value
from ..shapes import Receipt, ReceiptEntry

log = get_logger("prefetchd.receipts")

SETTLED = frozenset({State.READY, State.FAILED, State.EVICTED})
WRITE_EVERY = 1.0  # seconds between rewrites of a receipt still in progress
BATCH = 500  # file_ids per IN (...) query
CACHE_KIB = 2048  # the temporary database's page cache; the rest is on disk

_SCHEMA = """
CREATE TABLE entry (
    rid INTEGER NOT NULL,       -- the pending receipt
    idx INTEGER NOT NULL,       -- its place in the request
    file_id TEXT NOT NULL,
    action TEXT NOT NULL,       -- want, unwant, forget
    state TEXT NOT NULL,        -- as last seen, or `forgotten`
    path TEXT,                  -- absolute, once ready
    error TEXT,
    settled INTEGER NOT NULL,   -- once settled, for good
    PRIMARY KEY (rid, idx)
) WITHOUT ROWID;
CREATE INDEX entry_file ON entry (file_id);
"""


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _shown(action: str, entry: Entry | None, root: Path
           ) -> tuple[str, str | None, str | None, bool]:
    """(state, path, error, settled) of one receipt entry, given its manifest row."""
    if entry is None:
        return "forgotten", None, None, True
    ready = entry.state == State.READY and entry.path
    path = str(root / entry.path) if ready and entry.path else None
    error = entry.error if entry.state == State.FAILED else None
    settled = action != "want" or entry.state in SETTLED or not entry.wanted
    return str(entry.state.value), path, error, settled


@dataclass
class _Receipt:
    """A pending receipt: its entries are rows of the temporary database."""

    name: str
    request: str
    rid: int
    unsettled: int           # wanted entries not settled yet
    dirty: bool = True       # changed since it was last written
    written_at: float = float("-inf")

    @property
    def complete(self) -> bool:
        return not self.unsettled


class Receipts:
    """The pending receipts of one inbox's processed/ folder."""

    def __init__(self, manifest: Manifest, root: Path, dir_fd: int,
                 display: Callable[[str], str] = str) -> None:
        self._manifest = manifest
        self._root = root
        self._fd = dir_fd
        self._display = display  # file_id -> the form shown to users
        self.pending: dict[str, _Receipt] = {}
        self._rids: dict[int, _Receipt] = {}
        self._next_rid = 1
        self._cursor = manifest.last_event_id()
        # "": a private temporary database (a file SQLite unlinks at once), used from
        # whichever thread the inbox runs in, one at a time.
        self._db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        self._db.execute("PRAGMA journal_mode = MEMORY")
        self._db.execute("PRAGMA synchronous = OFF")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __contains__(self, name: str) -> bool:
        return name in self.pending

    def add(self, name: str, request: str, entries: Iterable[tuple[str, str]]) -> None:
        """Track a new receipt and write it with the entries' states as they are now."""
        if not self.pending:  # events before now concern no receipt
            self._cursor = self._manifest.last_event_id()
        old = self.pending.get(name)
        if old is not None:
            self._drop(old)
        listed = list(entries)
        rows = self._manifest.rows_for({fid for fid, _ in listed})
        rid, self._next_rid = self._next_rid, self._next_rid + 1
        unsettled = 0
        values = []
        for idx, (fid, action) in enumerate(listed):
            state, path, error, settled = _shown(action, rows.get(fid), self._root)
            unsettled += action == "want" and not settled
            values.append((rid, idx, fid, action, state, path, error, settled))
        del rows
        with self._tx():
            self._db.executemany("INSERT INTO entry VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)
        del values, listed
        r = _Receipt(name, request, rid, unsettled)
        self.pending[name] = r
        self._rids[rid] = r
        self._write(r)  # at once, even within WRITE_EVERY of another
        r.dirty, r.written_at = False, time.monotonic()
        if r.complete:
            self._drop(r)

    def load(self) -> int:
        """Pick up incomplete receipts left by an earlier run; returns how many.

        A receipt shows file_ids in their display form; where that differs from the
        real id (a URL with credentials), the real one is found among the manifest's
        URL entries, once, at start. One receipt is read at a time."""
        real: dict[str, str] | None = None
        n = 0
        for name in sorted(_listdir(self._fd)):
            if not name.endswith(".receipt.json"):
                continue
            try:
                doc = _read_json(self._fd, name)
            except (OSError, ValueError, TypeError) as e:
                log.warning("receipt_unreadable", receipt=name, error=str(e))
                continue
            if doc.get("complete") or not isinstance(doc.get("entries"), list):
                continue
            entries = [(str(e["file_id"]), str(e.get("action", "want")))
                       for e in doc["entries"] if isinstance(e, dict) and "file_id" in e]
            request = str(doc.get("request", name))
            del doc
            shown = {fid for fid, _ in entries}
            known = self._manifest.rows_for(shown).keys()
            if len(known) < len(shown) and real is None:
                real = {self._display(f): f for f in self._manifest.url_ids()}
            if real:
                entries = [(fid if fid in known else real.get(fid, fid), action)
                           for fid, action in entries]
            self.add(name, request, entries)
            n += 1
        return n

    def refresh(self, everything: bool = False) -> int:
        """One pass: apply the events since the last pass (or re-read every pending
        entry, a slow backstop for changes that leave no event); returns how many
        receipts were rewritten. A failure of the temporary database (its disk full)
        is an OSError, as the receipt files' own are: the next pass tries again."""
        if not self.pending:
            return 0  # idle: no query (add() moves the cursor on)
        try:
            return self._refresh(everything)
        except sqlite3.OperationalError as e:
            raise OSError(f"receipts' temporary database: {e}") from e

    def _refresh(self, everything: bool) -> int:
        if everything:
            self._cursor = self._manifest.last_event_id()
            for r in list(self.pending.values()):  # one receipt's ids at a time
                ids = [fid for (fid,) in self._db.execute(
                    "SELECT DISTINCT file_id FROM entry WHERE rid = ?", (r.rid,))]
                for i in range(0, len(ids), 20 * BATCH):
                    self._apply(ids[i:i + 20 * BATCH], r.rid)
            return self._flush()
        while True:  # at most 10,000 events at a time, applied as they come
            cursor, touched = self._manifest.touched_since(self._cursor)
            if cursor == self._cursor:
                break
            self._apply(touched)
            self._cursor = cursor  # after: a pass that failed reads these events again
        return self._flush()

    def _apply(self, file_ids: Collection[str], rid: int | None = None) -> None:
        """Bring the entries of `file_ids` (of receipt `rid`, or of every pending one)
        up to date from their manifest rows; a receipt one of them changed in becomes
        dirty."""
        ids = list(file_ids)
        matches: list[tuple[int, int, str, str, str, str | None, str | None, int]] = []
        only = "" if rid is None else " AND rid = ?"
        for i in range(0, len(ids), BATCH):
            part = ids[i:i + BATCH]
            matches += self._db.execute(
                "SELECT rid, idx, file_id, action, state, path, error, settled FROM entry"
                f" WHERE file_id IN ({','.join('?' * len(part))}){only}",
                part if rid is None else [*part, rid]).fetchall()
        if not matches:
            return
        rows = self._manifest.rows_for({m[2] for m in matches})
        updates = []
        for m_rid, idx, fid, action, *was, was_settled in matches:
            r = self._rids.get(m_rid)
            if r is None:
                continue
            state, path, error, settled = _shown(action, rows.get(fid), self._root)
            settled = bool(settled or was_settled)  # once settled, for good
            if [state, path, error] == was and settled == bool(was_settled):
                continue
            if settled and not was_settled and action == "want":
                r.unsettled -= 1
            r.dirty = True
            updates.append((state, path, error, settled, m_rid, idx))
        if updates:
            with self._tx():
                self._db.executemany("UPDATE entry SET state = ?, path = ?, error = ?,"
                                     " settled = ? WHERE rid = ? AND idx = ?", updates)

    def _flush(self) -> int:
        """Write the receipts that changed: a complete one at once, one still in progress
        at most every WRITE_EVERY seconds (a 10,000-entry receipt is 1.3 MB of JSON)."""
        now = time.monotonic()
        due = [r for r in self.pending.values()
               if r.dirty and (r.complete or now - r.written_at >= WRITE_EVERY)]
        for r in due:
            self._write(r)
            r.dirty, r.written_at = False, now
            if r.complete:
                self._drop(r)
        return len(due)

    def _drop(self, r: _Receipt) -> None:
        self.pending.pop(r.name, None)
        self._rids.pop(r.rid, None)
        with self._tx():
            self._db.execute("DELETE FROM entry WHERE rid = ?", (r.rid,))

    def _write(self, r: _Receipt) -> None:
        display = self._display
        shown: list[ReceiptEntry] = [
            {"file_id": display(fid), "action": action, "state": state, "path": path,
             "error": error}
            for fid, action, state, path, error in self._db.execute(
                "SELECT file_id, action, state, path, error FROM entry WHERE rid = ?"
                " ORDER BY idx", (r.rid,))]
        doc: Receipt = {"request": r.request, "complete": r.complete,
                        "updated_at": utc(time.time()), "entries": shown}
        write_json(self._fd, r.name, doc)

    def _tx(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    """One transaction of the temporary database (rolled back if the block raises)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


def write_json(dir_fd: int, name: str, doc: Mapping[str, Any]) -> None:
    """Replace `name` in the directory atomically (temp + rename, no symlink followed);
    URLs in it are shown in their display form (no credentials, no query values)."""
    tmp = f".{name[:200]}.new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o664, dir_fd=dir_fd)
    try:
        os.write(fd, json.dumps(redact_value(doc), indent=2).encode())
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _read_json(dir_fd: int, name: str) -> dict[str, Any]:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        doc = json.loads(os.read(fd, 8 << 20))
    finally:
        os.close(fd)
    if not isinstance(doc, dict):
        raise TypeError("not a JSON object")
    return doc


def _listdir(dir_fd: int) -> list[str]:
    from ..store import listdir_at

    return listdir_at(dir_fd)
