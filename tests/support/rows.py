"""Manifest states no product code makes on purpose, for tests to start from."""

from __future__ import annotations

from collections.abc import Sequence

from prefetchd.manifest import Manifest


def delete_rows(manifest: Manifest, file_ids: Sequence[str]) -> None:
    """Drop files' rows with their claims and nothing else (no forget event, links and
    objects stay): what a crash between a forget's commit and its unlinks leaves."""
    with manifest.tx() as conn:
        conn.executemany("DELETE FROM claims WHERE file_id = ?", [(f,) for f in file_ids])
        conn.executemany("DELETE FROM files WHERE file_id = ?", [(f,) for f in file_ids])
