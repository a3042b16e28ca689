"""Claims: each requester's interest in a file, with its own options.

A file (a row of `files`) is shared by its claims (rows of `claims`, keyed by
(file_id, holder)). What the engine and retention read on `files` is what the
claims make of it together, kept up to date here in the transaction that changes a
claim (`refresh`):

- `wanted`, `local_want`, `fleet_want`, `pin`: any wanted claim (local or fleet);
- `provider`: the first claim's that names one;
- `expected_sha256`, `expected_size`: only what every wanted claim expects (one
  requester's wrong --size never fails another's plain request);
- `dest`: the first good claim's (where the download publishes first; the other
  claims' links follow, see prefetchd.links).

Each claim's sha256/size is checked against the one file when the file is ready
(`check`): a claim that does not match fails for its holder only (`claims.error`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import replace
from typing import Any

from ..records import Claim, Entry, State, holder_label
from ..shapes import ClaimCounts
from ..store import default_link
from .base import Base

_REFRESH = """
UPDATE files SET
  wanted = EXISTS (SELECT 1 FROM claims c WHERE c.file_id = :f AND c.wanted = 1),
  local_want = EXISTS (SELECT 1 FROM claims c WHERE c.file_id = :f AND c.wanted = 1
                       AND substr(c.holder, 1, 6) != 'fleet:'),
  fleet_want = EXISTS (SELECT 1 FROM claims c WHERE c.file_id = :f AND c.wanted = 1
                       AND substr(c.holder, 1, 6) = 'fleet:'),
  pin = coalesce((SELECT max(c.pin) FROM claims c WHERE c.file_id = :f AND c.wanted = 1), 0),
  requested_at = coalesce((SELECT max(c.requested_at) FROM claims c WHERE c.file_id = :f),
                          requested_at),
  provider = (SELECT c.provider FROM claims c WHERE c.file_id = :f AND c.provider IS NOT NULL
              ORDER BY c.wanted DESC, c.created_at, c.holder LIMIT 1),
  expected_sha256 = (SELECT CASE WHEN count(*) > 0 AND count(*) = count(c.sha256)
                       AND count(DISTINCT c.sha256) = 1 THEN max(c.sha256) END
                     FROM claims c WHERE c.file_id = :f AND c.wanted = 1),
  expected_size = (SELECT CASE WHEN count(*) > 0 AND count(*) = count(c.size)
                     AND count(DISTINCT c.size) = 1 THEN max(c.size) END
                   FROM claims c WHERE c.file_id = :f AND c.wanted = 1),
  dest = (SELECT c.dest FROM claims c WHERE c.file_id = :f AND c.error IS NULL
          ORDER BY c.wanted DESC, c.created_at, c.holder LIMIT 1),
  ttl = (SELECT CASE WHEN count(*) > 0 AND count(*) = count(c.ttl) THEN max(c.ttl) END
         FROM claims c WHERE c.file_id = :f AND c.wanted = 1),
  requested_by = NULL,
  updated_at = :now
WHERE file_id = :f
"""


def refresh(conn: sqlite3.Connection, file_id: str, now: float) -> None:
    """Make the file's shared columns what its claims say together (see above)."""
    conn.execute(_REFRESH, {"f": file_id, "now": now})


def mismatch(claim: Claim | tuple[Any, ...], sha: str | None, size: int | None) -> str | None:
    """Why a claim's own expectation does not match the file; None when it does."""
    if isinstance(claim, Claim):
        fid, holder, want_sha, want_size, given = (claim.file_id, claim.holder, claim.sha256,
                                                   claim.size, claim.given_at)
    else:
        fid, holder, want_sha, want_size, given = claim
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(given)) if given else "earlier"
    who = f"given {when} by {holder_label(holder)}"
    if want_size is not None and size is not None and want_size != size:
        return (f"{fid}: the claim's --size {want_size} ({who}) does not match the file's "
                f"{size} bytes; give --size again or release it")
    if want_sha is not None and sha is not None and want_sha != sha:
        return (f"{fid}: the claim's --sha256 {want_sha[:16]}... ({who}) does not match the "
                f"file's {sha[:16]}...; give --sha256 again or release it")
    return None


def check(conn: sqlite3.Connection, file_id: str, now: float) -> None:
    """Check every claim on a ready file against it: set or clear each claim's error.
    Costs the claims of this one file."""
    row = conn.execute("SELECT sha256, size FROM files WHERE file_id = ? AND state = 'ready'",
                       (file_id,)).fetchone()
    if row is None:
        return
    sha, size = row
    for holder, want_sha, want_size, given, error in conn.execute(
            "SELECT holder, sha256, size, given_at, error FROM claims WHERE file_id = ?",
            (file_id,)).fetchall():
        why = mismatch((file_id, holder, want_sha, want_size, given), sha, size)
        if why != error:
            conn.execute("UPDATE claims SET error = ?, updated_at = ? WHERE file_id = ?"
                         " AND holder = ?", (why, now, file_id, holder))


