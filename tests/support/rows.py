"""Manifest states no product code makes on purpose, for tests to start from."""

from __future__ import annotations

from collections.abc import Sequence

from prefetchd.manifest import Manifest
from prefetchd.records import Event


def delete_rows(manifest: Manifest, file_ids: Sequence[str]) -> None:
    """Drop files' rows with their claims and nothing else (no forget event, links and
    objects stay): what a crash between a forget's commit and its unlinks leaves."""
    with manifest.tx() as conn:
        conn.executemany("DELETE FROM claims WHERE file_id = ?", [(f,) for f in file_ids])
        conn.executemany("DELETE FROM files WHERE file_id = ?", [(f,) for f in file_ids])


def event_rows(manifest: Manifest, file_id: str | None = None) -> list[Event]:
    """The event history, oldest first: of one file_id, or of all (what a test reads
    back; the product reads events through the outbox, receipts and stats)."""
    if file_id:
        rows = manifest.db.query("SELECT * FROM events WHERE file_id = ? ORDER BY id",
                                 [file_id])
    else:
        rows = manifest.db.query("SELECT * FROM events ORDER BY id")
    return [Event.from_row(r) for r in rows]
