"""Events have one shape and one frame: every writer passes a NewEvent record (a dict is
refused, with nothing half-applied); `destination` is relative to the root like
`files.path` (manifest v10 converts the absolute ones older versions wrote), and only
the edges a user sees (the download log line, `get`'s path, the Supabase mirror) join
it to the root; where a download takes its bytes from (`Source.via`) is a BytesSource;
a fleet hand-off (`Deferred`) is not an error."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from prefetchd.errors import PrefetchError, error_classes
from prefetchd.fetch import Engine
from prefetchd.fetch.context import Deferred
from prefetchd.log import EVENT_ATTR
from prefetchd.manifest import Manifest, WantSpec, schema
from prefetchd.mirror import payload
from prefetchd.records import BytesSource, EventKind, NewEvent, State
from prefetchd.resolve import Source
from tests.conftest import fetch, sha
from tests.support.rows import event_rows

DATA = b"A" * 100

# -- written only as records -------------------------------------------------------------------


def test_every_way_to_write_an_event_refuses_a_dict_and_changes_nothing(tmp_path):
    m = Manifest(tmp_path / "m.db")
    m.want([WantSpec("a"), WantSpec("gone")])
    m.unwant(["gone"])  # nobody wants it: an eviction would write its event
    as_dict = {"kind": "download", "provider": "files", "bytes": 1}
    writes = {
        "record": lambda: m.record("a", as_dict, state=State.READY.value),
        "record_many": lambda: m.record_many([("a", as_dict, {"state": State.READY.value})]),
        "record_eviction": lambda: m.record_eviction("gone", as_dict, ready_path=None,
                                                     expire=False, state="evicted"),
    }
    for name, write in writes.items():
        with pytest.raises(TypeError, match="NewEvent record, not dict"):
            write()
        assert event_rows(m) == [], name
    assert m.get("a").state == State.QUEUED  # the row change rolled back with the event
    assert m.get("gone").state == State.QUEUED
    m.record("a", NewEvent(EventKind.FAILURE, provider="files", error="x"), state="failed")
    assert [e.kind for e in event_rows(m, "a")] == [EventKind.FAILURE]
    m.close()


# -- one frame: relative to the root -----------------------------------------------------------


def test_destinations_are_relative_and_the_edges_show_them_absolute(env, caplog):
    (env.src / "a").write_bytes(DATA)
    (env.src / "c").write_bytes(b"C" * 10)
    caplog.set_level(logging.INFO)
    with env.prefetch() as p:
        root = p.store.root
        out = fetch(p, "a", provider="local")
        hit = fetch(p, "b", provider="local", sha256=sha(DATA))  # stored bytes: a cache hit
        got = p.get("c", provider="local")  # in-process get: the engine's path
        p.release(["a"])
        events = {(e.file_id, e.kind): e for e in event_rows(p.manifest)}
        rows = p.manifest.outbox(10)
    assert out.path == root / "downloads/a/a" and got == root / "downloads/c/c"
    assert hit.path.is_absolute() and hit.path.parent == root / "downloads/b"
    for fid, kind in [("a", EventKind.DOWNLOAD), ("b", EventKind.CACHE_HIT),
                      ("c", EventKind.DOWNLOAD), ("a", EventKind.EVICT)]:
        dest = events[(fid, kind)].destination
        assert dest is not None and not dest.startswith("/"), (fid, kind, dest)
    # A download and the eviction of the same file name the same place.
    assert events[("a", EventKind.DOWNLOAD)].destination == "downloads/a/a"
    assert events[("a", EventKind.EVICT)].destination == "downloads/a/a"
    # The log line's path is what it always was: absolute.
    logged = [getattr(r, EVENT_ATTR) for r in caplog.records if hasattr(r, EVENT_ATTR)]
    paths = {e["file_id"]: e["path"] for e in logged if e["event"] == "download"}
    assert paths == {"a": str(out.path), "b": str(hit.path), "c": str(got)}
    # So is what the mirror sends to file_download_history.destination.
    sent = {s["file_id"]: s["destination"] for s in payload(rows, "h", root)}
    assert sent == paths


def test_source_via_is_the_bytes_source_enum(env):
    (env.src / "a").write_bytes(DATA)
    assert Source("local", "a", None, "local").via is BytesSource.ORIGIN
    with env.prefetch() as p:
        fetch(p, "a", provider="local")
        fetch(p, "b", provider="local", sha256=sha(DATA))
        sources = [(e.kind, e.source) for e in event_rows(p.manifest)]
    assert sources == [(EventKind.DOWNLOAD, BytesSource.ORIGIN),
                       (EventKind.CACHE_HIT, BytesSource.LOCAL)]
    assert all(type(s) is BytesSource for _k, s in sources)


# -- the migration of v9 rows ------------------------------------------------------------------

ROOT = "/srv/old root/project"  # a space, and deeper than one component


def _v9(tmp_path: Path, files: list[tuple[str, str | None]],
        events: list[tuple[str, str, str | None]]) -> Path:
    """A manifest at version 9 with these (file_id, path) rows and, oldest first,
    these (kind, file_id, destination) events."""
    db = tmp_path / "prefetchd.db"
    with sqlite3.connect(db) as conn:  # commits the migrations and rows at the end
        for step in schema.MIGRATIONS[:9]:
            step(sqlite_utils.Database(conn))
        conn.executemany("INSERT INTO files (file_id, state, path, attempts)"
                         " VALUES (?, 'ready', ?, 0)", files)
        conn.executemany("INSERT INTO events (event_id, kind, file_id, destination, at)"
                         " VALUES (?, ?, ?, ?, ?)",
                         [(f"e{i}", *ev, float(i)) for i, ev in enumerate(events)])
        conn.execute("PRAGMA user_version = 9")
    conn.close()
    return db


def _destinations(db: Path) -> list[str | None]:
    m = Manifest(db)
    try:
        assert schema.version(m.conn) == len(schema.MIGRATIONS) == 10
        return [e.destination for e in event_rows(m)]
    finally:
        m.close()


def test_v9_absolute_destinations_under_the_root_become_relative(tmp_path):
    db = _v9(tmp_path, [("a", "downloads/a/a.bin"), ("c", "reports/q3.pdf")], [
        ("download", "x", "/elsewhere/downloads/x/x.bin"),  # an older root: no row tells it
        ("download", "gone", f"{ROOT}/downloads/gone/g.bin"),  # forgotten since
        ("forget", "gone", "downloads/gone/g.bin"),
        ("download", "a", f"{ROOT}/downloads/a/a.bin"),
        ("cache_hit", "c", f"{ROOT}/reports/q3.pdf"),
        ("evict", "a", "downloads/a/a.bin"),
        ("failure", "a", None),
    ])
    assert _destinations(db) == ["/elsewhere/downloads/x/x.bin", "downloads/gone/g.bin",
                                 "downloads/gone/g.bin", "downloads/a/a.bin",
                                 "reports/q3.pdf", "downloads/a/a.bin", None]
    # What the mirror sends is what it sent before: the same absolute paths.
    m = Manifest(db)
    sent = [s["destination"] for s in payload(m.outbox(10), "h", Path(ROOT))]
    m.close()
    assert sent == ["/elsewhere/downloads/x/x.bin", f"{ROOT}/downloads/gone/g.bin",
                    f"{ROOT}/downloads/a/a.bin", f"{ROOT}/reports/q3.pdf"]


def test_v9_root_told_by_a_files_path_alone(tmp_path):
    """No download in the default place: the file's recorded path tells the root."""
    db = _v9(tmp_path, [("c", "reports/q3.pdf")], [
        ("download", "d", f"{ROOT}/jobs/d.bin"),  # its row is gone, but under the root
        ("download", "c", f"{ROOT}/reports/q3.pdf"),
    ])
    assert _destinations(db) == ["jobs/d.bin", "reports/q3.pdf"]