def check_ready(conn: sqlite3.Connection, file_ids: Sequence[str], now: float) -> list[str]:
    """check() of many files just recorded ready, one read per 500 files: only a claim
    that expects a hash or size, or carries an error, can change. Returns the files
    whose claims changed (what claims make of their file moved: refresh them)."""
    changed: dict[str, None] = {}
    ids = list(dict.fromkeys(file_ids))
    for i in range(0, len(ids), 500):
        part = ids[i:i + 500]
        updates = []
        for fid, holder, want_sha, want_size, given, error, sha, size in conn.execute(
                "SELECT c.file_id, c.holder, c.sha256, c.size, c.given_at, c.error,"
                " f.sha256, f.size FROM claims c JOIN files f ON f.file_id = c.file_id"
                f" WHERE c.file_id IN ({','.join('?' * len(part))}) AND f.state = 'ready'"
                " AND (c.sha256 IS NOT NULL OR c.size IS NOT NULL OR c.error IS NOT NULL)",
                part).fetchall():
            why = mismatch((fid, holder, want_sha, want_size, given), sha, size)
            if why != error:
                updates.append((why, now, fid, holder))
                changed[fid] = None
        if updates:
            conn.executemany("UPDATE claims SET error = ?, updated_at = ? WHERE file_id = ?"
                             " AND holder = ?", updates)
    return list(changed)


def claim_link(entry: Entry, claim: Claim) -> str:
    """Where this claim's link is (or goes): its dest, else the shared default."""
    return claim.dest or default_link(entry.file_id, entry.name)


def view_of_row(row: dict[str, Any], claim: Claim | None) -> Entry:
    """claim_view() of a `files` row read as a dict: one Entry built, not three."""
    if claim is None:
        return Entry.from_row(row)
    row = {**row, "wanted": claim.wanted, "pin": claim.pin, "dest": claim.dest,
           "expected_sha256": claim.sha256, "expected_size": claim.size, "ttl": claim.ttl,
           "requested_at": claim.requested_at}
    if row["state"] == State.READY:
        if claim.error:
            row.update(state=State.FAILED, error=claim.error, path=None)
        else:
            row["path"] = claim.dest or default_link(row["file_id"], row["name"])
    return Entry.from_row(row)


def claim_view(entry: Entry, claim: Claim | None) -> Entry:
    """The file as one holder sees it: its claim's link as the path, its claim's own
    failure as `failed`, its own wanted/pin/dest. Without a claim, the file as is."""
    if claim is None:
        return entry
    own = replace(entry, wanted=claim.wanted, pin=claim.pin, dest=claim.dest,
                  expected_sha256=claim.sha256, expected_size=claim.size, ttl=claim.ttl,
                  requested_at=claim.requested_at)
    if claim.error and entry.state == State.READY:
        return replace(own, state=State.FAILED, error=claim.error, path=None)
    path = claim_link(entry, claim) if entry.state == State.READY else entry.path
    return replace(own, path=path)


