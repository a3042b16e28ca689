"""Which waiting entries get the free space first (manifest queries, real SQLite)."""

from __future__ import annotations

import time

from prefetchd.manifest import Manifest, WantSpec


def _manifest(tmp_path) -> Manifest:
    return Manifest(tmp_path / "m.db")


def test_entries_that_fit_go_first_and_one_big_one_at_a_time(tmp_path):
    m = _manifest(tmp_path)
    m.want([WantSpec(f) for f in ("fits", "big1", "big2")])
    m.update("fits", state="waiting_space")
    m.update("big1", state="waiting_space", min_size=50)
    m.update("big2", state="waiting_space", min_size=20)
    assert m.requeue_waiting_space() == 1          # only the one without a known minimum
    assert m.get("fits")["state"] == "queued"
    assert m.get("big2")["state"] == "waiting_space"
    m.update("fits", state="ready")
    assert m.requeue_waiting_space() == 1          # now the smallest big one, alone
    assert m.get("big2")["state"] == "queued" and m.get("big1")["state"] == "waiting_space"


def test_an_entry_backing_off_is_not_requeued_before_its_time(tmp_path):
    m = _manifest(tmp_path)
    m.want([WantSpec("a")])
    m.update("a", state="waiting_space", next_attempt_at=time.time() + 3600)
    assert m.requeue_waiting_space() == 0
    assert m.requeue_waiting_space(now=time.time() + 7200) == 1


def test_evicted_entries_come_back_only_into_free_room_and_only_when_idle(tmp_path):
    m = _manifest(tmp_path)
    m.want([WantSpec(f) for f in ("a", "b", "c", "busy")])
    for f, size in (("a", 30), ("b", 50), ("c", 10)):
        m.update(f, state="evicted", size=size)
    assert m.requeue_evicted(100) == 0             # "busy" is still queued: it goes first
    m.update("busy", state="ready")
    assert m.requeue_evicted(45) == 2              # a (30) and c (10) fit; b does not
    assert [m.get(f)["state"] for f in "abc"] == ["queued", "evicted", "queued"]
    m.unwant(["b"])
    m.update("a", state="ready")
    m.update("c", state="ready")
    assert m.requeue_evicted(1000) == 0            # not wanted any more: stays evicted


def test_migration_adds_min_size_to_an_existing_v5_database(tmp_path):
    import sqlite3

    from prefetchd import manifest as mf

    path = tmp_path / "old.db"
    m = Manifest(path)
    m.close()
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE files DROP COLUMN min_size")
    conn.execute("PRAGMA user_version = 5")
    conn.commit()
    conn.close()
    m = Manifest(path)
    assert m.conn.execute("PRAGMA user_version").fetchone()[0] == len(mf.MIGRATIONS) == 6
    m.want([WantSpec("x")])
    assert m.get("x")["min_size"] is None
