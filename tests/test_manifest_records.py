"""The manifest's typed records: events as frozen Event rows, NewEvent as their input."""

from __future__ import annotations

import dataclasses

import pytest

from prefetchd.manifest import MIGRATIONS, Manifest, WantSpec
from prefetchd.records import Event, EventKind, NewEvent, State
from tests.support.rows import event_rows


def test_events_are_frozen_records_with_typed_kinds(tmp_path):
    m = Manifest(tmp_path / "m.db")
    m.want([WantSpec("a", provider="files")])
    m.record("a", NewEvent(EventKind.DOWNLOAD, provider="files", bytes=3, cache_hit=False,
                           sha256="0" * 64), now=5.0, state=State.READY.value)
    m.record("a", NewEvent(EventKind.CACHE_HIT, provider="files", cache_hit=True), now=6.0)
    m.forget(["a"], now=7.0)
    events = event_rows(m, "a")
    assert [e.kind for e in events] == [EventKind.DOWNLOAD, EventKind.CACHE_HIT,
                                        EventKind.FORGET]
    first = events[0]
    assert isinstance(first, Event) and first.bytes == 3 and first.at == 5.0
    assert first.cache_hit is False and events[1].cache_hit is True
    assert events[2].provider == "files"  # forget names the entry's provider
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.bytes = 4  # type: ignore[misc]
    assert dataclasses.asdict(first)["kind"] == "download"
    assert event_rows(m) == events
    m.close()


def test_read_only_refuses_an_old_schema(tmp_path):
    import sqlite3

    from prefetchd.manifest import NoStateError

    path = tmp_path / "old.db"
    Manifest(path).close()
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE files DROP COLUMN min_size")  # as migration 6 found it
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) - 1}")
    conn.commit()
    conn.close()
    with pytest.raises(NoStateError, match="older than this prefetchd's"):
        Manifest(path, read_only=True)
    Manifest(path).close()  # a writer upgrades it
    Manifest(path, read_only=True).close()