class Claims(Base):
    """Reading claims: one, a file's, a holder's; and the directories links made."""

    def view(self, file_id: str, holder: str | None) -> Entry | None:
        """The file as `holder` sees it (claim_view); None: not in the manifest."""
        rows = self.rows_of("SELECT * FROM files WHERE file_id = ?", [file_id])
        if not rows:
            return None
        e = Entry.from_row(rows[0])
        return e if holder is None else claim_view(e, self.claim(file_id, holder))

    def views(self, file_ids: Collection[str], holder: str) -> dict[str, Entry]:
        """view() of many files for one holder (those in the manifest): two reads per
        500 files, not two per file (`get`'s results, its wait on a daemon)."""
        ids = list(dict.fromkeys(file_ids))
        out: dict[str, Entry] = {}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            marks = ",".join("?" * len(part))
            files = self.rows_of(f"SELECT * FROM files WHERE file_id IN ({marks})", part)
            own = {r["file_id"]: Claim.from_row(r) for r in self.rows_of(
                f"SELECT * FROM claims WHERE +holder = ? AND file_id IN ({marks})",
                [holder, *part])}
            for r in files:
                out[r["file_id"]] = view_of_row(r, own.get(r["file_id"]))
        return out

    def claim_places(self, file_ids: Collection[str]) -> dict[str, list[tuple[str | None,
                                                                              str | None]]]:
        """(dest, error) of each claim of these files, 500 files a read: what says where
        a file's claims want it linked, without building a Claim a row."""
        ids = list(dict.fromkeys(file_ids))
        out: dict[str, list[tuple[str | None, str | None]]] = {}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            for fid, dest, error in self.conn.execute(
                    "SELECT file_id, dest, error FROM claims WHERE file_id IN"
                    f" ({','.join('?' * len(part))})", part):
                out.setdefault(fid, []).append((dest, error))
        return out

    def claim(self, file_id: str, holder: str) -> Claim | None:
        rows = self.rows_of("SELECT * FROM claims WHERE file_id = ? AND holder = ?",
                            [file_id, holder])
        return Claim.from_row(rows[0]) if rows else None

    def claims_of(self, file_id: str) -> list[Claim]:
        """A file's claims, the first made first (the order `files.dest` follows)."""
        return [Claim.from_row(r) for r in self.rows_of(
            "SELECT * FROM claims WHERE file_id = ? ORDER BY wanted DESC, created_at, holder",
            [file_id])]

    def claims_for(self, file_ids: Collection[str]) -> dict[str, list[Claim]]:
        """The claims of these files (in batches of 500), each file's first made first."""
        ids = list(dict.fromkeys(file_ids))
        out: dict[str, list[Claim]] = {f: [] for f in ids}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            for r in self.rows_of(
                    f"SELECT * FROM claims WHERE file_id IN ({','.join('?' * len(part))})"
                    " ORDER BY file_id, wanted DESC, created_at, holder", part):
                out[r["file_id"]].append(Claim.from_row(r))
        return out

    def all_claims(self) -> Iterable[Claim]:
        """Every claim in file_id order."""
        for r in self.iter_rows("SELECT * FROM claims ORDER BY file_id, wanted DESC,"
                               " created_at, holder"):
            yield Claim.from_row(r)

    def claims_between(self, after: str, upto: str) -> list[Claim]:
        """The claims of the files whose file_id is in (`after`, `upto`], each file's
        first made first (`ls`, a page at a time: a walk of the primary key)."""
        return [Claim.from_row(r) for r in self.rows_of(
            "SELECT * FROM claims WHERE file_id > ? AND file_id <= ?"
            " ORDER BY file_id, wanted DESC, created_at, holder", [after, upto])]

    def holder_ids(self, holder: str) -> list[str]:
        """The file_ids a holder has wanted claims on (the fleet's group move)."""
        return [r[0] for r in self.conn.execute(
            "SELECT file_id FROM claims WHERE holder = ? AND wanted = 1 ORDER BY file_id",
            (holder,))]

    def claim_counts(self) -> ClaimCounts:
        """`status`: claims in all, wanted, failed (their expectation does not match)."""
        total, wanted, failed = self.conn.execute(
            "SELECT count(*), coalesce(sum(wanted), 0), count(error) FROM claims").fetchone()
        return {"total": int(total), "wanted": int(wanted), "failed": int(failed)}

    def dest_user(self, dest: str, file_id: str) -> str | None:
        """Another file that uses `dest` (a claim's dest, or a file's path), if any."""
        row = self.conn.execute(
            "SELECT c.file_id FROM claims c JOIN files f ON f.file_id = c.file_id"
            " WHERE c.dest = ? AND c.file_id != ? AND f.state != 'evicted' LIMIT 1",
            (dest, file_id)).fetchone()
        if row is None:
            row = self.conn.execute(
                "SELECT file_id FROM files WHERE path = ? AND file_id != ?"
                " AND state != 'evicted' LIMIT 1", (dest, file_id)).fetchone()
        return None if row is None else str(row[0])

    def fail_claims(self, file_id: str, holders: Sequence[str], error: str,
                    now: float | None = None) -> None:
        """These claims fail (their dest cannot be linked): for their holders only."""
        if not holders:
            return
        with self.tx() as conn:
            stamp = time.time() if now is None else now
            conn.executemany("UPDATE claims SET error = ?, updated_at = ? WHERE file_id = ?"
                             " AND holder = ?", [(error, stamp, file_id, h) for h in holders])
            refresh(conn, file_id, stamp)

    # -- directories made for links ------------------------------------------------------

    def add_made_dirs(self, dirs: Iterable[str]) -> None:
        dirs = list(dirs)
        if dirs:
            with self.tx() as conn:
                conn.executemany("INSERT OR IGNORE INTO made_dirs (path) VALUES (?)",
                                 [(d,) for d in dirs])

    def made_among(self, paths: Iterable[str]) -> set[str]:
        """Those of `paths` that are directories prefetchd made."""
        found: set[str] = set()
        for p in dict.fromkeys(paths):
            if self.conn.execute("SELECT 1 FROM made_dirs WHERE path = ?", (p,)).fetchone():
                found.add(p)
        return found

    def forget_dirs(self, dirs: Iterable[str]) -> None:
        dirs = list(dirs)
        if dirs:
            with self.tx() as conn:
                conn.executemany("DELETE FROM made_dirs WHERE path = ?", [(d,) for d in dirs])