def test_v9_rows_that_tell_no_root_stay_as_they_were(tmp_path):
    """A custom dest whose row is gone, and a downloads/ path of another file_id's
    component: nothing says where the root ends, so nothing is guessed."""
    events = [("download", "d", f"{ROOT}/jobs/d.bin"),
              ("download", "e", f"{ROOT}/downloads/not-e/e.bin")]
    db = _v9(tmp_path, [], events)
    assert _destinations(db) == [d for _k, _f, d in events]


# -- a fleet hand-off is not an error ----------------------------------------------------------


class _Elsewhere:
    """A fleet tier whose claim another host holds: it defers the entry (as Tier._defer
    does) and hands the file off."""

    async def fetch(self, dl, src):
        dl.ctx.manifest.defer(dl.file_id, 1e12, "another host of the fleet is downloading it")
        raise Deferred(f"{dl.file_id}: another host of the fleet is downloading it",
                       file_id=dl.file_id)


def test_a_deferred_download_is_a_hand_off_not_a_failure(env):
    assert not issubclass(Deferred, PrefetchError)
    assert Deferred not in error_classes().values() and "deferred" not in error_classes()
    (env.src / "a").write_bytes(DATA)
    with env.prefetch() as p:
        p.want(["a"], provider="local")

        async def go() -> None:
            eng = Engine(p.settings, p.manifest, p.store)
            eng.fleet = _Elsewhere()
            try:
                await eng.fetch("a")
            finally:
                await eng.aclose()

        with pytest.raises(Deferred) as caught:
            asyncio.run(go())
        e = p.manifest.get("a")
        assert caught.value.file_id == "a"
        assert (e.state, e.error, e.attempts) == (State.QUEUED, None, 0)
        assert e.note == "another host of the fleet is downloading it"
        assert event_rows(p.manifest, "a") == []  # no failure recorded
