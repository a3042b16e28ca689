"""Receipts of accepted request files, brought up to date from the manifest's events.

A receipt (`processed/<name>.receipt.json`) lists each entry of a request with its
state and final path; it is `complete` when every wanted entry has settled (ready,
failed, evicted, or no longer wanted). Receipts are a consumer of events, like the
statistics mirror: a pass reads the events appended since the last pass (by
primary key), re-reads the rows of the file_ids they name that a pending receipt
waits for, and rewrites each receipt that changed once. A finished download costs
nothing here; a pass costs O(events since the last pass) plus the size of the
receipts it rewrites, and a receipt still in progress is rewritten at most once a
second (a complete one at once).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..log import get_logger
from ..manifest import Manifest
from ..records import Entry, State
from ..redact import redact_value
from ..shapes import Receipt, ReceiptEntry

log = get_logger("prefetchd.inbox.receipts")

SETTLED = frozenset({State.READY, State.FAILED, State.EVICTED})
WRITE_EVERY = 1.0  # seconds between rewrites of a receipt still in progress


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class _Receipt:
    name: str
    request: str
    entries: list[ReceiptEntry]
    where: dict[str, list[int]] = field(default_factory=dict)  # file_id -> entry indexes
    unsettled: set[int] = field(default_factory=set)
    dirty: bool = True       # changed since it was last written
    written_at: float = float("-inf")

    def __post_init__(self) -> None:
        for i, e in enumerate(self.entries):
            self.where.setdefault(e["file_id"], []).append(i)
            if e["action"] == "want":
                self.unsettled.add(i)

    @property
    def complete(self) -> bool:
        return not self.unsettled

    def apply(self, file_id: str, entry: Entry | None, root: Path) -> None:
        for i in self.where.get(file_id, ()):
            e = self.entries[i]
            if entry is None:
                e["state"], e["path"], e["error"] = "forgotten", None, None
                self.unsettled.discard(i)
                continue
            e["state"] = entry.state
            ready = entry.state == State.READY and entry.path
            e["path"] = str(root / entry.path) if ready and entry.path else None
            e["error"] = entry.error if entry.state == State.FAILED else None
            if e["action"] != "want" or entry.state in SETTLED or not entry.wanted:
                self.unsettled.discard(i)


class Receipts:
    """The pending receipts of one inbox's processed/ folder."""

    def __init__(self, manifest: Manifest, root: Path, dir_fd: int,
                 display: Callable[[str], str] = str) -> None:
        self._manifest = manifest
        self._root = root
        self._fd = dir_fd
        self._display = display  # file_id -> the form shown to users
        self.pending: dict[str, _Receipt] = {}
        self._waiting: dict[str, set[str]] = {}  # file_id -> names of pending receipts
        self._cursor = manifest.last_event_id()

    def __contains__(self, name: str) -> bool:
        return name in self.pending

    def add(self, name: str, request: str, entries: Iterable[tuple[str, str]]) -> None:
        """Track a new receipt and write it with the entries' states as they are now."""
        if not self.pending:  # events before now concern no receipt
            self._cursor = self._manifest.last_event_id()
        r = _Receipt(name, request, [{"file_id": fid, "action": action, "state": State.QUEUED,
                                      "path": None, "error": None} for fid, action in entries])
        self.pending[name] = r
        for fid in r.where:
            self._waiting.setdefault(fid, set()).add(name)
        self._update(r.where.keys())  # writes it (and drops it at once if complete)
        if name in self.pending and r.dirty:  # a second receipt within WRITE_EVERY
            self._write(r)
            r.dirty, r.written_at = False, time.monotonic()

    def load(self) -> int:
        """Pick up incomplete receipts left by an earlier run; returns how many.

        A receipt shows file_ids in their display form; where that differs from the
        real id (a URL with credentials), the real one is found among the manifest's
        URL entries, once, at start."""
        found: list[tuple[str, str, list[tuple[str, str]]]] = []
        for name in _listdir(self._fd):
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
            found.append((name, str(doc.get("request", name)), entries))
        shown = {fid for _, _, entries in found for fid, _ in entries}
        known = self._manifest.rows_for(shown)
        real = {f: f for f in known}
        if len(known) < len(shown):
            real.update({self._display(f): f for f in self._manifest.url_ids()})
        for name, request, entries in found:
            self.add(name, request, [(real.get(fid, fid), action) for fid, action in entries])
        return len(found)

    def refresh(self, everything: bool = False) -> int:
        """One pass: apply the events since the last pass (or re-read every pending
        entry, a slow backstop for changes that leave no event); returns how many
        receipts were rewritten."""
        if not self.pending:
            return 0  # idle: no query (add() moves the cursor on)
        if everything:
            self._cursor = self._manifest.last_event_id()
            return self._update(list(self._waiting))
        touched: set[str] = set()
        while True:
            cursor, ids = self._manifest.touched_since(self._cursor)
            if cursor == self._cursor:
                break
            self._cursor = cursor
            touched |= {f for f in ids if f in self._waiting}
        return self._update(touched) if touched else self._flush()

    def _update(self, file_ids: Iterable[str]) -> int:
        ids = [f for f in file_ids if f in self._waiting]
        if not ids:
            return 0
        rows = self._manifest.rows_for(ids)
        for fid in ids:
            for name in self._waiting.get(fid, ()):
                r = self.pending[name]
                r.apply(fid, rows.get(fid), self._root)
                r.dirty = True
        return self._flush()

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
        for fid in r.where:
            names = self._waiting.get(fid)
            if names is not None:
                names.discard(r.name)
                if not names:
                    del self._waiting[fid]

    def _write(self, r: _Receipt) -> None:
        shown: list[ReceiptEntry] = [{**e, "file_id": self._display(e["file_id"])}
                                     for e in r.entries]
        doc: Receipt = {"request": r.request, "complete": r.complete,
                        "updated_at": utc(time.time()), "entries": shown}
        write_json(self._fd, r.name, doc)


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
